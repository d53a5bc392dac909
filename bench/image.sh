#!/usr/bin/env bash
# Prints the image's size, its cold build time and the rebuild time after a one-line
# change under src/. Builds a copy of the tree under another tag, so neither your work
# tree nor your image is touched; "cold" also drops BuildKit's pip cache (it refills).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r docker src compose.yaml .dockerignore "$work/"
cd "$work"
export IMAGE=cifar10-trainer:bench

seconds() { local t0=$SECONDS; "$@" >build.log 2>&1 || { tail -n 30 build.log; exit 1; }; echo $((SECONDS - t0)); }

docker buildx prune -f --filter type=exec.cachemount >/dev/null
cold=$(seconds docker compose build --no-cache train)
noop=$(seconds docker compose build train)
echo "# one-line change $(date +%s)" >>src/model.py
warm=$(seconds docker compose build train)
size=$(docker image inspect "$IMAGE" --format '{{.Size}}')
layer=$(docker history --no-trunc --format '{{.Size}}\t{{.CreatedBy}}' "$IMAGE" | grep -m1 'pip install' | cut -f1)

printf 'image size:                  %.2f GB (%s bytes)\n' "$(echo "$size / 1000000000" | bc -l)" "$size"
printf 'of which the pip layer:      %s\n' "$layer"
printf 'cold build (no layer/pip cache, base image present): %ss\n' "$cold"
printf 'rebuild, nothing changed:    %ss\n' "$noop"
printf 'rebuild after a src/ change: %ss\n' "$warm"
docker image rm "$IMAGE" >/dev/null
