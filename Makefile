# neuroseg developer entry points. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= demo
export NIPYPE_NO_ET := 1

.PHONY: demo test test-slow browser lint bench clean image image-test

$(BIN)/neuroseg: pyproject.toml version
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

## demo: synthetic spine + brain FLAIR dataset -> participant level -> group level (outputs in demo/out)
demo: $(BIN)/neuroseg
	rm -rf $(DEMO)
	$(BIN)/python -m bids_app.synthetic $(DEMO)/bids
	$(BIN)/neuroseg $(DEMO)/bids $(DEMO)/out participant --tasks spinalcord mslesion --work-dir $(DEMO)/work --nprocs 2
	$(BIN)/neuroseg $(DEMO)/bids $(DEMO)/out group --tasks spinalcord mslesion
	@echo "Demo outputs: $(DEMO)/out (cohort tables: $(DEMO)/out/group_csa.tsv, $(DEMO)/out/group_lesions.tsv)"

## test: the default suite (fast, CPU, no shared data needed)
test: $(BIN)/neuroseg
	$(BIN)/python -m pytest

## browser: install Debian's chromium for the headless-browser tests (tests/browser.py); `make test` does
## not need it (those tests skip without it), .ci/run calls this first
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)
browser:
	@if command -v chromium >/dev/null 2>&1; then echo "chromium: $$(command -v chromium)"; else \
	  command -v apt-get >/dev/null 2>&1 || { echo "make browser: no apt-get; install chromium yourself" >&2; exit 1; }; \
	  $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; fi

## test-slow: slow tests too (CSA drift on ../shared/data when present)
test-slow: $(BIN)/neuroseg
	$(BIN)/python -m pytest -m "not gpu"

## bench: stage-by-stage timing and peak memory of the participant level on CPU
bench: $(BIN)/neuroseg
	$(BIN)/python benchmarks/participant.py

lint: $(BIN)/neuroseg
	$(BIN)/python -m compileall -q bids_app training tests benchmarks

clean:
	rm -rf $(DEMO) .pytest_cache

## image: build the CPU image with podman (chroot isolation, no daemon). Without BASE_IMAGE in local
## storage, it is first bootstrapped from Debian packages (containers/bootstrap-base.sh, needs root).
## Offline torch: TORCH_WHEEL_DIR=/dir/with/torch-wheel; TLS proxy: PIP_CERT_FILE=/path/ca-bundle.crt
## (build secret, not stored in the image). See containers/README.md.
CONTAINER ?= podman
VERSION_TAG := $(shell cat version)
IMAGE ?= neuroseg:$(VERSION_TAG)
BASE_IMAGE ?= localhost/debian-python:bookworm
TORCH_VARIANT ?= cpu
TORCH_WHEEL_DIR ?=
PIP_CERT_FILE ?=
PIP_CONF_FILE ?=
IMAGE_BUILD_FLAGS ?=
# --label too: buildah 1.28 reuses a cached LABEL step when only the build-arg value changed.
VCS_REF = $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
, := ,
image:
	@$(CONTAINER) image exists $(BASE_IMAGE) || CONTAINER_CMD=$(CONTAINER) containers/bootstrap-base.sh $(BASE_IMAGE)
	$(CONTAINER) build --isolation=chroot --network host --format docker \
	  --build-arg BASE_IMAGE=$(BASE_IMAGE) \
	  $(if $(TORCH_WHEEL_DIR),--build-arg TORCH_VARIANT=local -v $(abspath $(TORCH_WHEEL_DIR)):/wheels:ro,--build-arg TORCH_VARIANT=$(TORCH_VARIANT)) \
	  $(if $(PIP_CERT_FILE),--secret id=pip_cert$(,)src=$(abspath $(PIP_CERT_FILE))) \
	  $(if $(PIP_CONF_FILE),--secret id=pip_conf$(,)src=$(abspath $(PIP_CONF_FILE))) \
	  --build-arg VERSION=$(VERSION_TAG) --build-arg VCS_REF=$(VCS_REF) \
	  --label org.opencontainers.image.version=$(VERSION_TAG) --label org.opencontainers.image.revision=$(VCS_REF) \
	  $(IMAGE_BUILD_FLAGS) -t $(IMAGE) .
	@$(CONTAINER) image inspect --format '$(IMAGE): {{.Size}} bytes' $(IMAGE)

## image-test: demo dataset on the host and in the image ($(IMAGE)): --read-only, --network none,
## arbitrary --user, input read-only; outputs compared (benchmarks/results/container_<date>.json)
image-test: $(BIN)/neuroseg
	$(BIN)/python benchmarks/container.py --image $(IMAGE) --engine $(CONTAINER)
