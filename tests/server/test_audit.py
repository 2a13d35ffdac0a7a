"""The access log as an audit trail: every call of mixed traffic, exactly once, with the right identity.

A real server with mutual TLS and an allow-list of two clients (alpha, beta),
``--log-level warning``, ``--access-log-file`` with a small size so that it
rotates under the traffic, takes:
- alpha over gRPC (ModelInfer with ids, one without an id, ModelMetadata) and
  over REST (infer with ids);
- beta over a gRPC stream (ModelStreamInfer) and over REST (infer, model
  metadata);
- gamma, signed by the same CA but not on the allow-list, over both
  transports: PERMISSION_DENIED and 403;
- a REST caller without a certificate: 401, logged as ``unauthenticated``;
  its health probe is answered and not logged;
and a second server without TLS takes an anonymous client over both.
Reading every rotated file: each call is there exactly once, with its
transport, method, identity, model, version and code; the request id is the
client's, or the one the server made up and echoed; the REST peer is the
client's own address; stderr has the same lines despite ``--log-level
warning``.
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from devkit.models import linear
from devkit.waiting import wait_for
from devkit.x509 import client_cert, make_ca, server_cert
from kubeinfer_server.accesslog import FLUSH_EVERY_S
from support.serverproc import ServerProcess

X = np.arange(8, dtype=np.float32).reshape(2, 4)
REST_INFER = "POST /v2/models/{model}/infer"
BODY = json.dumps({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": X.ravel().tolist()}]})


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca()
    (directory / "ca.crt").write_bytes(ca.cert_pem)
    server_cert(ca).write(directory, "server")
    for name in ("alpha", "beta", "gamma"):
        client_cert(ca, name).write(directory, name)
    return directory


def grpc_client(server: ServerProcess, pki: Path, name: str) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(server.url, ssl=True, root_certificates=str(pki / "ca.crt"),
                                            private_key=str(pki / f"{name}.key"),
                                            certificate_chain=str(pki / f"{name}.crt"),
                                            channel_args=[("grpc.use_local_subchannel_pool", 1)])


def grpc_input() -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("x", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)
    return tensor


class Rest:
    """One keep-alive REST connection, with a client certificate or none (or plaintext)."""

    def __init__(self, server: ServerProcess, pki: Path | None, name: str | None) -> None:
        if pki is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=20)
        else:
            context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
            if name:
                context.load_cert_chain(str(pki / f"{name}.crt"), str(pki / f"{name}.key"))
            self.conn = http.client.HTTPSConnection("localhost", server.http_port, timeout=20, context=context)
        self.conn.connect()
        self.port = self.conn.sock.getsockname()[1]

    def call(self, method: str, path: str, body: str | None = None) -> tuple[int, dict]:
        self.conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = self.conn.getresponse()
        return response.status, json.loads(response.read())

    def infer(self, request_id: str) -> int:
        body = json.loads(BODY) | {"id": request_id}
        status, answer = self.call("POST", "/v2/models/linear/infer", json.dumps(body))
        assert status != 200 or answer["id"] == request_id, answer
        return status

    def close(self) -> None:
        self.conn.close()


def access_lines(log_file: Path) -> list[dict]:
    files = sorted(log_file.parent.glob(log_file.name + "*"), key=lambda p: p.name, reverse=True)
    return [json.loads(line) for path in files for line in path.read_text().splitlines()]


def stderr_lines(server: ServerProcess) -> list[dict]:
    marker = "kubeinfer.access: "
    return [json.loads(line.split(marker, 1)[1]) for line in server.log().splitlines() if marker in line]


def between_flushes() -> None:
    """The log writes its buffer at most every FLUSH_EVERY_S: a pause lets one write end here, so
    that the traffic reaches the file in several writes and the file rotates between them."""
    time.sleep(FLUSH_EVERY_S * 3)


def mutual_traffic(server: ServerProcess, pki: Path) -> tuple[dict[str, tuple], Counter, dict[str, int]]:
    """Drive the mixed traffic; returns the calls with ids (id -> what the log must say), the
    calls without (counted by what the log must say), and the REST clients' local ports."""
    expected: dict[str, tuple] = {}  # id -> (protocol, method, client, model, version, code)
    anonymous_ids: Counter = Counter()  # (protocol, method, client, model, code) of calls without an id
    alpha = grpc_client(server, pki, "alpha")
    for n in (1, 2, 3):
        alpha.infer("linear", [grpc_input()], request_id=f"alpha-g-{n}")
        expected[f"alpha-g-{n}"] = ("grpc", "ModelInfer", "alpha", "linear", "1", "OK")
    made_up = alpha.infer("linear", [grpc_input()]).get_response().id
    assert made_up, "the server did not make up a request id"
    expected[made_up] = ("grpc", "ModelInfer", "alpha", "linear", "1", "OK")
    assert alpha.get_model_metadata("linear").name == "linear"
    anonymous_ids[("grpc", "ModelMetadata", "alpha", "linear", "OK")] += 1
    alpha.close()
    between_flushes()

    beta = grpc_client(server, pki, "beta")
    answers = []
    beta.start_stream(callback=lambda result, error: answers.append(error or result))
    for n in (1, 2):
        beta.async_stream_infer("linear", [grpc_input()], request_id=f"beta-s-{n}")
        expected[f"beta-s-{n}"] = ("grpc", "ModelStreamInfer", "beta", "linear", "1", "OK")
    beta.stop_stream()
    assert len(answers) == 2 and not any(isinstance(a, Exception) for a in answers), answers
    beta.close()
    between_flushes()

    gamma = grpc_client(server, pki, "gamma")
    with pytest.raises(InferenceServerException, match="client 'gamma' is not allowed"):
        gamma.infer("linear", [grpc_input()], request_id="gamma-g-1")
    expected["gamma-g-1"] = ("grpc", "ModelInfer", "gamma", "linear", "", "PERMISSION_DENIED")
    gamma.close()
    between_flushes()

    ports = {}
    for name, ids, status in (("alpha", ("alpha-r-1", "alpha-r-2"), 200), ("beta", ("beta-r-1",), 200),
                              ("gamma", ("gamma-r-1",), 403), (None, ("nocert-r-1",), 401)):
        rest = Rest(server, pki, name)
        ports[name or "unauthenticated"] = rest.port
        client = name or "unauthenticated"
        code = {200: "OK", 403: "PERMISSION_DENIED", 401: "UNAUTHENTICATED"}[status]
        for request_id in ids:
            assert rest.infer(request_id) == status
            expected[request_id] = ("http", REST_INFER, client, "linear", "1" if status == 200 else "", code)
        if name == "beta":
            assert rest.call("GET", "/v2/models/linear")[0] == 200
            anonymous_ids[("http", "GET /v2/models/{model}", "beta", "linear", "OK")] += 1
        if name is None:  # health answers a caller without a certificate, and is not logged
            assert rest.call("GET", "/v2/health/ready") == (200, {"ready": True})
        rest.close()
    return expected, anonymous_ids, ports


