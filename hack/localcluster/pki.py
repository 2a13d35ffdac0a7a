"""Certificates and the admin kubeconfig for the local control plane, laid out as kubeadm does.

One CA for serving and client certificates, a service-account key pair and a separate
front-proxy CA for the aggregation layer. Certificates are issued through
``devkit.x509`` (the product's ``kubeinfer_operator.certs``): CAs live ten years,
leaves one year.
"""

from __future__ import annotations

import datetime
import json
import ssl
import urllib.request
from pathlib import Path

from .nodeconfig import NAME as NODE_NAME
from .nodeconfig import NODE_IP

YEAR = datetime.timedelta(days=365)
API_SERVER_NAMES = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local")
API_SERVER_IPS = ("127.0.0.1", "10.96.0.1", NODE_IP)
# The identities of the real node's kubelet and kube-proxy, as kubeadm names them: the Node
# authorizer knows system:node:<name> in system:nodes; system:kube-proxy is bound to the
# bootstrap role system:node-proxier.
KUBELET_USER = (f"system:node:{NODE_NAME}", "system:nodes")
KUBE_PROXY_USER = ("system:kube-proxy", None)


def write_pki(pki: Path) -> None:
    """CA + serving/client certs, service-account keys and a separate front-proxy CA."""
    # Imported here: `make cluster-down` may run this package without the venv (hack/cluster.mk).
    from devkit import x509

    pki.mkdir(parents=True, exist_ok=True)
    ca = x509.make_ca("kubeinfer-local-ca", duration=10 * YEAR)
    ca.write(pki, "ca")
    x509.issue(ca, "kube-apiserver", server=True, dns_names=API_SERVER_NAMES, ip_addresses=API_SERVER_IPS,
               duration=YEAR).write(pki, "apiserver")
    # Admin identity for kubectl, the controller manager, the scheduler and kwok:
    # system:masters bypasses RBAC, so RBAC stays on for everyone else.
    x509.issue(ca, "kubeinfer-admin", organization="system:masters", duration=YEAR).write(pki, "admin")
    x509.write_signing_key(pki, "sa")
    # The real node: its kubelet's client and serving certificates, kube-proxy's client
    # certificate, and the API server's client certificate for kubelets (logs, exec).
    x509.issue(ca, KUBELET_USER[0], organization=KUBELET_USER[1], duration=YEAR).write(pki, "kubelet-client")
    x509.issue(ca, KUBELET_USER[0], server=True, dns_names=(NODE_NAME,), ip_addresses=(NODE_IP,),
               duration=YEAR).write(pki, "kubelet")
    x509.issue(ca, KUBE_PROXY_USER[0], duration=YEAR).write(pki, "kube-proxy")
    x509.issue(ca, "kube-apiserver-kubelet-client", organization="system:masters",
               duration=YEAR).write(pki, "apiserver-kubelet-client")
    # Aggregation layer: its own CA, different from the client CA.
    front_proxy = x509.make_ca("kubeinfer-front-proxy-ca", duration=10 * YEAR)
    front_proxy.write(pki, "front-proxy-ca")
    x509.issue(front_proxy, "front-proxy-client", duration=YEAR).write(pki, "front-proxy-client")


def kubeconfig_opener(kubeconfig: Path) -> tuple[str, urllib.request.OpenerDirector]:
    """The server of one of these kubeconfigs and an opener that calls it with its client
    certificate, never through a proxy (for polling the API without kubectl)."""
    config = json.loads(Path(kubeconfig).read_text())
    cluster, user = config["clusters"][0]["cluster"], config["users"][0]["user"]
    context = ssl.create_default_context(cafile=cluster["certificate-authority"])
    context.load_cert_chain(user["client-certificate"], user["client-key"])
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=context))
    return cluster["server"].rstrip("/"), opener


def kubeconfig_text(server: str, pki: Path, user: str = "admin") -> str:
    """A kubeconfig for ``server`` with the client certificate ``pki/<user>.crt``."""
    return json.dumps({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kubeinfer-local", "cluster": {
            "server": server, "certificate-authority": str(pki / "ca.crt")}}],
        "users": [{"name": f"kubeinfer-{user}", "user": {
            "client-certificate": str(pki / f"{user}.crt"),
            "client-key": str(pki / f"{user}.key")}}],
        "contexts": [{"name": "kubeinfer-local", "context": {
            "cluster": "kubeinfer-local", "user": f"kubeinfer-{user}"}}],
        "current-context": "kubeinfer-local",
    }, indent=2) + "\n"
