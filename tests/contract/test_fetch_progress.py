"""The fetch step's progress lines (server) are what the operator's parser reads.

The operator reads the last line of a fetching pod's fetch log into the
LoadingModel message (``kubeinfer_operator.fetchprogress``); the server writes it
(``kubeinfer_server.fetch.progress_line``, behind the logging prefix). A change to
either side's format fails here, not on a cluster.
"""

from __future__ import annotations

import pytest

from kubeinfer_operator import fetchprogress
from kubeinfer_server.fetch import CHUNK, progress_line

PREFIX = "2026-12-02 13:00:00,000 INFO kubeinfer_server.fetch: "
URI = "s3://models/fraud/4/model.onnx"


@pytest.mark.parametrize(("copied", "total", "said"), [
    (12 * CHUNK, 48 * CHUNK, "12.0 of 48.0 MiB (25%)"),
    (CHUNK // 2, 3 * CHUNK, "0.5 of 3.0 MiB (16%)"),
    (3 * CHUNK, 3 * CHUNK, "3.0 of 3.0 MiB (100%)"),
    (1536 * CHUNK, 10240 * CHUNK, "1536.0 of 10240.0 MiB (15%)"),
    (7 * CHUNK, None, "7.0 MiB so far"),
])
def test_the_operator_reads_what_the_fetch_logs(copied, total, said):
    assert fetchprogress.parse(PREFIX + progress_line(copied, total, URI) + "\n") == said


@pytest.mark.parametrize("line", [
    "", f"{PREFIX}Fetching {URI} to /models/fraud/model.onnx (48.0 MiB)",
    f"{PREFIX}Fetched {URI} (50331648 bytes, sha256 ab12) in 3.0s",
])
def test_other_lines_say_nothing(line):
    assert fetchprogress.parse(line) is None
