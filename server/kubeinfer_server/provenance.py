"""What a served model file is: its sha256, and how ``kubeinfer-server optimize`` made it.

``optimize`` leaves a record beside each model it writes (``record_path``:
MODEL_OUT + ``.optimization.json``, JSON with the method, the file's sha256
and its source's). The server reads it once, at load (``of_file``), and
believes it only when the sha256 it names is the one of the file it loaded:
a record left beside a file that was since replaced (a fresh fetch over an
optimized model, a candidate rejected in place) says nothing. Without a
record that matches, the method is ``none``: the server did not see the file
optimized (a model optimized elsewhere and uploaded is known by its sha256).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from kubeinfer_server.fetch import file_sha256

log = logging.getLogger(__name__)

RECORD_SUFFIX = ".optimization.json"
NOT_OPTIMIZED = "none"
UNKNOWN_SHA256 = "unknown"  # a model read from something that is not a file (a pipe): it cannot be read twice


@dataclass(frozen=True, slots=True)
class Provenance:
    sha256: str
    optimization_method: str = NOT_OPTIMIZED


def record_path(model_path: str) -> str:
    return model_path + RECORD_SUFFIX


def write_record(model_path: str, method: str, sha256: str, source_sha256: str) -> None:
    """The record of ``model_path``, written whole (a temporary file beside it, then a rename)."""
    target = Path(record_path(model_path))
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps({"method": method, "sha256": sha256, "source_sha256": source_sha256}) + "\n")
    os.replace(temporary, target)


def of_file(path: str) -> Provenance:
    """The sha256 of the file at ``path`` and the method its record names (OSError when it cannot be read)."""
    if not os.path.isfile(path):
        log.warning("Did not compute the sha256 of %s: not a regular file (it was read once, to load it)", path)
        return Provenance(UNKNOWN_SHA256)
    sha256 = file_sha256(path)
    return Provenance(sha256, _recorded_method(path, sha256))


def _recorded_method(path: str, sha256: str) -> str:
    try:
        record = json.loads(Path(record_path(path)).read_text())
    except FileNotFoundError:
        return NOT_OPTIMIZED
    except (OSError, ValueError) as exc:
        log.warning("Ignored the optimization record of %s: %s", path, exc)
        return NOT_OPTIMIZED
    method = record.get("method") if isinstance(record, dict) else None
    if not isinstance(method, str) or not method or record.get("sha256") != sha256:
        log.warning("Ignored the optimization record of %s: it describes another file", path)
        return NOT_OPTIMIZED
    return method
