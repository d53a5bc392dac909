#!/bin/sh
# A stand-in for Azure ML Common Runtime's execution-wrapper, the job container's PID 1 in place of the image's
# ENTRYPOINT (its path, /mnt/azureml/cr/j/<job>/cap/lifecycler/wd/execution-wrapper, is quoted in the runc errors
# of github.com/Azure/azure-sdk-for-python/issues/34501 and github.com/getindata/kedro-azureml/issues/87).
# rehearsal/local_run.py copies it there and starts the container with it; it is not python, as Azure's is not.
#
#   execution-wrapper forward|kill GRACE_SECONDS WORKING_DIR COMMAND...
#
# Runs COMMAND (the job) as a child, in WORKING_DIR, as the container's user. On SIGTERM or SIGINT (a
# preemption, `docker stop`): `forward` passes SIGTERM on to the job, `kill` does not (whether Azure's
# forwards it is not documented); either way a job still running GRACE_SECONDS later is SIGKILLed.
# Exits with the job's status (128+9 when killed).
set -u
mode=$1 grace=$2 wd=$3
shift 3
cd "$wd" || exit 1
"$@" &
job=$!
timer=
preempt() {
  [ -n "$timer" ] && return  # one preemption; a second signal changes nothing
  [ "$mode" = forward ] && kill -TERM "$job" 2>/dev/null
  # Off the job's output: a reader waiting for its end is not held up by the timer.
  (sleep "$grace" && kill -KILL "$job") >/dev/null 2>&1 &
  timer=$!
}
# PID 1 gets no default signal actions from the kernel: without these traps SIGTERM would be dropped.
trap preempt TERM INT
while :; do
  wait "$job"
  code=$?
  # A trapped signal ends `wait` early (status > 128) with the job still running: wait again.
  kill -0 "$job" 2>/dev/null || break
done
[ -n "$timer" ] && kill "$timer" 2>/dev/null
exit "$code"
