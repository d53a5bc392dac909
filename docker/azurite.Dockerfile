# Azurite, Microsoft's Azure Storage emulator (https://github.com/Azure/Azurite), blob service only:
# a local stand-in for a storage account's blob endpoint. Debian's Node.js on the same pinned base as
# the training image, so nothing else to pull; azurite and its dependencies pinned by
# docker/azurite/package-lock.json (integrity hashes, no registry URLs: npm's default registry fills them).
# Azurite 3.35.0 is the last release whose engines allow bookworm's Node.js 18 (3.36 wants 22).
# No `# syntax=` line on purpose: it makes BuildKit pull a frontend image from a registry.

# Same base as docker/Dockerfile; overridable for machines without a registry (.ci/run).
ARG BASE_IMAGE=debian:bookworm-slim@sha256:3783cc01769c7b2b1b83a5c5ad96c815348e28ed7da68e2e3687004faa906251

FROM ${BASE_IMAGE} AS node
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nodejs \
 && rm -rf /var/lib/apt/lists/*

# npm (and the ~200 Debian packages it brings) only here: the image keeps node_modules, not npm.
FROM node AS install
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends npm ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/azurite
COPY docker/azurite/package.json docker/azurite/package-lock.json ./
# The proxy's CA comes as a BuildKit secret, so nothing of it lands in a layer; empty: none needed
# (as docker/pip-install.sh does for pip). NODE_EXTRA_CA_CERTS adds it to Node's CAs, npm's included.
# npm ci installs exactly the lock, checking each package's integrity hash; azurite and its
# dependencies have no install scripts, so none is run.
RUN --mount=type=secret,id=ca --mount=type=cache,target=/root/.npm \
    if [ -s /run/secrets/ca ]; then export NODE_EXTRA_CA_CERTS=/run/secrets/ca; fi \
 && npm ci --omit=dev --ignore-scripts --no-audit --no-fund --no-update-notifier

FROM node AS azurite
COPY --from=install /opt/azurite/node_modules /opt/azurite/node_modules
# Runs root-less; the blobs and Azurite's metadata live in /data (a volume).
RUN useradd --uid 1000 --user-group --no-create-home --home-dir /tmp azurite \
 && mkdir /data && chown azurite:azurite /data
ENV HOME=/tmp \
    PATH=/opt/azurite/node_modules/.bin:$PATH
USER azurite
WORKDIR /data
VOLUME /data
# Smoke test: the pinned azurite starts under this Node.js.
RUN azurite-blob --version
EXPOSE 10000
# Flags (README: https://github.com/Azure/Azurite#command-line-options):
#   --blobHost 0.0.0.0      listen on every interface, not the default 127.0.0.1: other containers reach it
#   --blobPort 10000        the blob service's well-known port (the default), said next to EXPOSE
#   --location /data        the workspace folder: blobs and metadata in the volume, not the working directory
#   --skipApiVersionCheck   serve an SDK newer than this Azurite (azure-storage-blob sends its own API version)
#   --disableProductStyleUrl  the account name from the URL's path (http://HOST:10000/devstoreaccount1), never
#                           from a host name with dots in it (a compose service's FQDN)
#   --disableTelemetry      Azurite 3.35 sends usage data by default: an emulator here talks to no one
ENTRYPOINT ["azurite-blob", "--blobHost", "0.0.0.0", "--blobPort", "10000", "--location", "/data", \
            "--skipApiVersionCheck", "--disableProductStyleUrl", "--disableTelemetry"]
