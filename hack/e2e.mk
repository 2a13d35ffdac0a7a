# End to end on the local cluster (issues 6 and 12): pods run by the real node from the
# built images, Prometheus + prometheus-adapter (hack/monitoring) and the model store brought
# up by hack/e2ekit (python -m e2ekit), the demo. Docs: README, "End to end on the local cluster".
# Included by the top-level Makefile after hack/cluster.mk.

.PHONY: e2e-deps e2e-up e2e-down test-e2e demo-cluster

# Debian's Prometheus (a binary, no service started) and the adapter built from the
# Go module proxy into the control-plane cache. Root is needed (apt, the node's containers).
e2e-deps: cluster-build cluster-build-adapter images
	@test -x /usr/bin/prometheus || { echo "Installing Debian's prometheus package"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }

# Prometheus, the adapter and the model store, on top of cluster-up.
e2e-up: venv e2e-deps cluster-up
	@$(PY) -m e2ekit up

e2e-down:
	@$(if $(wildcard $(PY)),$(PY) -m e2ekit down,true)

# The e2e group alone (make test runs it too).
test-e2e: venv e2e-deps
	$(PY) -m pytest -m e2e tests/e2e $(PYTEST_ARGS)

# The full flow on the local cluster (the README's first command: make demo).
demo-cluster: venv e2e-deps
	@$(PY) examples/cluster_demo.py
