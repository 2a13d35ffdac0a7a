"""End to end: certificate rotation reaches the running server (issue 6, test 3).

The rotation is forced by changing spec.tls.certificateDurationSeconds: the operator
reissues the server and client certificates, the real node's kubelet updates the
Secret volume of the running pod, the server re-reads the files at the next handshake.
A new connection then sees the new certificate, and requests that run across the
rotation (on open connections and on fresh ones) all succeed.
"""

from __future__ import annotations

import base64
import threading
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from e2e.test_serving import apply, condition, infd
from e2ekit.clients import Load, batch, client, get_json, infer, presented_cert, ready_addresses, write_secret

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]


def secret_cert(cluster, ns: str, name: str) -> bytes:
    pem = base64.b64decode(get_json(cluster, "secret", name, "-n", ns)["data"]["tls.crt"])
    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)



def test_rotation_reaches_the_server_without_failed_requests(cluster, stack, installed, tmp_path):
    ns, name = installed.apps, "rotor"
    spec = {"replicas": 1, "tls": {"mode": "Mutual", "clients": [{"name": "app"}],
                                   "certificateDurationSeconds": 3600}}
    apply(cluster, infd(name, ns, stack.store.url("mlp.onnx"), **spec))
    cluster.wait_for("InferenceDeployment Ready", lambda: condition(cluster, ns, name).get("status") == "True",
                     timeout=120)
    certs = write_secret(cluster, ns, f"{name}-client-app", tmp_path / "before")
    address = ready_addresses(cluster, ns, name)[0]
    server_name = f"{name}.{ns}.svc"
    before = secret_cert(cluster, ns, f"{name}-tls")
    assert presented_cert(address, server_name, certs) == before

    load = Load(cluster, ns, name, certs, workers=4, rows=4).start()
    fresh = {"ok": 0, "failed": []}
    stop = threading.Event()

    def fresh_connections() -> None:  # a new channel (new handshake) for every call
        while not stop.is_set():
            try:
                infer(client([address], certs, server_name), name, batch(1), timeout=10)
                fresh["ok"] += 1
            except Exception as exc:  # noqa: BLE001  (every failure counts)
                fresh["failed"].append(str(exc)[:200])
            time.sleep(0.2)

    worker = threading.Thread(target=fresh_connections, daemon=True)
    worker.start()
    try:
        time.sleep(2)
        spec["tls"]["certificateDurationSeconds"] = 3700
        apply(cluster, infd(name, ns, stack.store.url("mlp.onnx"), **spec))
        after = cluster.wait_for("the operator to reissue the server certificate", lambda: (
            lambda c: c if c != before else None)(secret_cert(cluster, ns, f"{name}-tls")), timeout=60)
        cluster.wait_for("a new connection to see the new certificate",
                         lambda: presented_cert(address, server_name, certs) == after, timeout=30)
        time.sleep(2)
    finally:
        stop.set()
        worker.join(30)
        load.stop()
    assert load.ok > 0 and not load.failures, load.failures[:5]
    assert fresh["ok"] > 0 and not fresh["failed"], fresh["failed"][:5]
    renewed = write_secret(cluster, ns, f"{name}-client-app", tmp_path / "after")
    assert infer(client([address], renewed, server_name), name, batch(2)).shape == (2, 16)
