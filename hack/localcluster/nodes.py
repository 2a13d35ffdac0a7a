"""The kwok nodes of the local cluster: two CPU nodes, an 8x H100 node and a 1x A10 node."""

from __future__ import annotations

GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


def node_manifests() -> list[dict]:
    """kwok nodes: two CPU nodes, one 8x H100 node and one 1x A10 node.

    Labels follow GPU Feature Discovery (gpu.memory in MiB). Node status is kept on
    create, as when a kubelet registers; kwok's node-initialize stage keeps the
    capacity/allocatable given here and adds conditions, addresses and nodeInfo.
    """
    def node(name, ip, cpu, memory, extra_labels=None, gpus=0, taints=None):
        resources = {"cpu": str(cpu), "memory": memory, "pods": "110",
                     "ephemeral-storage": "500Gi"}
        if gpus:
            resources["nvidia.com/gpu"] = str(gpus)
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {"kwok.x-k8s.io/node": "fake",
                                "node.alpha.kubernetes.io/ttl": "0"},
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
                       "addresses": [{"type": "InternalIP", "address": ip},
                                     {"type": "Hostname", "address": name}]},
        }

    def gpu_labels(product, count, memory_mib):
        return {
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": product,
            "nvidia.com/gpu.count": str(count),
            "nvidia.com/gpu.memory": str(memory_mib),
        }

    return [
        node("kwok-cpu-0", "10.250.0.10", 16, "64Gi"),
        node("kwok-cpu-1", "10.250.0.11", 16, "64Gi"),
        node("kwok-gpu-h100-0", "10.250.0.20", 96, "1Ti",
             gpu_labels("NVIDIA-H100-80GB-HBM3", 8, 81559), gpus=8, taints=[GPU_TAINT]),
        node("kwok-gpu-a10-0", "10.250.0.21", 32, "128Gi",
             gpu_labels("NVIDIA-A10", 1, 23028), gpus=1, taints=[GPU_TAINT]),
    ]
