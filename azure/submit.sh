#!/usr/bin/env bash
# `make submit`: refuse stale code, check config and credentials, push the image by digest,
# then register the Environment and submit the run. DRY_RUN=1: no network, no credentials;
# print the push and the exact definitions that would be sent.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-cifar10-trainer:local}
AUTH=${AUTH:-auto}
service=submit
[ "${SDK:-v1}" = v2 ] && service=submit-v2

# Python in the image does the Azure work; -T: its stdout is data here, not a terminal.
aml() { docker compose --profile azure run --rm -T "$service" "$@"; }

aml check-source
if [ -n "${DRY_RUN:-}" ]; then
  registry=${REGISTRY:-workspace-registry.azurecr.io}  # stands in for the workspace's
else
  # With a terminal, so that a device-code login can prompt; the token is cached in ~/.azure.
  docker compose --profile azure run --rm "$service" login --auth "$AUTH"
  registry=${REGISTRY:-$(aml registry --auth "$AUTH")}
  case "$registry" in
    *.azurecr.io) aml acr-token --auth "$AUTH" --registry "$registry" \
        | docker login "$registry" --username 00000000-0000-0000-0000-000000000000 --password-stdin ;;
    *) echo "pushing to $registry with the host's existing docker login" >&2 ;;
  esac
fi
ref=$(bash azure/publish.sh "$IMAGE" "$registry")

opts=(--image "$ref" --experiment "${EXPERIMENT:-cifar10}" --compute "${COMPUTE:-cpu-cluster}"
      --vm-size "${VM_SIZE:-STANDARD_D2_V2}" --max-nodes "${MAX_NODES:-${NODES:-1}}" --shm-size "${SHM_SIZE:-2g}"
      --nodes "${NODES:-1}" --procs-per-node "${PROCS_PER_NODE:-1}"
      --datastore "${DATASTORE:-workspaceblobstore}")
[ -n "${DRY_RUN:-}" ] && opts+=(--dry-run)
[ -n "${LOW_PRIORITY:-}" ] && opts+=(--low-priority)
[ -n "${WAIT:-}" ] && opts+=(--wait)
[ -n "${DATA_PATH:-}" ] && opts+=(--data-path "$DATA_PATH")
[ -n "${CHECKPOINT_PATH:-}" ] && opts+=(--checkpoint-path "$CHECKPOINT_PATH")
[ -z "${DRY_RUN:-}" ] && opts+=(--auth "$AUTH")
# shellcheck disable=SC2086  # TRAIN_ARGS is a list of flags on purpose
docker compose --profile azure run --rm "$service" run "${opts[@]}" -- ${TRAIN_ARGS:-}
