# Every target sets up its own virtual environment, so a fresh clone needs
# nothing but python3 (>= 3.11).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SEEDS ?= 20000
SEED ?=
NODES ?= 5
DURATION ?= 600

.PHONY: test browser etcdctl lint run sim-demo sim replay chaos compare clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP) browser etcdctl
	$(BIN)/python -m pytest -n 2 tests

# The dashboard's test drives the system's Chromium (never a downloaded browser).
# As root, install Debian's package when it is missing; elsewhere the test skips
# and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
	  apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } || \
	  echo "could not install chromium: the dashboard's browser test will be skipped"

# The etcd API's tests drive etcd's own command line (etcdctl 3.4, unmodified). As root,
# install Debian's package when it is missing; elsewhere those tests skip and say why.
etcdctl:
	@command -v etcdctl >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
	  apt-get install -y -q etcd-client >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q etcd-client >/dev/null 2>&1; } || \
	  echo "could not install etcd-client: the etcdctl tests will be skipped"

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy --strict src

# A local 3-node cluster of real `quorumkv serve` processes (client ports
# 7101-7103, data under ./data, kept across restarts); Ctrl-C stops it.
# make run SECURE=1: TLS on every port, certificates of a dev CA in ./data/certs.
run: $(STAMP)
	$(BIN)/python -m quorumkv.devcluster$(if $(SECURE), --secure,)

# The deterministic simulator on a faulty cluster, with a readable timeline.
sim-demo: $(STAMP)
	$(BIN)/python -m quorumkv.sim demo --nodes $(NODES) $(if $(SEED),--seed $(SEED),)

# Long soak of the simulator: make sim SEEDS=20000
sim: $(STAMP)
	$(BIN)/python -m quorumkv.sim soak --seeds $(SEEDS) --jobs 2

# Replay one seed exactly: make replay SEED=1234 NODES=3
replay: $(STAMP)
	$(BIN)/python -m quorumkv.sim run --seed $(SEED) --nodes $(NODES) --verbose

# Faults on real processes, 3 then 5 nodes, DURATION seconds each:
# make chaos DURATION=600 SEED=7 (a failing run keeps its evidence and prints where)
chaos: $(STAMP)
	$(BIN)/python tests/chaos/runner.py --nodes 3,5 --duration $(DURATION) $(if $(SEED),--seed $(SEED),)

# quorumkv beside etcd and PySyncObj, 3-member clusters on this machine, one table into
# docs/performance.md. Installs Debian's etcd-server (as root) and the other systems'
# Python packages into bench/compare/.venv-peers. DURATION is per measurement (10 s
# unless given here): make compare DURATION=10 [CONCURRENCY=1,16,64]
# [WORKLOADS=put,get,get-one] [SYSTEMS=quorumkv,etcd,pysyncobj] [PROCS=2]
compare: $(STAMP)
	$(BIN)/python -m bench.compare \
	  $(if $(filter command line environment,$(origin DURATION)),--duration $(DURATION),) \
	  $(if $(CONCURRENCY),--concurrency $(CONCURRENCY),) $(if $(WORKLOADS),--workloads $(WORKLOADS),) \
	  $(if $(SYSTEMS),--systems $(SYSTEMS),) $(if $(PROCS),--procs $(PROCS),)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
