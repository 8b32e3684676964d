# neuroseg developer entry points. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= demo
export NIPYPE_NO_ET := 1

.PHONY: demo test test-slow browser lint bench clean

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
