# The MLflow tracking server with its UI (`docker compose up -d mlflow`, `make ui`): Debian's
# Python 3.11 and a venv of hash-locked packages, off the training runtime. The browser stage
# is the headless Chromium that the tracking test uses to load the UI, so the host needs only Docker.
# No `# syntax=` line on purpose: it makes BuildKit pull a frontend image from a registry.

# Same base as docker/Dockerfile; overridable for machines without a registry (.ci/run).
ARG BASE_IMAGE=debian:bookworm-slim@sha256:3783cc01769c7b2b1b83a5c5ad96c815348e28ed7da68e2e3687004faa906251

FROM ${BASE_IMAGE} AS os
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# The server; `make lock` resolves docker/mlflow.in in docker/Dockerfile's lock stage.
FROM os AS mlflow
RUN --mount=type=secret,id=ca --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,source=docker/pip-install.sh,target=/tmp/pip-install.sh \
    --mount=type=bind,source=docker/mlflow.lock,target=/tmp/mlflow.lock \
    sh /tmp/pip-install.sh /tmp/mlflow.lock && pip check
# Runs root-less; runs, metrics and artifacts live in /mlflow (a named volume in compose).
RUN useradd --uid 1000 --user-group --no-create-home --home-dir /tmp mlflow \
 && mkdir /mlflow && chown mlflow:mlflow /mlflow
ENV HOME=/tmp
USER mlflow
WORKDIR /mlflow
VOLUME /mlflow
EXPOSE 5000
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=2)"]
ENTRYPOINT ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000", \
            "--backend-store-uri", "sqlite:////mlflow/mlflow.db", \
            "--artifacts-destination", "/mlflow/artifacts", "--serve-artifacts"]
# One worker is plenty for one user. Host headers and the UI's own origin: the compose service
# name (the trainer and the test's browser reach it as mlflow:5000) and loopback (the published
# port), nothing else: MLflow's guards against DNS rebinding and cross-site requests stay on.
CMD ["--workers", "1", \
     "--allowed-hosts", "mlflow,mlflow:*,localhost,localhost:*,127.0.0.1,127.0.0.1:*", \
     "--cors-allowed-origins", "http://mlflow:5000,http://localhost:*,http://127.0.0.1:*"]

# Headless Chromium from Debian, for the tracking test: it loads the UI and takes a screenshot.
FROM ${BASE_IMAGE} AS browser
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium fonts-dejavu-core \
 && rm -rf /var/lib/apt/lists/*
# HOME in /tmp: the profile Chromium writes goes to a tmpfs, the root filesystem stays read-only.
RUN useradd --uid 1000 --user-group --no-create-home --home-dir /tmp browser
ENV HOME=/tmp
USER browser
ENTRYPOINT ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
