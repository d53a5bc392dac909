# A local container registry for `make submit COMPUTE=local` (`make registry`): Debian's own
# docker-registry package on the same pinned base as the training image, so nothing else to pull.
# It asks for a login, as an Azure Container Registry does (htpasswd auth; apache2-utils' htpasswd
# hashes the logins at start, docker/registry-entrypoint.sh).
ARG BASE_IMAGE=debian:bookworm-slim@sha256:3783cc01769c7b2b1b83a5c5ad96c815348e28ed7da68e2e3687004faa906251
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker-registry apache2-utils \
 && rm -rf /var/lib/apt/lists/*
RUN printf '%s\n' 'version: 0.1' 'storage:' '  filesystem:' '    rootdirectory: /var/lib/docker-registry' \
      'http:' '  addr: :5000' 'auth:' '  htpasswd:' '    realm: cifar10-registry' '    path: /tmp/htpasswd' \
      > /etc/docker/registry/local.yml
COPY --chmod=755 docker/registry-entrypoint.sh /usr/local/bin/registry-entrypoint
EXPOSE 5000
ENTRYPOINT ["/usr/local/bin/registry-entrypoint"]
