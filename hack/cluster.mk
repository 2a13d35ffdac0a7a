# Local Kubernetes control plane (issue 3): built from Go module sources into
# ~/.cache/kubeinfer/controlplane/<versions>/bin, run from .cluster/ in the checkout by the
# dev package hack/localcluster (python -m localcluster; installed by make venv).
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
	@$(PY) -m localcluster up

# The pod runner, Prometheus and the adapter (python -m e2ekit down) stop first. Without the
# venv, the system Python runs localcluster from hack/ (its down needs nothing but the stdlib);
# the control plane goes down even when the e2e stack could not be reached (a venv from before
# the dev package).
cluster-down:
	@$(if $(wildcard $(PY)),$(PY) -m e2ekit down; $(PY) -m localcluster down,cd hack && $(PYTHON) -m localcluster down)

cluster-status:
	@$(PY) -m localcluster status
