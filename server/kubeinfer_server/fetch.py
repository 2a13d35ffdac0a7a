"""``kubeinfer-server fetch``: pull a model file and verify it before it is used.

Any fsspec URL works (local paths, file://, http(s)://, and the other fsspec
schemes), and s3:// with the s3 extra. The bytes go to a temporary file beside
the destination, which is renamed into place only once the checksum matches,
so a half-written or wrong file is never seen at ``dest``.

s3:// is one streaming GET through botocore, with the credentials, region and
endpoint from the environment as every AWS SDK reads them (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL``, a web
identity token, ...). Not s3fs's file: it asks HEAD first, and a HEAD error has no
body, so a wrong secret would read as a bare 403 instead of the store's own
``SignatureDoesNotMatch``. Every failure is a ``FetchError`` whose one-line
message names the URI and, from an object store, its error code and message.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from typing import IO

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class FetchError(Exception):
    """The model could not be fetched or did not verify; the message names the URI."""


def file_sha256(path: str) -> str:
    """The sha256 of a local file, read in chunks (OSError when it cannot be read)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def is_remote(path: str) -> bool:
    """True when ``path`` is a URI to fetch first (s3://, http(s)://, ...), not a local
    path or a file:// URI."""
    scheme, sep, _ = path.partition("://")
    return bool(sep) and scheme.lower() != "file"


def fetch(uri: str, dest: str, sha256: str | None = None, progress_every_s: float = 5.0) -> str:
    """Download ``uri`` to ``dest``; returns the file's sha256."""
    want = sha256.lower().strip() if sha256 else None
    if want is not None and (len(want) != 64 or any(c not in "0123456789abcdef" for c in want)):
        raise FetchError(f"--sha256 must be 64 hex digits, got {sha256!r}")
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".fetch-", dir=os.path.dirname(os.path.abspath(dest)))
    digest = hashlib.sha256()
    copied, started, last_report = 0, time.monotonic(), time.monotonic()
    try:
        with os.fdopen(fd, "wb") as out, _source(uri) as (src, total):
            log.info("Fetching %s to %s%s", uri, dest, f" ({total / CHUNK:.1f} MiB)" if total is not None else "")
            while chunk := src.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                copied += len(chunk)
                if time.monotonic() - last_report >= progress_every_s:
                    last_report = time.monotonic()
                    log.info("%s", progress_line(copied, total, uri))
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
        store_error = _store_error(exc)
        if store_error is not None:
            raise FetchError(f"{uri}: {store_error}") from exc
        raise FetchError(f"{uri}: could not fetch: {type(exc).__name__}: {exc}") from exc
    log.info("Fetched %s (%d bytes, sha256 %s) in %.1fs", uri, copied, got, time.monotonic() - started)
    return got


def progress_line(copied: int, total: int | None, uri: str) -> str:
    """The progress the fetch logs every few seconds; the operator reads the last one into
    the LoadingModel message (its parser is held to this format by a contract test)."""
    if total:
        return f"Fetched {copied / CHUNK:.1f} of {total / CHUNK:.1f} MiB ({100 * copied // total}%) of {uri}"
    return f"Fetched {copied / CHUNK:.1f} MiB of {uri}"


def _size(src: object) -> int | None:
    """An fsspec file's length when it is known before reading: a local file's size, an HTTP
    server's Content-Length; None otherwise."""
    size = getattr(src, "size", None)
    if isinstance(size, int):
        return size
    # fsspec's streaming HTTP file (no Range, see _open_options) keeps its aiohttp response as ``r``.
    length = getattr(getattr(src, "r", None), "content_length", None)
    if isinstance(length, int):
        return length
    with contextlib.suppress(AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return os.fstat(src.fileno()).st_size  # type: ignore[attr-defined]
    return None


def _source(uri: str) -> contextlib.AbstractContextManager[tuple[IO[bytes], int | None]]:
    """The open source of ``uri`` and its length in bytes (None when unknown)."""
    return _s3_object(uri) if uri.startswith("s3://") else _fsspec_file(uri)


@contextlib.contextmanager
def _fsspec_file(uri: str) -> Iterator[tuple[IO[bytes], int | None]]:
    import fsspec

    with fsspec.open(uri, "rb", **_open_options(uri)) as src:
        yield src, _size(src)


@contextlib.contextmanager
def _s3_object(uri: str) -> Iterator[tuple[IO[bytes], int | None]]:
    """The body of one GET of ``s3://BUCKET/KEY``, streamed. With an endpoint of its own
    (an S3-compatible store), path-style requests: ``BUCKET.host`` rarely resolves there."""
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket or not key:
        raise FetchError(f"{uri}: an s3 URI is s3://BUCKET/KEY")
    try:
        import botocore.session
        from botocore.config import Config
    except ImportError:
        raise FetchError(f"{uri}: s3:// needs the s3 extra (pip install 'kubeinfer[s3]')") from None
    own_endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    config = Config(s3={"addressing_style": "path"}) if own_endpoint else None
    client = botocore.session.get_session().create_client("s3", config=config)
    try:
        response = client.get_object(Bucket=bucket, Key=key)
        body = response["Body"]
        try:
            yield body, response.get("ContentLength")
        finally:
            body.close()
    finally:
        client.close()


def _store_error(exc: BaseException) -> str | None:
    """An object store's answer (botocore's ClientError, also under s3fs's translated
    errors), as ``CODE: message (HTTP status)`` on one line; None for any other error."""
    cause: BaseException | None = exc
    for _ in range(10):  # a chain is short; the bound only guards against a cycle
        if cause is None:
            break
        response = getattr(cause, "response", None)
        if isinstance(response, dict) and isinstance(response.get("Error"), dict):
            error = response["Error"]
            code, message = error.get("Code", "?"), " ".join(str(error.get("Message", "")).split())
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
            found = "not found: " if code in ("NoSuchKey", "NoSuchBucket", "404") else ""
            return f"{found}{code}: {message or 'no message'} (HTTP {status})"
        cause = cause.__cause__ or cause.__context__
    return None


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
