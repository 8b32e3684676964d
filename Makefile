# neuroseg developer entry points. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= demo
export NIPYPE_NO_ET := 1

.PHONY: demo test test-slow lint bench clean

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
