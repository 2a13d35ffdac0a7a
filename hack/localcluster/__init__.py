"""Run a local Kubernetes control plane from the binaries hack/build-controlplane.sh built.

Used by the CLI ``python -m localcluster up|down|status`` (make cluster-up/down/status),
by the pytest plugin tests/support/cluster.py, the e2e stack, the demo and the benchmarks.
See docs/local-cluster.md.
"""

from .controlplane import COMPONENTS, Cluster, ClusterError
from .versions import bin_dir, cache_root, missing_binaries, read_versions

__all__ = ["COMPONENTS", "Cluster", "ClusterError", "bin_dir", "cache_root",
           "missing_binaries", "read_versions"]
