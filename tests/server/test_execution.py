"""The execution part on its own: a model loaded and run in batches, with no event loop,
batcher or servicer (what the batch runner builds on); and the pure request validation.

Covers: ``Executor.run`` concatenates the requests of a batch, runs once and gives each
request exactly its own rows back (views of the batch's outputs), equal to ONNX Runtime
run on each request alone; the timings it reports add up; ``Signature.decode`` refuses
what does not fit the model with a message naming the input and the expectation, and
``Signature.select`` maps output names to positions (none: every output).
"""

from __future__ import annotations

import asyncio

import numpy as np
import onnxruntime as ort
import pytest

from devkit.models import linear
from kubeinfer_server.errors import InvalidInput
from kubeinfer_server.execution import Executor
from kubeinfer_server.model import Model, ModelOptions
from kubeinfer_server.validation import Feeds, InputTensor, Signature


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Model:
    path = linear(tmp_path_factory.mktemp("models") / "linear.onnx")
    return Model("linear", path, ModelOptions(intra_op_threads=1))


def test_a_batch_runs_once_and_each_request_gets_its_own_rows(model):
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()  # no event loop anywhere
    rng = np.random.default_rng(3)
    requests = [rng.standard_normal((rows, 4)).astype(np.float32) for rows in (1, 3, 2)]
    ran = Executor(model).run([Feeds({"x": x}, len(x)) for x in requests])

    session = ort.InferenceSession(model.path)
    assert ran.rows == 6 and len(ran.outputs) == 3
    for x, outputs in zip(requests, ran.outputs, strict=True):
        alone = session.run(None, {"x": x})
        assert [o.shape for o in outputs] == [(len(x), 3), (len(x), 3)]
        for got, want in zip(outputs, alone, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-6)
    first, last = ran.outputs[0][0], ran.outputs[2][0]
    assert first.base is not None and first.base is last.base  # views of one batch output
    assert ran.compute_s == pytest.approx(sum(ran.timings)) and min(ran.timings) >= 0


def test_a_lone_request_is_its_own_batch(model):
    x = np.ones((4, 4), np.float32)
    ran = Executor(model).run([Feeds({"x": x}, 4)])
    assert ran.rows == 4 and ran.outputs[0][0].shape == (4, 3)


def _signature(model: Model) -> Signature:
    return Signature(model.inputs, model.outputs, batched=True)


def test_the_signature_decodes_a_request_that_fits(model):
    feeds = _signature(model).decode([InputTensor("x", "FP32", (2, 4), np.zeros(8, np.float32).tobytes())])
    assert feeds.rows == 2 and feeds.arrays["x"].shape == (2, 4)


@pytest.mark.parametrize(("tensor", "message"), [
    (InputTensor("y", "FP32", (1, 4), bytes(16)), "unknown input 'y'; the model expects x (FP32 [-1, 4])"),
    (InputTensor("x", "FP64", (1, 4), bytes(32)), "input 'x' is FP64 but the model expects FP32"),
    (InputTensor("x", "FP32", (1, 5), bytes(20)), "input 'x' has shape [1, 5]; the model expects [-1, 4]"),
    (InputTensor("x", "FP32", (1, 4), bytes(12)), "12 bytes of raw content"),
])
def test_the_signature_refuses_what_does_not_fit(model, tensor, message):
    with pytest.raises(InvalidInput, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        _signature(model).decode([tensor])


def test_the_signature_refuses_a_repeated_or_missing_input(model):
    x = InputTensor("x", "FP32", (1, 4), bytes(16))
    with pytest.raises(InvalidInput, match="given twice"):
        _signature(model).decode([x, x])
    with pytest.raises(InvalidInput, match="missing input 'x'"):
        _signature(model).decode([])


def test_the_signature_selects_outputs_by_name(model):
    signature = _signature(model)
    assert signature.select(()) == [0, 1]
    assert signature.select(("relu",)) == [1]
    with pytest.raises(InvalidInput, match="unknown output 'nope'; the model's outputs are logits, relu"):
        signature.select(("nope",))
