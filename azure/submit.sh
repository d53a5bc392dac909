#!/usr/bin/env bash
# `make submit`, in three steps and at most two containers: (1) check the job offline (stale code,
# TRAIN_ARGS through the trainer's own parser, settings, registry) and log in; (2) push the image by
# digest from the host; (3) register the Environment and submit. DRY_RUN=1: no network, no credentials;
# print the push and the exact definitions. COMPUTE=local: push to REGISTRY (`make registry`, with the
# workspace's token), then run the very job the dry run prints with the host's Docker (rehearsal/local_run.py).
# The job's settings are make's variables, read once by azure/submit.py (compose passes them through).
# `submit.sh upload-data`: DATA_DIR (./data) to the default datastore (COMPUTE=local: the rehearsal's, in Azurite).
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-cifar10-trainer:local}
case "${SDK:-v2}" in
  v1) service=submit
    # The tutorial's SDK still works (the image keeps azureml-core); say once that it is on its way out.
    echo "note: SDK v1 (azureml-core) is past its end of support (2026-06-30," \
      "https://learn.microsoft.com/azure/machine-learning/how-to-migrate-from-v1): SDK=v2 is the default" >&2 ;;
  v2) service=submit-v2 ;;
  *) echo "error: SDK=${SDK}: expected v1 (azureml-core) or v2 (azure-ai-ml)" >&2; exit 2 ;;
esac
# Whether a person can answer a device-code login: the first container runs without a TTY.
[ -t 0 ] && [ -t 2 ] && export AML_TERMINAL=1
dry=()
[ -n "${DRY_RUN:-}" ] && dry=(--dry-run)
# A dry run reads nothing from Azure: AZURE_RESOURCES (a JSON file on this machine) says what Azure holds.
resources=()
if [ -n "${AZURE_RESOURCES:-}" ]; then
  [ -f "$AZURE_RESOURCES" ] || { echo "error: AZURE_RESOURCES=$AZURE_RESOURCES: no such file" >&2; exit 2; }
  resources=(--azure-resources "$(cat "$AZURE_RESOURCES")")
fi

# Python in the image does the Azure work; -T: its stdout is data here, not a terminal.
aml() { docker compose --profile azure run --rm -T "$service" "$@"; }
now() { echo "${EPOCHREALTIME:-$(date +%s)}"; }
since() { awk "BEGIN {printf \"%.1f\", $(now) - $1}"; }

if [ "${1:-}" = upload-data ]; then
  data=$(realpath "${DATA_DIR:-data}")
  if [ "${COMPUTE:-}" = local ]; then
    # The SDK's own upload call, as its dry run prints it; the rehearsal's datastore refuses one that needs a key.
    plan=$(mktemp)
    trap 'rm -f "$plan"' EXIT
    docker compose --profile azure run --rm -T -v "$data:/work/data:ro" "$service" upload-data --dry-run >"$plan"
    python3 rehearsal/local_workspace.py upload-data "$plan"
    exit 0
  fi
  exec docker compose --profile azure run --rm -v "$data:/work/data:ro" "$service" upload-data "${dry[@]}"
fi
if [ "${COMPUTE:-}" = local ] && [ -z "${REGISTRY:-}" ]; then
  echo "error: COMPUTE=local pulls the image by digest from a registry:" \
    "set REGISTRY=HOST:PORT (make registry starts one on 127.0.0.1 and prints it)" >&2
  exit 1
fi

start=$(now)
prepared=$(aml prepare "${dry[@]}" "${resources[@]}")
registry=$(sed -n 's/^REGISTRY //p' <<<"$prepared")
token=$(sed -n 's/^TOKEN //p' <<<"$prepared")
if [ -n "$token" ]; then
  printf '%s' "$token" | docker login "$registry" --username 00000000-0000-0000-0000-000000000000 --password-stdin
elif [ -z "${DRY_RUN:-}" ] && [ "${COMPUTE:-}" != local ]; then
  echo "pushing to $registry with the host's existing docker login" >&2
fi
push_config=
if [ "${COMPUTE:-}" = local ] && [ -z "${DRY_RUN:-}" ]; then
  # The rehearsal's registry asks for a login, as an ACR does: the workspace's token for it (what the ACR token
  # exchange gives), checked before the push, in a docker config of this push's own.
  workspace_token=$(python3 rehearsal/local_workspace.py registry-token) || exit 1
  push_config=$(mktemp -d)
  trap 'rm -rf "$push_config"' EXIT
  if ! said=$(printf '%s' "$workspace_token" | DOCKER_CONFIG=$push_config docker login "$registry" \
    --username 00000000-0000-0000-0000-000000000000 --password-stdin 2>&1 >/dev/null); then
    echo "error: cannot log in to $registry with the workspace's token (${said##*$'\n'}): is it the registry" \
      "make registry started, with these logins? (REGISTRY_CREDENTIALS)" >&2
    exit 1
  fi
fi
check=$(since "$start")

start=$(now)
ref=$(env ${push_config:+"DOCKER_CONFIG=$push_config"} bash azure/publish.sh "$IMAGE" "$registry")
push=$(since "$start")

start=$(now)
if [ "${COMPUTE:-}" = local ] && [ -z "${DRY_RUN:-}" ]; then
  plan=$(mktemp)
  trap 'rm -rf "$plan" "$push_config"' EXIT
  aml run --image "$ref" --dry-run >"$plan"
  python3 rehearsal/local_workspace.py register "$plan"
  echo "timing: check $check s, job definition $(since "$start") s" >&2
  PUSH_SECONDS=$push python3 rehearsal/local_run.py "$plan"
  exit 0
fi
aml run --image "$ref" "${dry[@]}"
echo "timing: check and login $check s, push $push s, register and submit $(since "$start") s" >&2
