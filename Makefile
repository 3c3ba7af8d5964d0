# The two commands of a fresh machine are `make demo` and `make test`.
# Both create .venv and install what they need; nothing is assumed installed.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
# Extra arguments for bench/run.py, e.g. `make bench BENCH_ARGS="--quick --only ssh"`.
BENCH_ARGS ?=

.PHONY: demo cluster-demo test lint typecheck unit bench system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Debian packages that tests and benchmarks start for real (proxies, sshd,
# PostgreSQL, Chromium, nftables). Installed only when missing and only as root;
# without root the tests that need them skip and say why.
system-deps:
	@bash scripts/system-deps.sh

demo: $(STAMP)
	$(PY) -m qanat.demo

# Several gateway nodes on this machine: NATS, PostgreSQL, HAProxy, a portal,
# three nodes; a connector on one node, an app on another (docs/cluster.md).
cluster-demo: $(STAMP) system-deps
	$(PY) scripts/cluster_demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench scripts
	$(VENV)/bin/ruff format --check src tests bench scripts

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: $(STAMP) system-deps lint typecheck
	$(VENV)/bin/pytest -q

# The bench extras (aiohttp for bench/wslib.py) are installed on top of dev.
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) system-deps
	$(PY) bench/run.py $(BENCH_ARGS)
	$(PY) bench/failover.py
	$(PY) bench/bindstall.py
	$(PY) bench/cluster.py $(filter --quick,$(BENCH_ARGS))

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
