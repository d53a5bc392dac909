#!/usr/bin/env bash
# How fast the image moves, before and after a change, in one run: for the Dockerfile at BEFORE
# (a git revision; default: the one before the packages were split into layers) and for the work
# tree, prints the image's size, its layers over 100 MB, a first push to an empty registry and a
# cold pull by digest into an empty Docker engine. Both are started here (Debian's docker-registry
# on 127.0.0.1, a second dockerd on a private socket and data root) and removed at the end, so no
# layer is found already present. COLD=1 also times a cold build of the work tree, as before.
#   make bench-image                 BEFORE=<rev> make bench-image
set -euo pipefail
cd "$(dirname "$0")/.."
before=${BEFORE:-$(git log -1 --format=%H -G'AS lock-split' -- docker/Dockerfile)^}
git rev-parse --verify -q "$before^{commit}" >/dev/null || { echo "error: BEFORE=$before is not a commit; pass BEFORE=<rev>" >&2; exit 1; }
command -v docker-registry >/dev/null || { echo "error: docker-registry not found: apt-get install docker-registry" >&2; exit 1; }
work=$(mktemp -d)
pids=()
bridge=benchimg$$
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip link del "$bridge" 2>/dev/null || true
  docker image rm cifar10-trainer:bench-before cifar10-trainer:bench-after >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

seconds() { local t0=$SECONDS; "$@" >"$work/cmd.log" 2>&1 || { tail -n 30 "$work/cmd.log"; exit 1; }; echo $((SECONDS - t0)); }
wait_for() { for _ in $(seq 100); do "$@" >/dev/null 2>&1 && return 0; sleep 0.3; done; echo "error: timed out waiting for: $*" >&2; exit 1; }

# An empty engine for the cold pulls: its own socket, data root, containerd and bridge. Not
# `--bridge none`: that makes dockerd delete docker0, the bridge the machine's own engine uses.
engine="unix://$work/docker.sock"
ip link add name "$bridge" type bridge
ip addr add 10.213.0.1/24 dev "$bridge"
dockerd --data-root "$work/engine" --exec-root "$work/x" --pidfile "$work/dockerd.pid" -H "$engine" \
  --bridge "$bridge" --iptables=false --ip6tables=false >"$work/dockerd.log" 2>&1 </dev/null &
pids+=($!)
wait_for docker -H "$engine" version --format '{{.Server.Version}}'

for variant in before after; do
  tree="$work/$variant"
  mkdir -p "$tree"
  if [ "$variant" = before ]; then
    git archive "$before" docker src compose.yaml .dockerignore | tar -x -C "$tree"
  else
    cp -r docker src compose.yaml .dockerignore "$tree/"
  fi
  tag=cifar10-trainer:bench-$variant
  if [ "$variant" = after ] && [ "${COLD:-0}" = 1 ]; then
    docker buildx prune -f --filter type=exec.cachemount >/dev/null
    cold=$(cd "$tree" && IMAGE=$tag seconds docker compose build --no-cache train)
  fi
  built=$(cd "$tree" && IMAGE=$tag seconds docker compose build train) || { echo "$built"; exit 1; }

  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  printf 'version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\nlog:\n  level: error\n' \
    "$work/registry-$variant" "$port" >"$work/registry-$variant.yml"
  docker-registry serve "$work/registry-$variant.yml" >/dev/null 2>&1 &
  pids+=($!)
  wait_for python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/v2/')"
  ref=127.0.0.1:$port/cifar10-trainer:$variant
  docker tag "$tag" "$ref"
  push=$(seconds docker push "$ref")
  digest_ref=$(docker image inspect --format '{{index .RepoDigests 0}}' "$ref")
  docker image rm "$ref" >/dev/null
  pull=$(seconds docker -H "$engine" pull "$digest_ref")
  docker -H "$engine" image rm "$digest_ref" >/dev/null  # the next variant's pull starts empty too
  stored=$(du -sb "$work/registry-$variant" | cut -f1)

  size=$(docker image inspect "$tag" --format '{{.Size}}')
  printf '%s (%s):\n' "$variant" "$([ "$variant" = before ] && git rev-parse --short "$before" || echo 'work tree')"
  printf '  image size:                 %.2f GB; pushed (compressed): %.2f GB\n' \
    "$(echo "$size / 10^9" | bc -l)" "$(echo "$stored / 10^9" | bc -l)"
  printf '  layers over 100 MB:         %s\n' \
    "$(docker history --format '{{.Size}}' "$tag" | grep -E '^[0-9.]+GB|^[0-9]{3,}(\.[0-9]+)?MB' | paste -sd' ')"
  printf '  first push, empty registry: %ss\n' "$push"
  printf '  cold pull by digest:        %ss (empty engine; download and unpack)\n' "$pull"
  if [ -n "${cold:-}" ]; then printf '  cold build (no layer/pip cache, base image present): %ss\n' "$cold"; fi
done
printf 'load average at the end: %s (2 shared cores: read the times as relative)\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
