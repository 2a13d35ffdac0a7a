"""TLS and client identity of a real ``kubeinfer-server serve`` process.

Covers:
- mutual TLS: a client certificate from the trusted CA gets predictions; no
  client certificate, or one from another CA (even with an allowed CN), is
  refused at the handshake (UNAVAILABLE), and the server keeps serving;
- ``--allowed-clients``: an allowed CN is served, another verified CN gets
  PERMISSION_DENIED naming it;
- the verified CN labels ``kubeinfer_requests_total`` and the JSON access log;
- server-only TLS: a client without a certificate is served as "anonymous";
- REST on the same server: the allowed client is served, a verified one not on
  the list gets 403, one without a certificate 401 (health answers it), one
  from another CA fails the handshake;
- rotation of a Kubernetes-Secret-like volume (atomic ``..data`` swap): a new
  connection gets the new certificate, an open channel and a stream of calls
  across the swap keep working, without a restart; also when the CA changes;
  a broken Secret (key not matching the certificate) keeps the current one;
  the REST listener follows the same files at each new connection.
"""

from __future__ import annotations

import functools
import json
import socket
import ssl
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from devkit.models import linear
from devkit.secretvolume import rotate_secret_volume, write_secret_volume
from devkit.waiting import wait_for
from devkit.x509 import Issued, client_cert, make_ca, server_cert, tls_secret
from support.serverproc import ServerProcess

X = np.arange(8, dtype=np.float32).reshape(2, 4)
WEIGHTS = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)  # as devkit.models.linear
REFUSED = "StatusCode.UNAVAILABLE"
HANDSHAKE_REFUSED = (urllib.error.URLError, ssl.SSLError, ConnectionError)


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Issued
    server: Issued
    checkout: Issued  # allowed client
    risk: Issued  # verified, not allowed
    stranger: Issued  # CN "checkout", issued by another CA

    def file(self, name: str) -> str:
        return str(self.dir / name)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return linear(tmp_path_factory.mktemp("models") / "linear.onnx")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca()
    pki = Pki(directory, ca, server_cert(ca), client_cert(ca, "checkout"), client_cert(ca, "risk"),
              client_cert(make_ca("another CA"), "checkout"))
    (directory / "ca.crt").write_bytes(ca.cert_pem)
    for name in ("server", "checkout", "risk", "stranger"):
        getattr(pki, name).write(directory, name)
    return pki


@pytest.fixture(scope="module")
def mtls_server(pki, model):
    with ServerProcess("--model", f"linear={model}", "--tls-cert", pki.file("server.crt"),
                       "--tls-key", pki.file("server.key"), "--tls-client-ca", pki.file("ca.crt"),
                       "--allowed-clients", "checkout") as server:
        yield server


def connect(url: str, root: str, identity: str | None = None, directory: Path | None = None):
    """A client on its own connection (no subchannel shared with other clients in this process)."""
    cert = {"private_key": str(directory / f"{identity}.key"),
            "certificate_chain": str(directory / f"{identity}.crt")} if identity else {}
    return grpcclient.InferenceServerClient(url, ssl=True, root_certificates=root,
                                            channel_args=[("grpc.use_local_subchannel_pool", 1)], **cert)


def infer(client) -> np.ndarray:
    x = grpcclient.InferInput("x", list(X.shape), "FP32")
    x.set_data_from_numpy(X)
    result = client.infer("linear", [x], outputs=[grpcclient.InferRequestedOutput("logits")], client_timeout=20)
    return result.as_numpy("logits")


def assert_predicts(client) -> None:
    np.testing.assert_allclose(infer(client), X @ WEIGHTS, rtol=1e-5)


def call_error(client) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        infer(client)
    return caught.value


