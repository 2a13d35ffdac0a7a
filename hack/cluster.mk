# Local Kubernetes control plane (issue 3): built from Go module sources into
# ~/.cache/kubeinfer/controlplane/<versions>/bin, run from .cluster/ in the checkout.
# Versions: hack/versions.env. Docs: docs/local-cluster.md.

.PHONY: cluster-build cluster-build-adapter cluster-up cluster-down cluster-status

# Cold: many minutes (see docs/local-cluster.md); warm: a second.
cluster-build:
	@hack/build-controlplane.sh core

# prometheus-adapter, for the custom-metrics work; separate so a failure here never
# blocks the core control plane.
cluster-build-adapter:
	@hack/build-controlplane.sh adapter

cluster-up: venv cluster-build
	@$(PY) hack/cluster.py up

# The pod runner, Prometheus and the adapter (hack/e2e_stack.py) stop first.
cluster-down:
	@$(if $(wildcard $(PY)),$(PY) hack/e2e_stack.py down &&,) $(if $(wildcard $(PY)),$(PY),$(PYTHON)) hack/cluster.py down

cluster-status:
	@$(PY) hack/cluster.py status
