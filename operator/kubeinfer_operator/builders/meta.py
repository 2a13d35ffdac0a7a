"""The metadata every child object carries: its name, the parent's namespace, the
standard labels (plus any extra), and the controller owner reference."""

from __future__ import annotations

from typing import Any

from kubeinfer_operator import naming
from kubeinfer_operator.spec import InferenceSpec


def child_metadata(spec: InferenceSpec, name: str, owner: dict[str, Any], **labels: str) -> dict[str, Any]:
    return {"name": name, "namespace": spec.namespace, "labels": naming.labels(spec.name, **labels),
            "ownerReferences": [owner]}
