# Everything runs in the image; the host needs Docker (with compose v2) and make,
# plus python3 for the end-to-end tests that drive `docker compose` from outside.
IMAGE        ?= cifar10-trainer:local
EPOCHS       ?=
ARGS         ?=
DATA_DIR     ?= ./data
OUTPUTS_DIR  ?= ./outputs
CHECKPOINTS_DIR ?= ./checkpoints
HOST_VENV    ?= .venv-host
# make submit / upload-data: docs/azure.md lists their variables (azure/submit.py reads them, once)
TRAIN_ARGS   ?= $(EPOCHS_FLAG)
PROCS        ?= 2
IMAGE_MLFLOW  ?= cifar10-mlflow:local
IMAGE_BROWSER ?= cifar10-browser:local
IMAGE_AZURITE ?= cifar10-azurite:local
export IMAGE_MLFLOW IMAGE_BROWSER IMAGE_AZURITE
# make train MLFLOW=1: log the run to the compose MLflow server (`make ui` starts it).
ifdef MLFLOW
export MLFLOW_TRACKING_URI ?= http://mlflow:5000
endif

# `make submit` runs the Azure SDK as whoever runs make: the token cache in ~/.azure stays theirs.
# (Training needs none of this: the image runs as the owner of ./outputs, see docs/runtime.md.)
export LOCAL_UID := $(shell id -u)
export LOCAL_GID := $(shell id -g)
export IMAGE DATA_DIR OUTPUTS_DIR CHECKPOINTS_DIR TRAIN_ARGS
# Provenance baked into the image as OCI labels; the commit time keeps rebuilds cache-friendly.
# Given in the environment (a copy of the tree without .git), they are kept.
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)$(shell git diff --quiet HEAD -- 2>/dev/null || echo -dirty)
VERSION  ?= $(shell git describe --tags --always 2>/dev/null || echo dev)
CREATED  ?= $(shell git log -1 --format=%cI 2>/dev/null || echo 1970-01-01T00:00:00Z)
SOURCE   ?= $(shell git config --get remote.origin.url 2>/dev/null | grep -E '^https://' || echo unknown)
export REVISION := $(REVISION)
export VERSION  := $(VERSION)
export CREATED  := $(CREATED)
export SOURCE   := $(SOURCE)

COMPOSE := docker compose
# --epochs only when EPOCHS is given: the trainer's own default (src/cli.py) is the one default.
EPOCHS_FLAG = $(if $(EPOCHS),--epochs $(EPOCHS))
# A build's steps when its target is asked for by name (make build), quietly when it comes first for
# another target (a cached build takes seconds; errors still show). Offline, a base image that cannot be
# pulled gets one line naming BASE_IMAGE.
BUILD = @$(COMPOSE) --progress $(if $(filter $@,$(MAKECMDGOALS)),auto,quiet) $(1) build $(2) \
  || { echo "make: building $(2) failed; offline or without a registry? BASE_IMAGE=<a local debian:bookworm-slim> make $(or $(MAKECMDGOALS),$@) (docs/ci.md)" >&2; exit 1; }
