# A local container registry for `make submit COMPUTE=local` (`make registry`): Debian's own
# docker-registry package on the same pinned base as the training image, so nothing else to pull.
ARG BASE_IMAGE=debian:bookworm-slim@sha256:3783cc01769c7b2b1b83a5c5ad96c815348e28ed7da68e2e3687004faa906251
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker-registry \
 && rm -rf /var/lib/apt/lists/*
# Debian's own config asks for htpasswd logins; a registry on 127.0.0.1 for one user needs none.
RUN printf 'version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /var/lib/docker-registry\nhttp:\n  addr: :5000\n' \
      > /etc/docker/registry/local.yml
EXPOSE 5000
CMD ["docker-registry", "serve", "/etc/docker/registry/local.yml"]
