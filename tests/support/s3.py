"""pytest plugin: a real S3-compatible object store, SeaweedFS (``devkit.s3server``).

Fixture:
  s3_server  (session) a started ``S3Server`` on loopback: ``create_bucket(name)``
             (private), ``put(bucket, key, data)``, ``url(bucket, key)``, and ``env()``,
             the variables a client needs (keys, endpoint, region); stopped at the end.

weed not built (``make s3-build``) or botocore not installed (the ``s3`` extra, ``make
venv``): the tests that use it skip and say which, or fail under CI=true. When such a
test fails, the tail of weed's log is in its report.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator

import pytest

from devkit.s3server import S3Server, weed_binary
from support.reports import on_failure
from support.required import missing


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    weed = weed_binary()
    if not os.access(weed, os.X_OK):
        missing(f"SeaweedFS's weed is not built ({weed}): run make s3-build")
    if importlib.util.find_spec("botocore") is None:
        missing("botocore is not installed (the s3 extra): run make venv")
    with S3Server(weed) as server:
        yield server


@on_failure("s3_server")
def _weed_log(server: S3Server) -> list[tuple[str, str]]:
    return [("weed log (tail)", server.log_tail(60))] if isinstance(server, S3Server) else []