# The run's link in the MLflow UI, at the port the host reaches `make ui`'s server on (asked once).
ifeq ($(MLFLOW_TRACKING_URI),http://mlflow:5000)
ifndef TRACKING_UI_URL
export TRACKING_UI_URL := http://$(shell $(COMPOSE) --profile tracking port mlflow 5000 2>/dev/null || echo 127.0.0.1:5000)
endif
endif
comma   := ,
PYTEST  := $(HOST_VENV)/bin/python -m pytest

.DEFAULT_GOAL := help
.PHONY: help build build-submit-v2 build-mlflow build-browser build-azurite registry ui train train-ddp train-2node dirs submit upload-data attach-registry test test-unit test-e2e lint lock bench bench-ddp numerics-matrix compare fetch clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

build: ## build the training image (IMAGE, default cifar10-trainer:local)
	$(call BUILD,,train)
build-submit-v2: ## the image that submits with SDK v2 (azure-ai-ml), kept apart from the runtime
	$(call BUILD,--profile azure,submit-v2)
build-mlflow: ## the MLflow server's image (make ui; COMPUTE=local's stand-ins)
	$(call BUILD,--profile tracking,mlflow)
build-browser: ## the headless browser the tracking test uses
	$(call BUILD,--profile browser,browser)
build-azurite: ## Azurite, the Azure Storage emulator's blob service (pinned: docker/azurite/package-lock.json)
	$(call BUILD,--profile rehearsal,azurite)

train: build dirs ## train in the image: make train EPOCHS=1 ARGS="--fake-data 2000"
	$(COMPOSE) run --rm train $(EPOCHS_FLAG) $(ARGS)

train-ddp: build dirs ## one container, PROCS processes (torchrun): make train-ddp PROCS=2 ARGS="--fake-data 4000"
	$(COMPOSE) run --rm train python /app/src/launch.py --standalone --nproc-per-node $(PROCS) /app/src/train.py $(EPOCHS_FLAG) $(ARGS)

train-2node: build dirs ## a 2-node job as two containers, as on Azure ML: make train-2node DDP_ARGS="..."
	@# Both followed to their end: node 0's last lines (its outputs) too, and no compose "Aborting on
	@# container exit" when node 1 is done first. The job's status is node 0's.
	$(COMPOSE) --profile ddp up -d --force-recreate node0 node1
	$(COMPOSE) --profile ddp logs -f node0 node1
	@code=$$(docker inspect -f '{{.State.ExitCode}}' $$($(COMPOSE) --profile ddp ps -aq node0)); \
	  $(COMPOSE) --profile ddp rm -fs node0 node1 >/dev/null 2>&1; exit $$code

dirs:
	@mkdir -p $(DATA_DIR) $(OUTPUTS_DIR) $(CHECKPOINTS_DIR)

submit: build $(if $(filter v1,$(SDK)),,build-submit-v2) $(if $(filter local,$(COMPUTE)),build-mlflow build-azurite) ## push by digest, submit to Azure ML (DRY_RUN=1, SDK=v1; COMPUTE=local REGISTRY=127.0.0.1:PORT runs it here)
	@mkdir -p .azureml $${AZURE_CONFIG_DIR:-$$HOME/.azure}
	bash azure/submit.sh

upload-data: build $(if $(filter v1,$(SDK)),,build-submit-v2) $(if $(filter local,$(COMPUTE)),build-azurite) ## ./data to the default datastore at DATA_PATH (tutorial part 4; COMPUTE=local: the rehearsal's, in Azurite)
	@mkdir -p .azureml $${AZURE_CONFIG_DIR:-$$HOME/.azure}
	bash azure/submit.sh upload-data

fetch: $(if $(JOB),$(if $(filter local,$(COMPUTE)),,$(if $(filter v1,$(SDK)),build,build-submit-v2))) ## a finished job's ./outputs into OUTPUTS_DIR/JOB/, for make compare: make fetch JOB=NAME (SDK=v1, COMPUTE=local, REPLACE=1)
	@mkdir -p .azureml $${AZURE_CONFIG_DIR:-$$HOME/.azure}
	python3 azure/fetch.py $(JOB)

attach-registry: build-submit-v2 ## create (ACR=NAME) and attach the workspace's container registry, or attach ACR=ID (DRY_RUN=1)
	@mkdir -p .azureml $${AZURE_CONFIG_DIR:-$$HOME/.azure}
	$(COMPOSE) --profile azure run --rm submit-v2 attach-registry $(if $(DRY_RUN),--dry-run)

test: lint build build-submit-v2 build-mlflow build-browser build-azurite test-unit test-e2e ## lint, build, unit tests in the images, end-to-end tests

test-unit: ## unit tests, inside the training image (and the SDK v2 ones in the submit-v2 image)
	$(COMPOSE) run --rm test
	$(COMPOSE) --profile azure run --rm -v $(CURDIR)/tests:/app/tests:ro -v $(CURDIR)/pyproject.toml:/app/pyproject.toml:ro \
	  -v $(CURDIR)/src:/app/src:ro -v $(CURDIR)/rehearsal:/app/rehearsal:ro -w /app --entrypoint python submit-v2 -m pytest -p no:cacheprovider tests/unit/test_azure_v2.py tests/unit/test_fetch_v2.py

test-e2e: $(HOST_VENV) ## end-to-end tests from the host: docker compose run train, outputs on the host
	PYTHONDONTWRITEBYTECODE=1 $(PYTEST) -p no:cacheprovider --durations=20 tests/e2e

lint: $(HOST_VENV) ## ruff over src, tests, bench, azure, rehearsal; actionlint over .github/workflows
	$(HOST_VENV)/bin/ruff check --no-cache src tests bench azure rehearsal
	$(HOST_VENV)/bin/ruff format --no-cache --check src tests bench azure rehearsal
	$(HOST_VENV)/bin/actionlint -no-color .github/workflows/*.yml

lock: ## re-resolve docker/*.in (runtime, submit-v2, mlflow) into docker/*.lock (in a container)
	docker buildx build -f docker/Dockerfile --target lock --output type=local,dest=docker \
	  --build-arg LOCK_STAMP="$$(date -u +%FT%TZ)" $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) \
	  $(if $(CA_CERT),--secret id=ca$(comma)src=$(CA_CERT)) .

registry: ## a local registry that asks for a login, as an ACR does (port: REGISTRY_PORT), for make submit COMPUTE=local REGISTRY=...
	python3 rehearsal/local_workspace.py registry-logins
	$(COMPOSE) --profile registry up -d --build registry
	@address=$$($(COMPOSE) --profile registry port registry 5000); echo "registry: $$address (stop: docker compose --profile registry down)"; \
	  echo "log in: python3 rehearsal/local_workspace.py registry-token | docker login $$address --username 00000000-0000-0000-0000-000000000000 --password-stdin"

ui: ## start the MLflow tracking server and its UI (127.0.0.1:5000); then: make train MLFLOW=1
	$(COMPOSE) --profile tracking up -d --build --wait mlflow
	@echo "MLflow UI: http://$$($(COMPOSE) --profile tracking port mlflow 5000)"

bench: build ## the whole `docker compose run train` against the tutorial's train.py, side by side: ARGS="--epochs 1 --loop"
	python3 bench/product.py $(ARGS)

bench-ddp: build ## data-parallel scaling, 1 vs 2 processes (torchrun), in the image
	$(COMPOSE) run --rm -v $(CURDIR)/bench:/app/bench:ro train python /app/bench/scaling.py $(ARGS)

numerics-matrix: build $(HOST_VENV) ## weights sha256 natively and under QEMU as other CPUs, every path: ARGS="--cpus Haswell-v4 --fake-data 400"
	$(HOST_VENV)/bin/python tests/e2e/test_numerics.py $(ARGS)

# `make compare` exits as compare.py does (0 the same run, 1 differs, 2 not a run), not with make's 2 and
# its "Error 1" line: the comparison runs while make reads this file, and a difference sets -q (question
# mode), whose "not up to date" is make's own exit 1. GNU make before 4.0 (no $(file)) runs it as a recipe.
ifeq ($(MAKECMDGOALS)$(filter 3.%,$(MAKE_VERSION)),compare)
compare_out := $(shell mktemp)
compare_status := $(shell python3 src/compare.py $(A) $(B) >$(compare_out); echo $$?)
$(info $(file <$(compare_out)))
$(shell rm -f $(compare_out))
ifeq ($(compare_status),1)
MAKEFLAGS += -q
endif
compare:
	@exit $(compare_status)
else
compare: ## two runs' output folders side by side; exit 0 when they are the same run: make compare A=DIR B=DIR
	python3 src/compare.py $(A) $(B)
endif

clean: ## remove outputs, checkpoints, the host test venv and the image (keeps downloaded data)
	rm -rf $(OUTPUTS_DIR)/* $(CHECKPOINTS_DIR)/* $(HOST_VENV)
	-docker image rm $(IMAGE)

$(HOST_VENV): tests/requirements-host.txt
	python3 -m venv $(HOST_VENV)
	$(HOST_VENV)/bin/pip install -q --require-hashes -r tests/requirements-host.txt
	@touch $(HOST_VENV)
