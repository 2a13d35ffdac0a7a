"""Wire encoding of tensors: every OIP datatype decodes from raw bytes and typed
contents and encodes back byte-exactly; BYTES use 4-byte little-endian length
prefixes; a byte count that does not match the shape is refused with a message
naming the input and both sizes."""

import struct

import numpy as np
import pytest

from kubeinfer_server import tensors
from kubeinfer_server.errors import InvalidInput

FIXED = [name for name in tensors.BY_NAME if name != "BYTES"]


@pytest.mark.parametrize("name", FIXED)
def test_raw_round_trip_every_fixed_size_type(name):
    datatype = tensors.BY_NAME[name]
    array = (np.arange(6) % 2).astype(datatype.dtype).reshape(2, 3)
    raw = tensors.encode(array, datatype)
    assert len(raw) == 6 * datatype.dtype.itemsize
    decoded = tensors.decode_raw("x", datatype, (2, 3), raw)
    assert decoded.dtype == datatype.dtype and np.array_equal(decoded, array)


def test_bytes_use_length_prefixes():
    datatype = tensors.BY_NAME["BYTES"]
    array = np.array([b"ab", b"", b"xyz", "é".encode()], dtype=object).reshape(2, 2)
    raw = tensors.encode(array, datatype)
    assert raw[:6] == struct.pack("<I", 2) + b"ab"
    decoded = tensors.decode_raw("s", datatype, (2, 2), raw).reshape(-1)
    assert list(decoded) == ["ab", "", "xyz", "é"]  # ONNX string tensors take UTF-8 text
    with pytest.raises(InvalidInput, match="must be UTF-8"):
        tensors.decode_raw("s", datatype, (1,), struct.pack("<I", 1) + b"\xff")


def test_byte_length_mismatch_names_input_and_sizes():
    with pytest.raises(InvalidInput, match=r"input 'x': 8 bytes .* shape \[1, 4\] of FP32 needs 16"):
        tensors.decode_raw("x", tensors.BY_NAME["FP32"], (1, 4), b"\0" * 8)


@pytest.mark.parametrize("raw", [b"\x05\0\0\0ab", b"\x01\0", b"\x01\0\0\0ab"])
def test_malformed_bytes_content_is_refused(raw):
    with pytest.raises(InvalidInput, match="input 's'"):
        tensors.decode_raw("s", tensors.BY_NAME["BYTES"], (1,), raw)


def test_typed_contents_decode_and_count_is_checked():
    fp32 = tensors.BY_NAME["FP32"]
    assert tensors.decode_typed("x", fp32, (2,), [1.5, 2.5]).tolist() == [1.5, 2.5]
    with pytest.raises(InvalidInput, match="3 values in contents, but shape \\[2\\] needs 2"):
        tensors.decode_typed("x", fp32, (2,), [1.0, 2.0, 3.0])
    # REST's JSON data may hold FP16 numbers and BYTES as text
    assert tensors.decode_typed("h", tensors.BY_NAME["FP16"], (1,), [1.5]).dtype == np.float16
    assert tensors.decode_typed("s", tensors.BY_NAME["BYTES"], (2,), ["a", b"b"]).tolist() == ["a", "b"]
    with pytest.raises(InvalidInput, match="not all FP32 numbers"):
        tensors.decode_typed("x", fp32, (2,), [1.0, "two"])


def test_grpc_typed_contents_have_no_fp16_field():
    from kubeinfer_server import protocol
    from kubeinfer_server.servicer import decode_request

    msg = protocol.message("ModelInferRequest")(model_name="m")
    msg.inputs.add(name="h", datatype="FP16", shape=[1])
    with pytest.raises(InvalidInput, match="FP16 must be sent as raw_input_contents"):
        decode_request(msg)


def test_every_onnx_type_maps_to_a_datatype():
    assert tensors.datatype_for_onnx("tensor(float)").name == "FP32"
    with pytest.raises(ValueError, match="no Open Inference Protocol datatype"):
        tensors.datatype_for_onnx("tensor(bfloat16)")
