"""Run the local Kubernetes cluster from the binaries hack/build-controlplane.sh built.

The control plane (``controlplane``), the kwok nodes (``nodes``) and the real node
(``node``: containerd, a kubelet, kube-proxy; its settings in ``nodeconfig``, the host's
network side in ``hostnet``, what a killed run leaves in ``leftovers``). Used by the CLI
``python -m localcluster up|down|status`` (make cluster-up/down/status), by the pytest
plugin tests/support/cluster.py, the e2e stack, the demo and the benchmarks.
See docs/local-cluster.md.
"""

from . import node
from .controlplane import COMPONENTS, Cluster, ClusterError
from .versions import bin_dir, cache_root, missing_binaries, read_versions

__all__ = ["COMPONENTS", "Cluster", "ClusterError", "bin_dir", "cache_root",
           "missing_binaries", "node", "read_versions"]
