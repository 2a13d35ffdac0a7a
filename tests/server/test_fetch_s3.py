"""``s3://`` model URIs with credentials, against a real S3-compatible store.

Covers, against SeaweedFS on 127.0.0.1 (``support.s3``: one identity, so a private
bucket) and the real console script, with the keys, endpoint and region only in the
environment:
- the bucket is private: an unsigned GET is refused;
- ``fetch`` with the right keys: DEST holds the stored bytes (and a matching --sha256);
- a wrong secret, an unknown access key, a missing object, a missing bucket: exit 1, one
  error line naming the URI and the store's own error code (SignatureDoesNotMatch,
  InvalidAccessKeyId, NoSuchKey, NoSuchBucket), no traceback, nothing left beside DEST;
- a wrong --sha256: "sha256 mismatch", nothing left;
- ``serve --model m=s3://...``: the model is fetched at startup, answers a tritonclient
  inference, and its temporary copy is gone once loaded;
- ``serve`` with a model that is not in the bucket: exit 1, one "Could not start" line
  naming the model, the URI and NoSuchKey; with an object that is not ONNX: the same,
  naming the URI rather than only the temporary copy.
"""

from __future__ import annotations

import hashlib
import urllib.error
import uuid
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from devkit.direct import DIRECT
from devkit.models import linear
from support.serverproc import ServerProcess, run_cli

LOOPBACK = ("--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0")
KEY = "fraud/3/model.onnx"


@pytest.fixture(scope="module")
def bucket(s3_server) -> str:
    return s3_server.create_bucket(f"models-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def model_bytes(s3_server, bucket, tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("model") / "model.onnx"
    linear(path)
    s3_server.put(bucket, KEY, path.read_bytes())
    return path.read_bytes()


@pytest.fixture(scope="module")
def model_uri(s3_server, bucket, model_bytes) -> str:
    return s3_server.url(bucket, KEY)


def fetch(*args: str, env: dict[str, str]):
    return run_cli("fetch", "--log-level", "WARNING", *args, timeout=60, env=env)


def the_error(result) -> str:
    """The one ERROR line of a failed run (and no traceback)."""
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


def assert_nothing_left(dest: Path) -> None:
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # no .fetch-* temporary file either


def test_bucket_is_private(s3_server, model_uri):
    with pytest.raises(urllib.error.HTTPError) as refused:
        DIRECT.open(f"{s3_server.endpoint}/{model_uri.removeprefix('s3://')}", timeout=10)
    assert refused.value.code == 403


def test_right_keys(s3_server, model_uri, model_bytes, tmp_path):
    dest = tmp_path / "models" / "model.onnx"
    result = fetch(model_uri, str(dest), "--sha256", hashlib.sha256(model_bytes).hexdigest(), env=s3_server.env())
    assert result.returncode == 0, result.stderr
    assert dest.read_bytes() == model_bytes
    assert [p.name for p in dest.parent.iterdir()] == ["model.onnx"]


def test_progress_counts_against_the_objects_size(s3_server, bucket, tmp_path):
    s3_server.put(bucket, "big/model.bin", bytes(3 << 20))
    uri = s3_server.url(bucket, "big/model.bin")
    result = run_cli("fetch", "--progress-seconds", "0", uri, str(tmp_path / "model.bin"), timeout=60,
                     env=s3_server.env())
    assert result.returncode == 0, result.stderr
    assert f"Fetching {uri} to {tmp_path / 'model.bin'} (3.0 MiB)" in result.stderr
    for line in ("Fetched 1.0 of 3.0 MiB (33%)", "Fetched 2.0 of 3.0 MiB (66%)", "Fetched 3.0 of 3.0 MiB (100%)"):
        assert f"{line} of {uri}" in result.stderr


@pytest.mark.parametrize(("variable", "value", "code"), [
    ("AWS_SECRET_ACCESS_KEY", "not-the-secret", "SignatureDoesNotMatch"),
    ("AWS_ACCESS_KEY_ID", "KINOSUCHKEYID0000000", "InvalidAccessKeyId"),
], ids=["wrong-secret", "unknown-access-key"])
def test_wrong_credentials(s3_server, model_uri, tmp_path, variable, value, code):
    dest = tmp_path / "model.onnx"
    error = the_error(fetch(model_uri, str(dest), env={**s3_server.env(), variable: value}))
    assert model_uri in error and code in error and "HTTP 403" in error
    assert_nothing_left(dest)


def test_missing_object(s3_server, bucket, model_uri, tmp_path):
    uri, dest = s3_server.url(bucket, "fraud/4/model.onnx"), tmp_path / "model.onnx"
    error = the_error(fetch(uri, str(dest), env=s3_server.env()))
    assert uri in error and "not found" in error and "NoSuchKey" in error
    assert_nothing_left(dest)


def test_missing_bucket(s3_server, model_uri, tmp_path):
    uri, dest = s3_server.url("no-such-bucket", KEY), tmp_path / "model.onnx"
    error = the_error(fetch(uri, str(dest), env=s3_server.env()))
    assert uri in error and "not found" in error and "NoSuchBucket" in error
    assert_nothing_left(dest)


def test_checksum_mismatch(s3_server, model_uri, tmp_path):
    dest = tmp_path / "model.onnx"
    error = the_error(fetch(model_uri, str(dest), "--sha256", "0" * 64, env=s3_server.env()))
    assert model_uri in error and "sha256 mismatch" in error
    assert_nothing_left(dest)


def test_serve_a_model_from_the_bucket(s3_server, model_uri, tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**s3_server.env(), "TMPDIR": str(scratch)}
    x = np.ones((1, 4), dtype=np.float32)
    weights = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)  # as devkit.models.linear
    with ServerProcess("--model", f"fraud={model_uri}", env=env) as server, \
            grpcclient.InferenceServerClient(server.url) as client:
        tensor = grpcclient.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer("fraud", [tensor], client_timeout=20)
        np.testing.assert_allclose(result.as_numpy("logits"), x @ weights, rtol=1e-5)
        assert list(scratch.glob("kubeinfer-models-*")) == []  # the fetched copy went once loaded


def test_serve_with_a_missing_model_does_not_start(s3_server, bucket):
    uri = s3_server.url(bucket, "fraud/9/model.onnx")
    result = run_cli("serve", *LOOPBACK, "--model", f"fraud={uri}", timeout=30, env=s3_server.env())
    error = the_error(result)
    assert "Could not start" in error and "model fraud" in error and uri in error and "NoSuchKey" in error
    assert "Serving" not in result.stderr


def test_serve_with_an_object_that_is_not_onnx_names_the_uri(s3_server, bucket):
    uri = s3_server.put(bucket, "fraud/5/model.onnx", b"not a model")
    error = the_error(run_cli("serve", *LOOPBACK, "--model", f"fraud={uri}", timeout=30, env=s3_server.env()))
    assert "Could not start" in error and f"model fraud from {uri}" in error and "not a loadable ONNX model" in error
