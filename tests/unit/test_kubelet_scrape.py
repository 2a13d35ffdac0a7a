"""The e2e stack's Prometheus scrapes the real node's kubelet for the containers' usage (pure, no cluster).

Covers: the kubelet's target comes from the Node object (InternalIP, the port it
reports), none before it reports them; both kubelet jobs go over HTTPS to
/metrics/cadvisor and /metrics/resource, keep the series right-sizing reads
(the names ``kubeinfer_operator.usage`` queries), and present the API server's
kubelet-client certificate; in a PKI written as ``localcluster.pki`` writes it,
that certificate is signed by the CA the kubelet's x509 authentication trusts,
is a client certificate in system:masters (which the webhook authorization the
kubelet asks allows), and the kubelet's serving certificate names the node's
address; the PKI folder is found from the cluster's kubeconfig.
"""

from __future__ import annotations

import re
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kubeinfer_operator import usage
from localcluster import nodeconfig, pki
from localcluster.nodeconfig import NODE_IP, NodePaths, Ports
from monitoring.stack import KUBELET_CLIENT, KUBELET_SERIES, pki_of, prometheus_config
from monitoring.targets import kubelet_targets

NODE = {"metadata": {"name": nodeconfig.NAME},
        "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP}, {"type": "Hostname", "address": "h"}],
                   "daemonEndpoints": {"kubeletEndpoint": {"Port": 40001}}}}


def test_the_kubelet_target_is_the_nodes_address_and_reported_port():
    assert kubelet_targets(NODE) == [{"targets": [f"{NODE_IP}:40001"], "labels": {"node": nodeconfig.NAME}}]
    assert kubelet_targets({"metadata": {"name": "n"}, "status": {}}) == []


def test_both_kubelet_endpoints_are_scraped_over_https_with_the_kubelet_client_certificate(tmp_path):
    config = prometheus_config(tmp_path / "pods.json", tmp_path / "kubelet.json", tmp_path / "pki")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"kubeinfer-servers", "kubelet-cadvisor", "kubelet-resource"}
    for name, path in (("kubelet-cadvisor", "/metrics/cadvisor"), ("kubelet-resource", "/metrics/resource")):
        job = jobs[name]
        assert (job["scheme"], job["metrics_path"]) == ("https", path)
        assert job["file_sd_configs"][0]["files"] == [str(tmp_path / "kubelet.json")]
        assert job["tls_config"] == {"ca_file": str(tmp_path / "pki" / "ca.crt"),
                                     "cert_file": str(tmp_path / "pki" / f"{KUBELET_CLIENT}.crt"),
                                     "key_file": str(tmp_path / "pki" / f"{KUBELET_CLIENT}.key")}
        assert job["metric_relabel_configs"][0]["regex"] == KUBELET_SERIES
    assert set(prometheus_config(tmp_path / "pods.json")["scrape_configs"][0]) == set(jobs["kubeinfer-servers"])


def test_the_kept_series_are_the_ones_right_sizing_queries():
    queried = re.findall(r"(container_\w+)\{", " ".join(usage.queries("ml", ["p"], 30)))
    assert queried == ["container_cpu_usage_seconds_total", "container_memory_working_set_bytes"]
    assert all(re.fullmatch(KUBELET_SERIES, name) for name in queried)
    assert not re.fullmatch(KUBELET_SERIES, "container_network_receive_bytes_total")


def test_the_kubelet_accepts_the_client_certificate_and_serves_the_nodes_address(tmp_path):
    pki.write_pki(tmp_path)
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    client = x509.load_pem_x509_certificate((tmp_path / f"{KUBELET_CLIENT}.crt").read_bytes())
    client.verify_directly_issued_by(ca)
    assert client.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    usages = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usages
    kubelet = nodeconfig.kubelet_config(NodePaths(Path("/run/n"), Path("/c")), Ports(1, 2, 3, 4), tmp_path)
    assert kubelet["authentication"]["x509"]["clientCAFile"] == str(tmp_path / "ca.crt")
    assert kubelet["authorization"] == {"mode": "Webhook"}
    serving = x509.load_pem_x509_certificate(Path(kubelet["tlsCertFile"]).read_bytes())
    serving.verify_directly_issued_by(ca)
    names = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert NODE_IP in [str(ip) for ip in names.get_values_for_type(x509.IPAddress)]


def test_the_pki_is_found_from_the_kubeconfig(tmp_path):
    (tmp_path / "kubeconfig").write_text(pki.kubeconfig_text("https://10.244.128.1:6443", tmp_path / "pki"))
    assert pki_of(tmp_path / "kubeconfig") == tmp_path / "pki"
