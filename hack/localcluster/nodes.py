"""The kwok nodes of the local cluster: two CPU nodes, an 8x H100 node and a 1x A10 node."""

from __future__ import annotations

GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


def kwok_node(name: str, ip: str, cpu: int, memory: str, extra_labels: dict | None = None, gpus: int = 0,
              taints: list | None = None) -> dict:
    """One kwok node (110 pods, as a kubelet's default). Node status is kept on create, as when a
    kubelet registers; kwok's node-initialize stage keeps the capacity/allocatable given here and
    adds conditions, addresses and nodeInfo."""
    resources = {"cpu": str(cpu), "memory": memory, "pods": "110", "ephemeral-storage": "500Gi"}
    if gpus:
        resources["nvidia.com/gpu"] = str(gpus)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/os": "linux",
                "kubernetes.io/hostname": name,
                "node-role.kubernetes.io/worker": "",
                **(extra_labels or {}),
            },
        },
        "spec": {"taints": taints or []},
        "status": {"capacity": resources, "allocatable": dict(resources),
                   "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]},
    }


def _gpu_labels(product: str, count: int, memory_mib: int) -> dict:
    return {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": product,
        "nvidia.com/gpu.count": str(count),
        "nvidia.com/gpu.memory": str(memory_mib),
    }


def node_manifests() -> list[dict]:
    """kwok nodes: two CPU nodes, one 8x H100 node and one 1x A10 node (labels as GPU Feature
    Discovery sets them; gpu.memory in MiB)."""
    return [
        kwok_node("kwok-cpu-0", "10.250.0.10", 16, "64Gi"),
        kwok_node("kwok-cpu-1", "10.250.0.11", 16, "64Gi"),
        kwok_node("kwok-gpu-h100-0", "10.250.0.20", 96, "1Ti",
                  _gpu_labels("NVIDIA-H100-80GB-HBM3", 8, 81559), gpus=8, taints=[GPU_TAINT]),
        kwok_node("kwok-gpu-a10-0", "10.250.0.21", 32, "128Gi",
                  _gpu_labels("NVIDIA-A10", 1, 23028), gpus=1, taints=[GPU_TAINT]),
    ]
