"""``--model-version``: every answer names the revision the server runs as (issue 15).

The operator sets it to its rollout revision, so a client (and the canary tests)
can count which revision answered. Covers, on a real server: gRPC and REST
answers carry it as ``model_version``; model metadata, configuration, statistics
and the repository index name it; asking for that version works and for another
is NOT_FOUND (gRPC) and 404 (REST), also for model readiness; it is the
``revision`` label of ``kubeinfer_model_info``; a bad value stops the start
with one line.
"""

from __future__ import annotations

import re
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from devkit.models import linear
from support.serverproc import ServerProcess, run_cli

REVISION = "7f9c2a01be"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = linear(tmp_path_factory.mktemp("models") / "linear.onnx")
    with ServerProcess(f"--model=linear={path}", f"--model-version={REVISION}") as proc:
        yield proc


def _input(module, x: np.ndarray):
    tensor = module.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def test_answers_name_the_revision(server):
    x = np.ones((2, 4), np.float32)
    with grpcclient.InferenceServerClient(server.url) as client:
        assert client.infer("linear", [_input(grpcclient, x)]).get_response().model_version == REVISION
        assert client.infer("linear", [_input(grpcclient, x)], model_version=REVISION).get_response().model_version \
            == REVISION
        with pytest.raises(InferenceServerException, match=f"no version '1'; the served version is {REVISION}"):
            client.infer("linear", [_input(grpcclient, x)], model_version="1")
        assert client.get_model_metadata("linear").versions == [REVISION]
        assert client.is_model_ready("linear", REVISION) and not client.is_model_ready("linear", "1")
        assert [m.version for m in client.get_model_repository_index().models] == [REVISION]
        assert client.get_inference_statistics("linear").model_stats[0].version == REVISION
    rest = httpclient.InferenceServerClient(server.http_url)
    try:
        assert rest.infer("linear", [_input(httpclient, x)]).get_response()["model_version"] == REVISION
        assert rest.get_model_metadata("linear")["versions"] == [REVISION]
        assert rest.is_model_ready("linear", REVISION) and not rest.is_model_ready("linear", "1")
    finally:
        rest.close()


def test_the_revision_is_a_label_of_model_info(server):
    text = urllib.request.urlopen(f"{server.metrics_url}/metrics", timeout=5).read().decode()
    assert re.search(rf'^kubeinfer_model_info{{[^}}]*model="linear"[^}}]*revision="{REVISION}"[^}}]*}} 1\.0$', text,
                     re.M), text


def test_a_version_with_a_slash_stops_the_start(tmp_path):
    result = run_cli("serve", f"--model=linear={linear(tmp_path / 'linear.onnx')}", "--model-version=a/b", timeout=60)
    assert result.returncode != 0
    assert "--model-version must be a non-empty word without '/'" in result.stderr
