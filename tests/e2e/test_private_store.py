"""End to end: a model in a private bucket of a real S3 server, fetched with credentials from a Secret.

The test bed's S3 server (SeaweedFS, ``devkit.s3server``) listens on the real node's bridge
address, where pods reach it. Covers (issue 17): an InferenceDeployment whose
``model.credentials.secretRef`` names a Secret with the keys and the endpoint turns Ready
serving the bucket's model (sha256 checked); a wrong secret, a missing object, a missing
bucket and a checksum mismatch each turn into ``Ready=False ModelFetchFailed`` with the
store's own error in the message.
"""

from __future__ import annotations

import hashlib

import pytest

from devkit.s3server import S3Server
from e2e.test_serving import apply, condition, infd
from localcluster.nodeconfig import NODE_IP

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]


@pytest.fixture(scope="module")
def store(cluster, stack):
    with S3Server(host=NODE_IP) as server:
        server.create_bucket("models")
        server.put("models", "fraud/mlp.onnx", (stack.store_dir / "mlp.onnx").read_bytes())
        yield server


def keys_secret(cluster, namespace: str, name: str, env: dict[str, str]) -> str:
    literals = [f"--from-literal={k}={v}" for k, v in env.items()]
    cluster.kubectl("delete", "secret", name, "-n", namespace, "--ignore-not-found")
    cluster.kubectl("create", "secret", "generic", name, "-n", namespace, *literals)
    return name


def fetch_failed(cluster, namespace: str, name: str) -> dict | None:
    found = condition(cluster, namespace, name)
    return found if found.get("reason") == "ModelFetchFailed" else None


def test_private_bucket_with_credentials_from_a_secret(cluster, stack, installed, store):
    ns = installed.apps
    good = keys_secret(cluster, ns, "store-keys", store.env())
    wrong = keys_secret(cluster, ns, "wrong-keys", {**store.env(), "AWS_SECRET_ACCESS_KEY": "not-the-secret"})
    sha = hashlib.sha256((stack.store_dir / "mlp.onnx").read_bytes()).hexdigest()
    cases = {  # name -> (uri, secret, sha256, what the condition must quote)
        "private": ("s3://models/fraud/mlp.onnx", good, sha, None),
        "wrong-secret": ("s3://models/fraud/mlp.onnx", wrong, None, "SignatureDoesNotMatch"),
        "missing-object": ("s3://models/fraud/nothing.onnx", good, None, "NoSuchKey"),
        "missing-bucket": ("s3://no-such-bucket/mlp.onnx", good, None, "NoSuchBucket"),
        "bad-checksum": ("s3://models/fraud/mlp.onnx", good, "0" * 64, "sha256 mismatch"),
    }
    for name, (uri, secret, sha256, _) in cases.items():
        model = {"uri": uri, "credentials": {"secretRef": {"name": secret}}, **({"sha256": sha256} if sha256 else {})}
        body = infd(name, ns, uri, replicas=1)
        body["spec"]["model"] = model
        apply(cluster, body)
    try:
        cluster.wait_for("the private bucket's model served", lambda: condition(
            cluster, ns, "private").get("status") == "True", timeout=180)
        for name, (uri, _, _, error) in cases.items():
            if error is None:
                continue
            found = cluster.wait_for(f"{name}: Ready=False ModelFetchFailed",
                                     lambda n=name: fetch_failed(cluster, ns, n), timeout=180)
            assert found["status"] == "False"
            assert error in found["message"] and uri in found["message"], found["message"]
    finally:  # the node is shared by the whole e2e session: free its CPU and memory for the next tests
        cluster.kubectl("delete", "infd", *cases, "-n", ns, "--wait=true", "--timeout=60s", check=False, timeout=90)