def requests_total(server, **labels) -> float:
    with urllib.request.urlopen(f"{server.metrics_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "kubeinfer_requests_total" and sample.labels == labels:
                return sample.value
    return 0.0


def access_log(server) -> list[dict]:
    marker = "kubeinfer.access: "
    return [json.loads(line.split(marker, 1)[1]) for line in server.log().splitlines() if marker in line]


def peer_certificate(port: int, trust: Issued, cert: str, key: str) -> bytes:
    """The DER certificate the server presents to a brand-new TLS connection."""
    context = ssl.create_default_context(cadata=trust.cert_pem.decode())
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with context.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            return tls.getpeercert(binary_form=True)


def rest_get(port: int, path: str, trust: str, cert: tuple[str, str] | None = None) -> int:
    """The HTTP status of a REST GET over a new TLS connection (with a client certificate or none)."""
    context = ssl.create_default_context(cafile=trust)
    if cert:
        context.load_cert_chain(*cert)
    try:
        with urllib.request.urlopen(f"https://localhost:{port}{path}", context=context, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


# --- mutual TLS and identity ----------------------------------------------------------

def test_client_certificate_from_the_ca_gets_predictions(mtls_server, pki):
    with connect(mtls_server.url, pki.file("ca.crt"), "checkout", pki.dir) as client:
        assert_predicts(client)


def test_client_without_certificate_is_refused(mtls_server, pki):
    with connect(mtls_server.url, pki.file("ca.crt")) as client:
        assert call_error(client).status() == REFUSED
    with connect(mtls_server.url, pki.file("ca.crt"), "checkout", pki.dir) as client:
        assert_predicts(client)


def test_client_certificate_from_another_ca_is_refused(mtls_server, pki):
    with connect(mtls_server.url, pki.file("ca.crt"), "stranger", pki.dir) as client:
        assert call_error(client).status() == REFUSED
    with connect(mtls_server.url, pki.file("ca.crt"), "checkout", pki.dir) as client:
        assert_predicts(client)
    assert mtls_server.proc.poll() is None


def test_verified_client_not_in_allowed_clients_is_denied(mtls_server, pki):
    with connect(mtls_server.url, pki.file("ca.crt"), "risk", pki.dir) as client:
        error = call_error(client)
        assert error.status() == "StatusCode.PERMISSION_DENIED"
        assert "'risk'" in error.message()
        assert "checkout" in error.message()  # says who is allowed
        assert client.is_server_live()  # the connection itself is fine: only inference is denied


def test_identity_labels_requests_total(mtls_server, pki):
    ok = dict(model="linear", code="OK", client="checkout")
    before = requests_total(mtls_server, **ok)
    with connect(mtls_server.url, pki.file("ca.crt"), "checkout", pki.dir) as client:
        assert_predicts(client)
        assert_predicts(client)
    assert requests_total(mtls_server, **ok) == before + 2


def test_identity_appears_in_access_log(mtls_server, pki):
    seen = len(access_log(mtls_server))
    with connect(mtls_server.url, pki.file("ca.crt"), "checkout", pki.dir) as client:
        assert_predicts(client)
    line = wait_for(lambda: access_log(mtls_server)[seen:], what="an access log line")[-1]
    assert line["client"] == "checkout"
    assert line["model"] == "linear"
    assert line["code"] == "OK"
    assert line["batch_size"] == 2


def test_denied_client_is_named_in_metrics_and_access_log(mtls_server, pki):
    denied = dict(model="linear", code="PERMISSION_DENIED", client="risk")
    before, seen = requests_total(mtls_server, **denied), len(access_log(mtls_server))
    with connect(mtls_server.url, pki.file("ca.crt"), "risk", pki.dir) as client:
        call_error(client)
    line = wait_for(lambda: access_log(mtls_server)[seen:], what="an access log line")[-1]
    assert (line["client"], line["code"]) == ("risk", "PERMISSION_DENIED")
    assert requests_total(mtls_server, **denied) == before + 1


def test_rest_follows_the_same_mutual_tls_and_allow_list(mtls_server, pki):
    port, trust = mtls_server.http_port, pki.file("ca.crt")

    def files(name: str) -> tuple[str, str]:
        return pki.file(f"{name}.crt"), pki.file(f"{name}.key")

    assert rest_get(port, "/v2/models/linear", trust, files("checkout")) == 200
    assert rest_get(port, "/v2/models/linear", trust, files("risk")) == 403
    assert rest_get(port, "/v2/models/linear", trust) == 401
    assert rest_get(port, "/v2/health/ready", trust) == 200  # the kubelet's probes carry no certificate
    assert rest_get(port, "/v2/models/linear/ready", trust) == 401  # it would name the served models
    assert rest_get(port, "/v2/models/linear/ready", trust, files("checkout")) == 200
    with pytest.raises(HANDSHAKE_REFUSED):  # with TLS 1.3 the client learns it only on its first read
        rest_get(port, "/v2/models/linear", trust, files("stranger"))
    assert rest_get(port, "/v2/models/linear", trust, files("checkout")) == 200


def test_server_only_tls_serves_clients_without_certificate(pki, model):
    with ServerProcess("--model", f"linear={model}", "--tls-cert", pki.file("server.crt"),
                       "--tls-key", pki.file("server.key")) as server:
        with connect(server.url, pki.file("ca.crt")) as client:
            assert_predicts(client)
        assert wait_for(lambda: access_log(server), what="an access log line")[-1]["client"] == "anonymous"
        assert requests_total(server, model="linear", code="OK", client="anonymous") == 1


# --- certificate rotation ---------------------------------------------------------------

class CallLoop:
    """Calls the server in a thread until stopped: on one open channel and on fresh connections."""

    def __init__(self, open_client, connect_fresh) -> None:
        self.open_client, self.connect_fresh = open_client, connect_fresh
        self.calls, self.errors = 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                assert_predicts(self.open_client)
                with self.connect_fresh() as fresh:
                    assert_predicts(fresh)
            except Exception as exc:  # collected: the test asserts there are none
                self.errors.append(repr(exc))
            self.calls += 1

    def wait_calls(self, count: int) -> None:
        wait_for(lambda: self.calls >= count or self.errors, timeout=30, what=f"{count} calls")

    def __enter__(self) -> CallLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive()


@pytest.fixture
def rotating(tmp_path, pki, model):
    """A server reading its TLS files from a Secret-like volume at ``tmp_path/tls``."""
    volume = write_secret_volume(tmp_path / "tls", tls_secret(pki.server, pki.ca))
    with ServerProcess("--model", f"linear={model}", "--tls-cert", str(volume / "tls.crt"),
                       "--tls-key", str(volume / "tls.key"), "--tls-client-ca", str(volume / "ca.crt")) as server:
        yield server, volume


def test_rotation_serves_new_certificate_and_keeps_open_channels(rotating, pki):
    server, volume = rotating
    pid = server.proc.pid
    checkout = (pki.file("checkout.crt"), pki.file("checkout.key"))
    assert peer_certificate(server.grpc_port, pki.ca, *checkout) == pki.server.der
    assert peer_certificate(server.http_port, pki.ca, *checkout) == pki.server.der
    renewed = server_cert(pki.ca)
    assert renewed.serial != pki.server.serial

    with connect(server.url, pki.file("ca.crt"), "checkout", pki.dir) as open_client:
        assert_predicts(open_client)
        fresh = functools.partial(connect, server.url, pki.file("ca.crt"), "risk", pki.dir)
        with CallLoop(open_client, fresh) as loop:
            loop.wait_calls(3)
            rotate_secret_volume(volume, tls_secret(renewed, pki.ca))
            rotated_at = loop.calls
            loop.wait_calls(rotated_at + 3)
        assert loop.errors == []
        assert peer_certificate(server.grpc_port, pki.ca, *checkout) == renewed.der
        assert peer_certificate(server.http_port, pki.ca, *checkout) == renewed.der
        assert_predicts(open_client)

    assert server.proc.poll() is None and server.proc.pid == pid
    assert "Reloaded TLS certificate" in server.log()


def test_rotation_to_a_new_ca(rotating, pki):
    server, volume = rotating
    new_ca = make_ca("kubeinfer test CA 2")
    renewed, client = server_cert(new_ca), client_cert(new_ca, "checkout")
    (pki.dir / "ca2.crt").write_bytes(new_ca.cert_pem)
    client.write(pki.dir, "checkout2")

    with connect(server.url, pki.file("ca.crt"), "checkout", pki.dir) as open_client:
        assert_predicts(open_client)
        rotate_secret_volume(volume, tls_secret(renewed, new_ca))

        new_files = (pki.file("checkout2.crt"), pki.file("checkout2.key"))
        assert peer_certificate(server.grpc_port, new_ca, *new_files) == renewed.der
        with connect(server.url, pki.file("ca2.crt"), "checkout2", pki.dir) as new_client:
            assert_predicts(new_client)
        with connect(server.url, pki.file("ca.crt"), "checkout", pki.dir) as old_trust:
            assert call_error(old_trust).status() == REFUSED  # the old CA is no longer trusted either way
        assert_predicts(open_client)  # made before the swap: keeps its session
        # REST: the new CA verifies the new client; the old client certificate no longer verifies
        assert peer_certificate(server.http_port, new_ca, *new_files) == renewed.der
        assert rest_get(server.http_port, "/v2/models/linear", pki.file("ca2.crt"), new_files) == 200
        with pytest.raises(HANDSHAKE_REFUSED):
            rest_get(server.http_port, "/v2/models/linear", pki.file("ca2.crt"),
                     (pki.file("checkout.crt"), pki.file("checkout.key")))


def test_broken_rotation_keeps_the_current_certificate(rotating, pki):
    server, volume = rotating
    checkout = (pki.file("checkout.crt"), pki.file("checkout.key"))
    renewed, unrelated = server_cert(pki.ca), server_cert(pki.ca)
    mismatched = {**tls_secret(renewed, pki.ca), "tls.key": unrelated.key_pem}

    rotate_secret_volume(volume, mismatched)
    assert peer_certificate(server.grpc_port, pki.ca, *checkout) == pki.server.der
    assert peer_certificate(server.http_port, pki.ca, *checkout) == pki.server.der
    with connect(server.url, pki.file("ca.crt"), "checkout", pki.dir) as client:
        assert_predicts(client)

    rotate_secret_volume(volume, tls_secret(renewed, pki.ca))  # the next good Secret is picked up
    assert peer_certificate(server.grpc_port, pki.ca, *checkout) == renewed.der
    assert peer_certificate(server.http_port, pki.ca, *checkout) == renewed.der
