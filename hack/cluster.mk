# Local Kubernetes cluster (issues 3 and 12): the control plane and the real node's kubelet,
# kube-proxy and containerd, built from Go module sources into
# ~/.cache/kubeinfer/controlplane/<versions>/bin, run from .cluster/ in the checkout by the
# dev package hack/localcluster (python -m localcluster; installed by make venv). The node's
# images come from hack/images.mk. Versions: hack/versions.env. Docs: docs/local-cluster.md.

.PHONY: cluster-build cluster-build-adapter cluster-up cluster-down cluster-status node-deps s3-build

# Cold: many minutes (see docs/local-cluster.md); warm: a second.
cluster-build: node-deps s3-build
	@hack/build-controlplane.sh core
	@hack/build-controlplane.sh node

# Debian's runc, CNI plugins, iptables, conntrack and iproute2 for the real node.
NODE_TOOLS := /usr/sbin/runc /usr/lib/cni/bridge /usr/lib/cni/host-local /usr/lib/cni/portmap \
  /usr/lib/cni/loopback /usr/sbin/iptables /usr/sbin/conntrack /usr/bin/ip
node-deps:
	@for tool in $(NODE_TOOLS); do test -x $$tool || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian's runc, containernetworking-plugins, iptables, conntrack, iproute2"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    runc containernetworking-plugins iptables conntrack iproute2; fi

# SeaweedFS's weed, the S3 server of the tests (hack/build-seaweedfs.sh, devkit.s3server):
# cold 3-10 minutes, warm a second; into ~/.cache/kubeinfer/seaweedfs/<version>/.
s3-build:
	@hack/build-seaweedfs.sh

# prometheus-adapter, for the custom-metrics work; separate so a failure here never
# blocks the core control plane.
cluster-build-adapter:
	@hack/build-controlplane.sh adapter

cluster-up: venv cluster-build images
	@$(PY) -m localcluster up

# Prometheus, the adapter and the model store (python -m e2ekit down) stop first. Without the
# venv, the system Python runs localcluster from hack/ (its down needs nothing but the stdlib);
# the control plane goes down even when the e2e stack could not be reached (a venv from before
# the dev package).
cluster-down:
	@$(if $(wildcard $(PY)),$(PY) -m e2ekit down; $(PY) -m localcluster down,cd hack && $(PYTHON) -m localcluster down)

cluster-status:
	@$(PY) -m localcluster status
