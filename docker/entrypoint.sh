#!/bin/sh
# The image's way in, whoever starts it: compose, `docker run`, Azure ML, GitLab CI (docs/runtime.md).
# Flags (or nothing) go to the trainer: `docker run IMAGE --epochs 1`. Anything else is a command and
# runs as given, which is what Azure ML and `docker run IMAGE python ...` expect.
set -eu

# HOME and every cache live in /tmp; with a read-only root it must be a tmpfs.
if ! probe=$(mktemp -d /tmp/.writable.XXXXXX 2>/dev/null); then
  echo "error: /tmp is not writable (read-only root filesystem?): mount a tmpfs there (docker run --tmpfs /tmp; compose: tmpfs: [/tmp])" >&2
  exit 1
fi
rmdir "$probe"

case "${1:-}" in
  "" | -*) set -- python /app/src/train.py "$@" ;;
esac

# Started as root (the image's default, like Azure ML's own images): run as the owner of the output
# folder when that is not root, so that files written into a host-mounted folder belong to the host
# user who owns it, whatever their uid; official database images drop privileges the same way.
# RUN_AS_OWNER_OF names another folder to follow (default ./outputs, else the working directory).
if [ "$(id -u)" = 0 ]; then
  owned=${RUN_AS_OWNER_OF:-outputs}
  [ -e "$owned" ] || owned=.
  uid=$(stat -c %u "$owned") gid=$(stat -c %g "$owned")
  if [ "$uid" != 0 ]; then
    exec setpriv --reuid="$uid" --regid="$gid" --clear-groups -- "$@"
  fi
fi
# exec: the process receives `docker stop`'s SIGTERM itself and checkpoints.
exec "$@"
