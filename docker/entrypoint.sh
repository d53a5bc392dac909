#!/bin/sh
# The image's way in, whoever starts it: compose, `docker run`, Azure ML, GitLab CI (docs/runtime.md).
# Flags (or nothing, outside an Azure ML run) go to the trainer: `docker run IMAGE --epochs 1`.
# Anything else is a command and runs as given, which is what Azure ML and `docker run IMAGE python ...`
# expect.
set -eu

# HOME and every cache live in /tmp; with a read-only root it must be a tmpfs.
if ! probe=$(mktemp -d /tmp/.writable.XXXXXX 2>/dev/null); then
  echo "error: /tmp is not writable (read-only root filesystem?): mount a tmpfs there (docker run --tmpfs /tmp; compose: tmpfs: [/tmp])" >&2
  exit 1
fi
rmdir "$probe"

# No command inside an Azure ML run (its run variables are set) is a runtime that starts the container
# first and `docker exec`s the job into it (docs/runtime.md): training here would run as PID 1, in the
# wrong folder, and end the container under the job. Idle instead; sh as PID 1 gets SIGTERM only
# through a trap (the kernel drops unhandled signals to PID 1), so `docker stop` ends it at once.
azureml_run() { [ -n "${AZUREML_RUN_ID:-}" ] || env | grep -q '^AZ_BATCHAI_'; }
if [ $# = 0 ] && azureml_run; then
  echo "entrypoint: no command in an Azure ML run (AZUREML_RUN_ID/AZ_BATCHAI_* set): idling for the job to be docker-exec'ed in, not training" >&2
  sleep infinity &
  trap 'kill $! 2>/dev/null; exit 0' TERM INT
  wait $!
  exit 0
fi
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
