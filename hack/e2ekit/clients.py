"""Clients of the e2e stack, for the e2e tests, the cluster demo and the e2e benchmark.

``cluster`` arguments are anything with ``kubectl(*args, check=..., input=..., timeout=...)``
(the tests' ``LocalCluster``, ``localcluster.Cluster``). Helpers: kubectl JSON reads,
a Secret's keys as files, the ready addresses of a Service's EndpointSlices,
tritonclient over mTLS to pod IPs, a REST call over TLS, the certificate a pod presents,
Prometheus queries,
and ``NODE_PLACEMENT``, what a workload sets to land on the real node (not a kwok one).

The load client (``Load``) does what a client of the headless Service does with
``dns:///NAME-headless...`` and ``round_robin``: it resolves the ready addresses (from
the EndpointSlices, as cluster DNS would) once a second and, when they change, opens a
new channel over all of them, with the Service's DNS name as the TLS server name.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from devkit.direct import DIRECT
from localcluster import nodeconfig

# The real node is tainted and labelled: only workloads that ask for it land there.
NODE_PLACEMENT = nodeconfig.PLACEMENT
NO_PROXY = [("grpc.enable_http_proxy", 0)]
# Loopback and the real node's pod subnet: never through a proxy.


def get_json(cluster, *args: str) -> dict:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def write_secret(cluster, namespace: str, name: str, directory: Path) -> Path:
    """The Secret's keys as files (tls.crt, tls.key, ca.crt) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for key, value in get_json(cluster, "secret", name, "-n", namespace)["data"].items():
        (directory / key).write_bytes(base64.b64decode(value))
    return directory


def ready_addresses(cluster, namespace: str, service_name: str) -> list[str]:
    slices = get_json(cluster, "endpointslices", "-n", namespace,
                      "-l", f"kubernetes.io/service-name={service_name}")["items"]
    return sorted({a for s in slices for e in s.get("endpoints") or []
                   if (e.get("conditions") or {}).get("ready") for a in e["addresses"]})


def client(addresses: list[str], certs: Path | None, server_name: str,
           ca: Path | None = None) -> tc.InferenceServerClient:
    """tritonclient over every address (round robin), verifying ``server_name``."""
    target = "ipv4:" + ",".join(f"{a}:8001" for a in addresses)
    args = [("grpc.ssl_target_name_override", server_name), ("grpc.lb_policy_name", "round_robin"),
            ("grpc.max_receive_message_length", 64 << 20), *NO_PROXY]
    ca = ca or (certs / "ca.crt" if certs else None)
    key = str(certs / "tls.key") if certs else None
    chain = str(certs / "tls.crt") if certs else None
    return tc.InferenceServerClient(target, ssl=True, root_certificates=str(ca), private_key=key,
                                    certificate_chain=chain, channel_args=args)


def rest_call(address: str, port: int, server_name: str, certs: Path, method: str, path: str,
              body: dict | None = None, present_certificate: bool = True) -> tuple[int, dict]:
    """One OIP v2 REST call over TLS to ``address:port`` (a pod or a ClusterIP), verifying
    ``server_name``; with the client certificate in ``certs`` unless told not to."""
    context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    if present_certificate:
        context.load_cert_chain(str(certs / "tls.crt"), str(certs / "tls.key"))
    payload = json.dumps(body).encode() if body is not None else b""
    request = (f"{method} {path} HTTP/1.1\r\nHost: {server_name}:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n").encode() + payload
    with socket.create_connection((address, port), timeout=15) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            tls.sendall(request)
            response = http.client.HTTPResponse(tls)
            response.begin()
            return response.status, json.loads(response.read())


def batch(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((rows, 256), dtype=np.float32)


def infer(c: tc.InferenceServerClient, model: str, x: np.ndarray, timeout: float = 30) -> np.ndarray:
    return answer(c, model, x, timeout).as_numpy("output")


def answer(c: tc.InferenceServerClient, model: str, x: np.ndarray, timeout: float = 30) -> tc.InferResult:
    """One inference of the mlp's signature; the result also says which revision answered."""
    inp = tc.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return c.infer(model, [inp], client_timeout=timeout)


@dataclass
class Load:
    """``workers`` threads calling ``model`` back to back until ``stop``; counts every outcome.

    ``through``: one address (the Service's ClusterIP; port 8001) to call instead of the headless Service's
    ready endpoints: one channel, one connection, a pod picked by kube-proxy each time it reconnects.
    """

    cluster: object
    namespace: str
    name: str
    certs: Path
    workers: int = 16
    rows: int = 32
    ok: int = 0
    failures: list = field(default_factory=list)
    versions: Counter = field(default_factory=Counter)  # model_version (the revision) -> answers
    addresses: list = field(default_factory=list)
    through: str = ""
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _client: object = None

    def start(self) -> Load:
        self._refresh()
        threads = [threading.Thread(target=self._work, args=(i,), daemon=True)
                   for i in range(self.workers)]
        threads.append(threading.Thread(target=self._resolver, daemon=True))
        self._threads = threads
        for t in threads:
            t.start()
        return self

    def _refresh(self) -> None:
        if self.through:
            if not self.addresses:
                server = f"{self.name}.{self.namespace}.svc"
                self._client, self.addresses = client([self.through], self.certs, server), [self.through]
            return
        found = ready_addresses(self.cluster, self.namespace, f"{self.name}-headless")
        if found and found != self.addresses:
            server = f"{self.name}-headless.{self.namespace}.svc"
            self._client, self.addresses = client(found, self.certs, server), found

    def _resolver(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self._refresh()
            except Exception:  # noqa: BLE001  (an API hiccup: keep the last addresses)
                pass

    def _work(self, seed: int) -> None:
        x = batch(self.rows, seed)
        while not self._stop.is_set():
            try:
                version = answer(self._client, self.name, x).get_response().model_version
                with self._lock:
                    self.ok += 1
                    self.versions[version] += 1
            except (InferenceServerException, grpc.RpcError) as exc:
                with self._lock:
                    self.failures.append((time.time(), str(exc)[:200]))

    def counts(self) -> dict[str, int]:
        """The answers so far by model_version (a copy, taken under the lock)."""
        with self._lock:
            return dict(self.versions)

    def stop(self) -> Load:
        self._stop.set()
        for t in self._threads:
            t.join(60)
        return self


def presented_cert(address: str, server_name: str, certs: Path) -> bytes:
    """The certificate a fresh TLS handshake to the pod gets (verified against ca.crt)."""
    context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    context.load_cert_chain(str(certs / "tls.crt"), str(certs / "tls.key"))
    context.set_alpn_protocols(["h2"])
    with socket.create_connection((address, 8001), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            return tls.getpeercert(binary_form=True)


def query(prometheus: str, promql: str, timeout: float = 5) -> list[dict]:
    """An instant PromQL query's result vector."""
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with DIRECT.open(url, timeout=timeout) as response:
        return json.load(response)["data"]["result"]


def served_by(prometheus: str, namespace: str, timeout: float = 5) -> dict[str, float]:
    """Requests answered per pod, as Prometheus scraped them."""
    result = query(prometheus, f'sum by (pod) (kubeinfer_requests_total{{namespace="{namespace}",code="OK"}})', timeout)
    return {r["metric"]["pod"]: float(r["value"][1]) for r in result}
