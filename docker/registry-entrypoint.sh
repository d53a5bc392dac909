#!/bin/sh
# The registry's logins come from the credentials file compose mounts as a secret (USER:PASSWORD, one a line,
# written by rehearsal/local_workspace.py) and are hashed at each start with bcrypt, the one scheme the
# registry's htpasswd auth accepts: no password in an image layer.
set -eu
logins=/run/secrets/registry-credentials
if [ ! -s "$logins" ]; then
  echo "registry: no logins in $logins: make registry writes them (REGISTRY_CREDENTIALS names another file)" >&2
  exit 1
fi
: >/tmp/htpasswd
while IFS=: read -r user password; do
  [ -z "$user" ] || printf '%s' "$password" | htpasswd -B -i /tmp/htpasswd "$user" 2>/dev/null
done <"$logins"
exec docker-registry serve /etc/docker/registry/local.yml
