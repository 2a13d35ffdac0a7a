"""Pure builders: a typed spec in, the whole desired set of child objects out.

No I/O and no Kubernetes client: every object is a plain dict, ready for
server-side apply, carrying the standard labels and a controller owner
reference to its InferenceDeployment.
"""

from __future__ import annotations

from typing import Any

from kubeinfer_operator.builders.deployment import build_deployment
from kubeinfer_operator.builders.scaling import build_hpa, build_pdb
from kubeinfer_operator.builders.services import build_headless_service, build_service
from kubeinfer_operator.builders.tls_secrets import build_tls_objects
from kubeinfer_operator.certificate_plan import TlsMaterial
from kubeinfer_operator.spec import InferenceSpec


def desired_children(
    spec: InferenceSpec, material: TlsMaterial | None, owner: dict[str, Any],
    deployments: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Every child ``spec`` needs, in apply order; anything else of ours is to be pruned. ``deployments``:
    the server Deployments, the stable one first (a rollout's; by default the spec's one)."""
    deployments = deployments or [build_deployment(spec, owner)]
    candidates = [
        *build_tls_objects(spec, material, owner),
        build_service(spec, owner),
        build_headless_service(spec, owner),
        *deployments,
        build_hpa(spec, owner, deployments[0]["metadata"]["name"]),
        build_pdb(spec, owner),
    ]
    return [c for c in candidates if c is not None]


__all__ = ["desired_children"]
