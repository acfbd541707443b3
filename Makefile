# Two commands on a fresh machine: `make demo` (set up, then train a sharded DLRM on 2 CPU ranks)
# and `make test`. Both create .venv/ first if needed; a second run skips the install.
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup demo test bench-smoke clean

setup:
	@bash scripts/setup.sh

demo: setup
	rm -rf runs/demo
	$(PY) -m torchrec_models train --config configs/tiny.toml --nproc-per-node 2 --run-dir runs/demo

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf runs .pytest_cache
