"""The REST body codec, the identity rules and the access log's file, as pure functions.

Covers: a binary body splits at Inference-Header-Content-Length and each
input takes its binary_data_size in order (zero-copy views); nested JSON data
flattens; the answer puts requested outputs in binary and says where the JSON
ends; identities come from the CN, else a URI SAN, else a DNS SAN; a
certificate-less caller is refused only where certificates are verified; the
access log's file rotates by size and keeps the newest backups; its lines name
every field of the call.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import orjson
import pytest

from kubeinfer_server import tensors
from kubeinfer_server.accesslog import AccessLog, Call, RequestIds, RotatingFile
from kubeinfer_server.core import InferResult
from kubeinfer_server.errors import InvalidInput, PermissionDenied, Unauthenticated
from kubeinfer_server.identity import ANONYMOUS, UNAUTHENTICATED, Identity, name_from_auth_context, name_from_peercert
from kubeinfer_server.model import TensorSpec
from kubeinfer_server.restcodec import decode_request, encode_response, parse_body

FP32 = tensors.BY_NAME["FP32"]


def binary_body(header: dict, *blobs: bytes) -> tuple[bytes, str]:
    head = json.dumps(header).encode()
    return head + b"".join(blobs), str(len(head))


def test_binary_inputs_take_their_sizes_in_order():
    a, b = np.arange(4, dtype=np.float32), np.arange(2, dtype=np.float32) + 10
    body, length = binary_body({"inputs": [
        {"name": "a", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}},
        {"name": "j", "shape": [2], "datatype": "INT32", "data": [[7], [8]]},
        {"name": "b", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 8}},
    ], "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "z"}]}, a.tobytes(), b.tobytes())
    parsed = parse_body(body, length)
    request = decode_request(parsed, "m", "")
    first, json_input, second = request.inputs
    assert bytes(first.raw) == a.tobytes() and bytes(second.raw) == b.tobytes()
    assert isinstance(first.raw, memoryview)  # a view of the body, not a copy
    assert json_input.raw is None and json_input.values == [7, 8]
    assert request.outputs == ("y", "z") and parsed.binary_outputs == {"y": True, "z": False}


def test_answers_put_binary_outputs_after_the_json():
    parsed = parse_body(b'{"inputs": [], "parameters": {"binary_data_output": true}}', None)
    parsed.every_output_binary = True
    y = np.arange(6, dtype=np.float32).reshape(2, 3)
    body, length = encode_response(parsed, "id-1", "m", "1", InferResult([(TensorSpec("y", FP32, (-1, 3)), y)], 2))
    header = orjson.loads(body[:length])
    assert header["id"] == "id-1" and header["outputs"][0]["parameters"] == {"binary_data_size": 24}
    assert struct.unpack("<6f", body[length:]) == tuple(range(6))
    json_only, none = encode_response(parse_body(b"{}", None), "id-2", "m", "1", InferResult([
        (TensorSpec("y", FP32, (-1, 3)), y[:, 1:])], 2))  # a non-contiguous view
    assert none is None and orjson.loads(json_only)["outputs"][0]["data"] == [1.0, 2.0, 4.0, 5.0]


@pytest.mark.parametrize("body,length,message", [
    (b"[1, 2]", None, "must be a JSON object"),
    (b"{}", "x", "must be a whole number"),
    (b'{"inputs": [{"name": "a", "shape": [1], "datatype": "FP99", "data": [1]}]}', None, "unknown datatype"),
    (b'{"inputs": [{"name": "a", "shape": ["1"], "datatype": "FP32", "data": [1]}]}', None, "list of whole numbers"),
    (b'{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32"}]}', None, "neither 'data' nor binary_data_size"),
    (b'{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1], '
     b'"parameters": {"shared_memory_region": "r"}}]}', None, "shared memory is not supported"),
    (b'{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}], "outputs": "y"}', None,
     "'outputs' must be a list"),
])
def test_malformed_bodies_say_what_is_wrong(body, length, message):
    with pytest.raises(InvalidInput, match=message):
        decode_request(parse_body(body, length), "m", "")


def test_timeout_parameter_is_microseconds():
    assert parse_body(b'{"parameters": {"timeout": 250000}}', None).timeout_s() == 0.25
    with pytest.raises(InvalidInput, match="microseconds"):
        parse_body(b'{"parameters": {"timeout": "soon"}}', None).timeout_s()


def test_identity_prefers_the_cn_then_uri_then_dns_names():
    assert name_from_peercert({"subject": ((("commonName", "checkout"),),),
                               "subjectAltName": (("DNS", "a.example"),)}) == "checkout"
    assert name_from_peercert({"subject": (), "subjectAltName": (("DNS", "a.example"), ("URI", "spiffe://x/y"))}) \
        == "spiffe://x/y"
    assert name_from_peercert({"subject": (), "subjectAltName": (("DNS", "a.example"),)}) == "a.example"
    assert name_from_peercert(None) == UNAUTHENTICATED
    # a gRPC auth context of a certificate without a CN has an empty common name
    assert name_from_auth_context({"x509_common_name": [b""], "peer_uri": [b"spiffe://x/y"],
                                   "peer_dns": [b"a.example"]}) == "spiffe://x/y"
    assert name_from_auth_context({"x509_common_name": [b"risk"]}) == "risk"


def test_who_may_call():
    mutual = Identity(frozenset({"checkout"}))
    mutual.check("checkout")
    with pytest.raises(PermissionDenied, match="client 'risk' is not allowed"):
        mutual.check("risk")
    with pytest.raises(Unauthenticated, match="requires a client certificate"):
        Identity(frozenset()).check(UNAUTHENTICATED)
    plaintext = Identity(frozenset(), verifies_clients=False)
    assert plaintext.of_peercert(None) == ANONYMOUS
    plaintext.check(ANONYMOUS)


def test_access_log_file_rotates_and_keeps_the_newest(tmp_path):
    path = str(tmp_path / "access.log")
    log = AccessLog(1.0, file=RotatingFile(path, max_bytes=1024, backups=2), to_stderr=False)
    ids = RequestIds()
    for n in range(40):
        log.record(Call("grpc", "ModelInfer", "ipv4:127.0.0.1:1", "checkout", ids.next(), "m", "1"), "OK",
                   0.001, n)
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["access.log", "access.log.1", "access.log.2"]
    assert all(p.stat().st_size <= 1024 for p in tmp_path.iterdir())
    lines = [json.loads(line) for name in reversed(files) for line in (tmp_path / name).read_text().splitlines()]
    batch_sizes = [line["batch_size"] for line in lines]
    assert batch_sizes == list(range(40 - len(lines), 40)), "lost or reordered lines among the kept files"
    assert set(lines[-1]) == {"time", "id", "protocol", "method", "peer", "client", "model", "version", "code",
                              "latency_ms", "batch_size"}
