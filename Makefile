# kubeinfer: the two commands that matter are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# The product and the dev tooling (hack/pyproject.toml, kubeinfer-dev): a change to either reinstalls.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml hack/pyproject.toml | sha256sum | cut -c1-12)

.PHONY: venv test test-fast demo demo-server proto lint clean bench bench-rest bench-batch bench-optimize bench-tune perf-analyzer chart-lint

venv: $(STAMP)

$(STAMP): pyproject.toml hack/pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[cpu,test,operator,s3]' -e hack/
	@touch $@

# Regenerates the protocol descriptor set from the .proto sources.
proto: venv
	$(PY) -m grpc_tools.protoc -I server/kubeinfer_server/protocol \
	  --include_imports --descriptor_set_out=server/kubeinfer_server/protocol/inference.binpb \
	  server/kubeinfer_server/protocol/grpc_service.proto

# ruff (pyflakes, pycodestyle, isort, pyupgrade, bugbear), mypy (strict on the pure modules)
# and the import-linter layering contracts; all configured in pyproject.toml.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

include hack/cluster.mk
include hack/e2e.mk
include hack/images.mk

# The whole suite: unit, server, cluster, operator, chart and end-to-end (builds the control
# plane and the metrics adapter into ~/.cache/kubeinfer on first use; installs Prometheus).
test: venv cluster-build e2e-deps perf-analyzer lint
	$(PY) -m pytest $(PYTEST_ARGS)
	$(PY) -m pytest -m lifecycle tests/lifecycle $(PYTEST_ARGS)

# Everything that needs no cluster.
test-fast: venv
	$(PY) -m pytest -m "not cluster and not e2e" $(PYTEST_ARGS)

chart-lint: cluster-build
	$$(hack/build-controlplane.sh bin-dir)/helm lint --strict charts/kubeinfer

# The full flow on the local cluster (see README): cluster, helm install, a model served over mTLS, autoscaling.
demo: demo-cluster

# The model server alone: serve a sample model, call it, show batching and metrics.
demo-server: venv
	$(PY) examples/demo.py

perf-analyzer:
	bench/install_perf_analyzer.sh

bench: venv perf-analyzer
	$(PY) bench/server_bench.py

bench-rest: venv perf-analyzer
	$(PY) bench/rest_bench.py --models mlp,linear --rounds 2

bench-batch: venv
	$(PY) bench/batch_bench.py --models mlp,cnn --rounds 2

bench-optimize: venv
	$(PY) bench/optimize_bench.py --models mlp,cnn,classifier

bench-tune: venv perf-analyzer
	$(PY) bench/tune_bench.py --models mlp,cnn

clean:
	rm -rf $(VENV) build *.egg-info hack/*.egg-info
