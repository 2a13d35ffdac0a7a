"""Does a live child differ from its desired state? (pure)

Two checks, so that a resync that finds nothing to do writes nothing:

- the desired object's hash, stamped into an annotation when applied, catches
  changes in what we want, including fields we stopped setting;
- a containment check catches hand edits and deletions of fields we set. The
  API server adds defaults and other managers' fields, so live may hold more
  than desired; quantities compare by value ("0.5" is "500m").
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any

HASH_ANNOTATION = "kubeinfer.io/desired-hash"

_QUANTITY = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))([eE][+-]?\d+|[KMGTPE]i|[numkMGTPE])?$")
_SUFFIX: dict[str, Decimal | int] = {
    "": 1, "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}


def stamp(obj: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``obj`` annotated with the hash of its content."""
    digest = hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
    stamped = copy.deepcopy(obj)
    stamped["metadata"].setdefault("annotations", {})[HASH_ANNOTATION] = digest
    return stamped


def needs_apply(desired: dict[str, Any], live: dict[str, Any] | None) -> bool:
    """True unless ``live`` already is what ``desired`` (stamped) asks for."""
    if live is None:
        return True
    wanted = desired["metadata"].get("annotations", {}).get(HASH_ANNOTATION)
    have = (live.get("metadata", {}).get("annotations") or {}).get(HASH_ANNOTATION)
    return wanted != have or not contains(live, desired)


def contains(live: Any, desired: Any) -> bool:
    """Whether every field set in ``desired`` has the same value in ``live``."""
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(k in live and contains(live[k], v) for k, v in desired.items())
    if isinstance(desired, list):
        # Live may hold more items (an injected sidecar): only ours must match.
        return isinstance(live, list) and len(live) >= len(desired) and all(
            contains(lv, dv) for lv, dv in zip(live, desired, strict=False)
        )
    if isinstance(desired, str) and isinstance(live, str) and desired != live:
        return _same_quantity(desired, live)
    return bool(live == desired) and type(live) is type(desired)


def quantity(text: str) -> Decimal | None:
    """The value of a Kubernetes quantity string, or None if it is not one."""
    match = _QUANTITY.match(text)
    if not match:
        return None
    number, suffix = match.group(1), match.group(2) or ""
    try:
        if suffix[:1] in ("e", "E"):
            return Decimal(number + suffix)
        return Decimal(number) * Decimal(_SUFFIX[suffix])
    except (InvalidOperation, KeyError):
        return None


def _same_quantity(a: str, b: str) -> bool:
    qa, qb = quantity(a), quantity(b)
    return qa is not None and qa == qb
