#!/usr/bin/env bash
# Push IMAGE to REGISTRY under an immutable tag and print the reference to submit, by digest alone:
#   REGISTRY/cifar10-trainer@sha256:<pushed digest>
# The tag (<git revision>-<image id>) is what a push needs and what a person reads in the registry; the
# Environment registers the digest without it, so the same build pushed from any commit registers alike.
# With DRY_RUN=1 it only prints the commands it would run (and the digest of an earlier
# push of this very image, if there was one).
set -euo pipefail
image=${1:?usage: publish.sh IMAGE REGISTRY}
registry=${2:?usage: publish.sh IMAGE REGISTRY}
repo="$registry/cifar10-trainer"

# The image by id from here on: IMAGE may be rebuilt (retagged) while this runs.
id=$(docker image inspect --format '{{.Id}}' "$image")
rev=$(git rev-parse --short=12 HEAD 2>/dev/null || echo norev)
git diff --quiet HEAD -- 2>/dev/null || rev="$rev-dirty"
short=${id#sha256:}
tag="$repo:$rev-${short:0:12}"

pushed_digest() {
  docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$id" \
    | grep -m1 "^$repo@" | cut -d@ -f2
}

if [ -n "${DRY_RUN:-}" ]; then
  echo "would run: docker tag $image $tag && docker push $tag" >&2
  digest=$(pushed_digest || true)
  [ -n "$digest" ] || echo "(the digest is known once pushed; zeros stand in for it below)" >&2
  echo "$repo@${digest:-sha256:$(printf '0%.0s' {1..64})}"
  exit 0
fi
docker tag "$id" "$tag"
docker push --quiet "$tag" >&2
digest=$(pushed_digest || true)
[ -n "$digest" ] || { echo "error: pushed $tag but found no digest for $repo" >&2; exit 1; }
echo "$repo@$digest"
