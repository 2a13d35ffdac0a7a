"""``kubeinfer-server fetch``: pull a model file and verify it before it is used.

Any fsspec URL works (local paths, file://, http(s)://, s3:// with the s3
extra). The bytes go to a temporary file beside the destination, which is
renamed into place only once the checksum matches, so a half-written or wrong
file is never seen at ``dest``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class FetchError(Exception):
    """The model could not be fetched or did not verify; the message names the URI."""


def fetch(uri: str, dest: str, sha256: str | None = None, progress_every_s: float = 5.0) -> str:
    """Download ``uri`` to ``dest``; returns the file's sha256."""
    import fsspec

    want = sha256.lower().strip() if sha256 else None
    if want is not None and (len(want) != 64 or any(c not in "0123456789abcdef" for c in want)):
        raise FetchError(f"--sha256 must be 64 hex digits, got {sha256!r}")
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".fetch-", dir=os.path.dirname(os.path.abspath(dest)))
    digest = hashlib.sha256()
    copied, started, last_report = 0, time.monotonic(), time.monotonic()
    try:
        with os.fdopen(fd, "wb") as out, fsspec.open(uri, "rb", **_open_options(uri)) as src:
            log.info("Fetching %s to %s", uri, dest)
            while chunk := src.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                copied += len(chunk)
                if time.monotonic() - last_report >= progress_every_s:
                    last_report = time.monotonic()
                    log.info("Fetched %.1f MiB of %s", copied / CHUNK, uri)
        got = digest.hexdigest()
        if want is not None and got != want:
            raise FetchError(f"{uri}: sha256 mismatch: expected {want}, got {got}")
        os.chmod(tmp, _created_file_mode())
        os.replace(tmp, dest)
    except FetchError:
        _remove(tmp)
        raise
    except FileNotFoundError as exc:
        _remove(tmp)
        raise FetchError(f"{uri}: not found ({exc})") from exc
    except Exception as exc:
        _remove(tmp)
        raise FetchError(f"{uri}: could not fetch: {type(exc).__name__}: {exc}") from exc
    log.info("Fetched %s (%d bytes, sha256 %s) in %.1fs", uri, copied, got, time.monotonic() - started)
    return got


def _open_options(uri: str) -> dict:
    """http(s): stream the body in one GET. fsspec's default random-access file asks for
    5 MiB Range requests and fails on servers that do not support Range."""
    import fsspec.core

    return {"block_size": 0} if fsspec.core.split_protocol(uri)[0] in ("http", "https") else {}


def _created_file_mode() -> int:
    """What ``open(dest, "w")`` would have given: mkstemp's 0600 would hide the model from
    a serving container that runs as another user than the init container."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
