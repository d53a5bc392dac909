#!/usr/bin/env bash
# `make submit`: refuse stale code, check config and credentials, push the image by digest,
# then register the Environment and submit the run. DRY_RUN=1: no network, no credentials;
# print the push and the exact definitions that would be sent. COMPUTE=local: push to REGISTRY
# (e.g. a registry on 127.0.0.1), then run the very job the dry run prints with the host's
# Docker, as AmlCompute would (azure/local_run.py); offline, no Azure.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-cifar10-trainer:local}
AUTH=${AUTH:-auto}
COMPUTE=${COMPUTE:-cpu-cluster}
service=submit
[ "${SDK:-v1}" = v2 ] && service=submit-v2

# Python in the image does the Azure work; -T: its stdout is data here, not a terminal.
aml() { docker compose --profile azure run --rm -T "$service" "$@"; }

if [ "$COMPUTE" = local ] && [ -z "${REGISTRY:-}" ]; then
  echo "error: COMPUTE=local pulls the image by digest from a registry:" \
    "set REGISTRY=HOST:PORT (e.g. a docker-registry on 127.0.0.1)" >&2
  exit 1
fi
aml check-source
if [ "$COMPUTE" = local ]; then
  registry=$REGISTRY
elif [ -n "${DRY_RUN:-}" ]; then
  registry=${REGISTRY:-workspace-registry.azurecr.io}  # stands in for the workspace's
else
  # With a terminal, so that a device-code login can prompt; the token is cached in ~/.azure.
  docker compose --profile azure run --rm "$service" login --auth "$AUTH"
  if [ -z "${REGISTRY:-}" ]; then
    registry=$(aml registry --auth "$AUTH")
    aml acr-token --auth "$AUTH" --registry "$registry" \
      | docker login "$registry" --username 00000000-0000-0000-0000-000000000000 --password-stdin
  else
    registry=$REGISTRY
    echo "pushing to $registry with the host's existing docker login" >&2
  fi
fi
start=${EPOCHREALTIME:-$(date +%s)}
ref=$(bash azure/publish.sh "$IMAGE" "$registry")
push_seconds=$(awk "BEGIN {print ${EPOCHREALTIME:-$(date +%s)} - $start}")

opts=(--image "$ref" --experiment "${EXPERIMENT:-day1-experiment-train}" --compute "$COMPUTE"
      --vm-size "${VM_SIZE:-STANDARD_D2_V2}" --max-nodes "${MAX_NODES:-${NODES:-1}}" --shm-size "${SHM_SIZE:-2g}"
      --nodes "${NODES:-1}" --procs-per-node "${PROCS_PER_NODE:-1}"
      --datastore "${DATASTORE:-workspaceblobstore}")
[ -n "${DRY_RUN:-}" ] || [ "$COMPUTE" = local ] && opts+=(--dry-run)
[ -n "${LOW_PRIORITY:-}" ] && opts+=(--low-priority)
[ -n "${WAIT:-}" ] && opts+=(--wait)
[ -n "${DATA_PATH:-}" ] && opts+=(--data-path "$DATA_PATH")
[ -n "${CHECKPOINT_PATH:-}" ] && opts+=(--checkpoint-path "$CHECKPOINT_PATH")
[ -z "${DRY_RUN:-}" ] && [ "$COMPUTE" != local ] && opts+=(--auth "$AUTH")
if [ "$COMPUTE" = local ] && [ -z "${DRY_RUN:-}" ]; then
  plan=$(mktemp)
  trap 'rm -f "$plan"' EXIT
  # shellcheck disable=SC2086  # TRAIN_ARGS is a list of flags on purpose
  aml run "${opts[@]}" -- ${TRAIN_ARGS:-} >"$plan"
  PUSH_SECONDS=$push_seconds python3 azure/local_run.py "$plan"
else
  # shellcheck disable=SC2086
  docker compose --profile azure run --rm "$service" run "${opts[@]}" -- ${TRAIN_ARGS:-}
fi