def test_every_call_is_logged_once_with_its_identity(tmp_path, pki):
    model = linear(tmp_path / "linear.onnx")
    log_file = tmp_path / "audit" / "access.log"
    log_file.parent.mkdir()
    server = ServerProcess(f"--model=linear={model}", "--tls-cert", str(pki / "server.crt"),
                           "--tls-key", str(pki / "server.key"), "--tls-client-ca", str(pki / "ca.crt"),
                           "--allowed-clients", "alpha,beta", "--log-level", "warning",
                           "--access-log-file", str(log_file), "--access-log-max-bytes", "2048",
                           "--access-log-backups", "50", fixed_ports=True)
    with ServerProcess(f"--model=linear={model}") as plain:
        with server:
            expected, without_ids, ports = mutual_traffic(server, pki)
            calls = len(expected) + sum(without_ids.values())
            # written within moments, not only at shutdown
            wait_for(lambda: len(access_lines(log_file)) == calls, timeout=2, interval=0.01,
                     what=f"the {calls} calls in the access log file while the server runs")
        anonymous = Rest(plain, None, None)
        assert anonymous.infer("anon-r-1") == 200
        anonymous.close()
        grpcclient.InferenceServerClient(plain.url).infer("linear", [grpc_input()], request_id="anon-g-1")
    lines = access_lines(log_file)
    assert len(list(log_file.parent.iterdir())) > 1, "the file did not rotate under the traffic"
    by_id = Counter(line["id"] for line in lines)
    for request_id, (protocol, method, client, model_name, version, code) in expected.items():
        assert by_id[request_id] == 1, (request_id, by_id[request_id])
        line = next(line for line in lines if line["id"] == request_id)
        assert (line["protocol"], line["method"], line["client"], line["model"], line["version"], line["code"]) \
            == (protocol, method, client, model_name, version, code), line
    rest = [line for line in lines if line["protocol"] == "http" and line["method"] == REST_INFER]
    assert {line["client"]: line["peer"] for line in rest} == {c: f"ipv4:127.0.0.1:{p}" for c, p in ports.items()}
    others = Counter((line["protocol"], line["method"], line["client"], line["model"], line["code"])
                     for line in lines if line["id"] not in expected)
    assert others == without_ids, others
    assert len(lines) == len(expected) + sum(without_ids.values())
    assert [line["id"] for line in stderr_lines(server)] == [line["id"] for line in lines], \
        "--log-level warning silenced the access log on stderr"
    plain_lines = stderr_lines(plain)
    assert [(line["id"], line["protocol"], line["client"]) for line in plain_lines] == [
        ("anon-r-1", "http", "anonymous"), ("anon-g-1", "grpc", "anonymous")]
