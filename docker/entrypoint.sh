#!/bin/sh
# Flags (or nothing) go to the trainer: `docker run IMAGE --epochs 1`. Anything else is a
# command and runs as given, which is what Azure ML and `docker run IMAGE python ...` expect.
# exec: the process receives `docker stop`'s SIGTERM itself and checkpoints.
case "${1:-}" in
  "" | -*) exec python /app/src/train.py "$@" ;;
  *) exec "$@" ;;
esac
