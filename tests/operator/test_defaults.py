"""The operator's defaults against the CRD's: one set of values, each written once in defaults.py.

Covers: every ``default:`` the CRD schema declares under spec equals
``defaults.DEFAULTS`` at that path (an object's default, such as ``tls: {mode:
Server}``, field by field); every operator default is in the CRD too, except
``replicas`` (the CRD must leave it unset beside autoscaling); the bounds in
``defaults.INTEGER_FIELDS`` are the CRD's minimum and maximum, and every integer
field the CRD has is there; ``parse`` applies each default to a spec that leaves
the field out.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubeinfer_operator.defaults import DEFAULTS, INTEGER_FIELDS

CRD = Path(__file__).resolve().parents[2] / "crds" / "kubeinfer.io_inferencedeployments.yaml"
OPERATOR_ONLY = {"replicas"}  # a CRD default would clash with spec.autoscaling (they must not both be set)
KUBERNETES_INTEGERS = {"tolerations.tolerationSeconds"}  # a Kubernetes type's field, bounded by Kubernetes
ITEM_DEFAULTS = {"rollout.steps.pauseSeconds"}  # a field of each list item: parsed per item


def _spec_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def _fields(schema: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(path under spec, schema) of every field; list items as PATH[], their fields as PATH.FIELD."""
    for name, child in (schema.get("properties") or {}).items():
        child_path = f"{path.removesuffix('[]')}.{name}" if path else name
        yield child_path, child
        yield from _fields(child, child_path)
    if "items" in schema:
        yield f"{path}[]", schema["items"]
        yield from _fields(schema["items"], f"{path}[]")


def _crd_defaults() -> dict[str, list[Any]]:
    """Every default the CRD declares, by path; an object's default counts for each of its fields."""
    found: dict[str, list[Any]] = {}
    for path, schema in _fields(_spec_schema()):
        if "default" not in schema:
            continue
        default = schema["default"]
        if path not in DEFAULTS and isinstance(default, dict) and "properties" in schema:
            for key, value in default.items():
                found.setdefault(f"{path}.{key}", []).append(value)
        else:
            found.setdefault(path, []).append(default)
    return found


def _as_json(value: Any) -> Any:
    """``value`` as YAML would load it: tuples as lists, mappings as dicts."""
    if isinstance(value, Mapping):
        return {k: _as_json(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_as_json(v) for v in value]
    return value


def test_every_crd_default_is_the_operators():
    wrong = {
        path: {"crd": values, "operator": _as_json(DEFAULTS.get(path, "<none>"))}
        for path, values in _crd_defaults().items()
        if any(v != _as_json(DEFAULTS.get(path)) for v in values)
    }
    assert wrong == {}


def test_every_operator_default_is_in_the_crd():
    assert set(DEFAULTS) - set(_crd_defaults()) == OPERATOR_ONLY


def test_integer_bounds_are_the_crds():
    schemas = dict(_fields(_spec_schema()))
    crd_integers = {p for p, s in schemas.items()
                    if s.get("type") == "integer" and "[]" not in p and p not in KUBERNETES_INTEGERS}
    assert set(INTEGER_FIELDS) == crd_integers
    bounds = {p: (f.low, f.high) for p, f in INTEGER_FIELDS.items()}
    assert bounds == {p: (schemas[p]["minimum"], schemas[p]["maximum"]) for p in crd_integers}


def _attribute(spec: Any, path: str) -> Any:
    for part in path.split("."):
        spec = getattr(spec, re.sub(r"([A-Z])", r"_\1", part).lower())
    return spec


@pytest.mark.parametrize("path", sorted(set(DEFAULTS) - OPERATOR_ONLY - ITEM_DEFAULTS - {"autoscaling.engine"}))
def test_parse_applies_each_default(make_spec, path):
    # gpu, autoscaling and optimization are absent by default: name them with only what they require.
    rows = {"uri": "s3://data/rows.parquet"}
    spec = make_spec(gpu={"count": 1}, autoscaling={"maxReplicas": 3},
                     optimization={"method": "Static", "calibration": rows, "validation": rows})
    assert _as_json(_attribute(spec, path)) == _as_json(DEFAULTS[path])


def test_parse_applies_the_defaults_of_list_items(make_spec):
    steps = make_spec(rollout={"strategy": "Canary", "steps": [{"weight": 10}]}).rollout.steps
    assert steps[0].pause_seconds == DEFAULTS["rollout.steps.pauseSeconds"]


def test_parse_applies_the_operator_only_and_check_only_defaults(make_spec):
    assert make_spec().desired_replicas == DEFAULTS["replicas"]
    assert make_spec(autoscaling={"maxReplicas": 3}).autoscaling is not None  # engine left out: the default
