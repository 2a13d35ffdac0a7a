"""The HorizontalPodAutoscaler and the PodDisruptionBudget of one InferenceDeployment (pure)."""

from __future__ import annotations

from typing import Any

from kubeinfer_operator import naming
from kubeinfer_operator.builders.meta import child_metadata
from kubeinfer_operator.spec import InferenceSpec


def build_hpa(spec: InferenceSpec, owner: dict[str, Any], target: str | None = None) -> dict[str, Any] | None:
    """An autoscaling/v2 HPA of the ``target`` Deployment (the stable one; by default ``NAME``) on the per-pod
    average of kubeinfer_queue_depth, or None."""
    scaling = spec.autoscaling
    if scaling is None:
        return None
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": child_metadata(spec, naming.hpa_name(spec.name), owner),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1", "kind": "Deployment", "name": target or naming.deployment_name(spec.name),
            },
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": naming.QUEUE_DEPTH_METRIC},
                        "target": {"type": "AverageValue", "averageValue": str(scaling.target_queue_depth)},
                    },
                }
            ],
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": scaling.scale_up_stabilization_seconds},
                "scaleDown": {"stabilizationWindowSeconds": scaling.scale_down_stabilization_seconds},
            },
        },
    }


def build_pdb(spec: InferenceSpec, owner: dict[str, Any]) -> dict[str, Any] | None:
    """A PDB allowing one voluntary disruption at a time, when there can be more than one pod."""
    if spec.max_pods <= 1:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": child_metadata(spec, naming.pdb_name(spec.name), owner),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": naming.selector_labels(spec.name)},
        },
    }
