"""Secret and ConfigMap volumes on disk, laid out as the kubelet's AtomicWriter does.

The payload lives in a timestamped ``..<stamp>`` directory, ``..data`` is a symlink to
it, and each visible top-level entry (``tls.crt``) is a symlink to ``..data/<entry>``.
An update writes a new timestamped directory, points a ``..data_tmp`` symlink at it,
renames that over ``..data`` (one atomic step, so a reader sees all old or all new
files) and removes the old directory. That is how a renewed certificate reaches a
running server; the server's TLS tests write it here (the real node's kubelet does the same in pods).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

DATA = "..data"


def write_atomic(target: Path, files: Mapping[str, tuple[bytes, int]]) -> None:
    """Write ``files`` (relative path -> (content, mode)) as the new contents of ``target``."""
    stamp = target / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.time_ns() % 10**9}"
    stamp.mkdir()
    for rel, (content, mode) in files.items():
        path = stamp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        os.chmod(path, mode)
    data = target / DATA
    old = os.readlink(data) if data.is_symlink() else None
    tmp = target / "..data_tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(stamp.name)
    os.replace(tmp, data)
    tops = {rel.split("/")[0] for rel in files}
    for top in tops:
        link = target / top
        if not link.is_symlink():
            link.symlink_to(f"{DATA}/{top}")
    for entry in target.iterdir():
        if entry.is_symlink() and not entry.name.startswith("..") and entry.name not in tops:
            entry.unlink()
    if old and old != stamp.name:
        shutil.rmtree(target / old, ignore_errors=True)


def write_secret_volume(directory: Path | str, files: Mapping[str, bytes], mode: int = 0o644) -> Path:
    """Lay out ``files`` (name -> content) in ``directory`` like a freshly mounted Secret volume."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_atomic(directory, {name: (content, mode) for name, content in files.items()})
    return directory


def rotate_secret_volume(directory: Path | str, files: Mapping[str, bytes], mode: int = 0o644) -> None:
    """Swap in new contents in one atomic rename, as the kubelet does when the Secret changes."""
    write_secret_volume(directory, files, mode)
