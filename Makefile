# Set-up is idempotent: the stamp file records a finished install, so a second `make` reinstalls nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned to the CPU build: an open requirement would pull a CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# From the shipped base model and metacontrollers (internal_rl/shipped/gridworld-quick); the whole pipeline
# from scratch is `internal-rl reproduce gridworld --preset quick --out DIR` (about 50 minutes).
demo: $(STAMP)
	$(BIN)/internal-rl --threads 1 reproduce gridworld --preset demo --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	for b in $(filter-out benchmarks/bench_full_preset.py,$(wildcard benchmarks/bench_*.py)); do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs
