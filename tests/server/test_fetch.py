"""``kubeinfer-server fetch`` as the operator's init container runs it.

Covers, against a real HTTP server on 127.0.0.1 and the real console script:
- http:// with the right --sha256: DEST holds the served bytes, no temp files;
- a file larger than fsspec's block from a server without Range support;
- a wrong --sha256: non-zero exit, "sha256 mismatch" naming the URI, no DEST
  and no temporary file left beside it;
- a 404: non-zero exit naming the URI, nothing left behind;
- a local path and a file:// URI;
- a malformed --sha256: a clear error before anything is downloaded;
- KUBEINFER_FETCH_URI / _DEST / _SHA256 in place of the arguments;
- the fetched file gets the umask's permissions, not the temporary file's
  0600 (the serving container may run as another UID than the init container);
- a fetched model loads and answers in ``kubeinfer-server serve``.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import re
import stat
import threading
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from devkit.models import linear
from support.serverproc import ServerProcess, run_cli


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Path:
    """The directory the HTTP server serves: a linear model as ``model.onnx``."""
    directory = tmp_path_factory.mktemp("served")
    linear(directory / "model.onnx")
    return directory


@pytest.fixture(scope="module")
def model_sha256(served) -> str:
    return hashlib.sha256((served / "model.onnx").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def http_url(served):
    handler = functools.partial(_QuietHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(10)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest output to the test's own
        pass


def fetch(*args: str, env: dict[str, str] | None = None):
    return run_cli("fetch", "--log-level", "WARNING", *args, timeout=60, env=env)


def assert_failed_cleanly(result, dest: Path, *needles: str) -> None:
    assert result.returncode != 0
    error = result.stderr.strip().splitlines()[-1]
    for needle in needles:
        assert needle in error
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # no .fetch-* temporary file left


def test_http_with_matching_sha256(http_url, served, model_sha256, tmp_path):
    dest = tmp_path / "models" / "linear" / "model.onnx"  # parents are created
    result = fetch(f"{http_url}/model.onnx", str(dest), "--sha256", model_sha256.upper())
    assert result.returncode == 0, result.stderr
    assert dest.read_bytes() == (served / "model.onnx").read_bytes()
    assert [p.name for p in dest.parent.iterdir()] == ["model.onnx"]


def test_fetched_file_gets_the_usual_permissions(http_url, tmp_path):
    dest = tmp_path / "model.onnx"
    umask = os.umask(0o022)  # the child inherits it: what a container usually runs with
    try:
        result = fetch(f"{http_url}/model.onnx", str(dest))
    finally:
        os.umask(umask)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(dest.stat().st_mode) == 0o644  # not mkstemp's 0600


def test_http_server_without_range_support(http_url, served, tmp_path):
    # Bigger than fsspec's 5 MiB block; http.server answers every GET with the whole file.
    content = os.urandom(6 << 20)
    (served / "big.bin").write_bytes(content)
    dest = tmp_path / "big.bin"
    result = fetch(f"{http_url}/big.bin", str(dest), "--sha256", hashlib.sha256(content).hexdigest())
    assert result.returncode == 0, result.stderr
    assert dest.read_bytes() == content


@pytest.mark.parametrize("where", ["http", "local"])
def test_progress_says_how_much_of_the_total(http_url, served, tmp_path, where):
    (served / "two.bin").write_bytes(bytes(2 << 20))
    uri = f"{http_url}/two.bin" if where == "http" else str(served / "two.bin")
    result = run_cli("fetch", "--progress-seconds", "0", uri, str(tmp_path / "two.bin"), timeout=60)
    assert result.returncode == 0, result.stderr
    assert "(2.0 MiB)" in result.stderr
    # An HTTP body arrives in pieces of any size: some progress on the way, then all of it.
    assert re.search(rf"Fetched (0|1)\.\d of 2\.0 MiB \(\d\d?%\) of {re.escape(uri)}", result.stderr)
    assert f"Fetched 2.0 of 2.0 MiB (100%) of {uri}" in result.stderr


def test_wrong_sha256_leaves_nothing(http_url, tmp_path):
    uri, dest = f"{http_url}/model.onnx", tmp_path / "model.onnx"
    result = fetch(uri, str(dest), "--sha256", "0" * 64)
    assert_failed_cleanly(result, dest, "sha256 mismatch", uri)


def test_missing_url_names_the_uri(http_url, tmp_path):
    uri, dest = f"{http_url}/no-such-model.onnx", tmp_path / "model.onnx"
    assert_failed_cleanly(fetch(uri, str(dest)), dest, uri, "not found")


@pytest.mark.parametrize("as_uri", [False, True], ids=["path", "file-uri"])
def test_local_sources(served, model_sha256, tmp_path, as_uri):
    source = served / "model.onnx"
    dest = tmp_path / "model.onnx"
    result = fetch(source.as_uri() if as_uri else str(source), str(dest), "--sha256", model_sha256)
    assert result.returncode == 0, result.stderr
    assert dest.read_bytes() == source.read_bytes()


def test_malformed_sha256_is_a_clear_error(served, tmp_path):
    dest = tmp_path / "model.onnx"
    result = fetch(str(served / "model.onnx"), str(dest), "--sha256", "abc123")
    assert_failed_cleanly(result, dest, "64 hex digits", "'abc123'")


def test_environment_stands_in_for_arguments(http_url, served, model_sha256, tmp_path):
    dest = tmp_path / "model.onnx"
    env = {"KUBEINFER_FETCH_URI": f"{http_url}/model.onnx", "KUBEINFER_FETCH_DEST": str(dest),
           "KUBEINFER_FETCH_SHA256": model_sha256}
    result = fetch(env=env)
    assert result.returncode == 0, result.stderr
    assert dest.read_bytes() == (served / "model.onnx").read_bytes()

    env["KUBEINFER_FETCH_SHA256"] = "f" * 64  # the checksum from the environment is enforced too
    dest.unlink()
    assert_failed_cleanly(fetch(env=env), dest, "sha256 mismatch")


def test_fetched_model_is_served(http_url, model_sha256, tmp_path):
    dest = tmp_path / "model.onnx"
    assert fetch(f"{http_url}/model.onnx", str(dest), "--sha256", model_sha256).returncode == 0
    x = np.ones((1, 4), dtype=np.float32)
    weights = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)  # as devkit.models.linear
    with ServerProcess("--model", f"fetched={dest}") as server, grpcclient.InferenceServerClient(server.url) as client:
        tensor = grpcclient.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer("fetched", [tensor], client_timeout=20)
        np.testing.assert_allclose(result.as_numpy("logits"), x @ weights, rtol=1e-5)
