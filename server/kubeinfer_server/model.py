"""ONNX Runtime models: loading, signature, execution providers, warm-up.

A ``Model`` owns one ONNX Runtime session per instance and runs whole batches
(a dict of input arrays in, a list of output arrays out). It knows nothing of
requests, queues or gRPC. ONNX Runtime fixes a session's threads when it is
made, so serving with other threads means new sessions: ``build_sessions``
makes and warms them, ``swap_sessions`` serves from them from the next batch
on (``resize`` does both when the CPU limit changes).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from kubeinfer_server.cpulimit import cgroup_cpu_limit
from kubeinfer_server.errors import ModelLoadError
from kubeinfer_server.tensors import Datatype, datatype_for_onnx

log = logging.getLogger(__name__)

PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: Datatype
    shape: tuple[int, ...]  # -1 for a dynamic dimension


@dataclass(frozen=True, slots=True)
class ModelOptions:
    providers: tuple[str, ...] = ("cpu",)
    intra_op_threads: int = 0  # 0: from the cgroup CPU limit
    instances: int = 1


def _dims(shape) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)


class Model:
    """A loaded ONNX model: ``instances`` sessions sharing one signature."""

    def __init__(self, name: str, path: str, options: ModelOptions) -> None:
        import onnxruntime as ort

        self.name = name
        self.path = path
        threads = options.intra_op_threads or cgroup_cpu_limit()
        requested = [PROVIDER_NAMES[p] for p in options.providers]
        available = ort.get_available_providers()
        missing = [p for p in requested if p not in available]
        if missing:
            log.warning("Providers %s are not in this onnxruntime build (it has %s)", missing, available)
        self._providers = [p for p in requested if p in available] or ["CPUExecutionProvider"]
        self._instances = options.instances
        # Read on an instance's thread once per batch: replaced whole, never changed in place.
        self.sessions = self.build_sessions(threads, warm=False)
        self.providers = tuple(self.sessions[0].get_providers())
        if self.providers[0] != requested[0]:
            log.warning(
                "Model %s asked for %s but runs on %s: falling back", name, requested[0], self.providers[0]
            )
        try:
            self.inputs = tuple(self._spec(i) for i in self.sessions[0].get_inputs())
            self.outputs = tuple(self._spec(o) for o in self.sessions[0].get_outputs())
        except ModelLoadError as exc:  # the phrase is the operator's InvalidModel marker
            raise ModelLoadError(f"{path} is not a loadable ONNX model: {exc}") from None
        self.batchable = all(s.shape and s.shape[0] == -1 for s in self.inputs + self.outputs)
        log.info(
            "Loaded model %s from %s: providers %s, %d instance(s), %d intra-op threads, batchable=%s",
            name, path, list(self.providers), options.instances, threads, self.batchable,
        )

    @property
    def threads(self) -> int:
        """The intra-op threads of the sessions serving now (as ONNX Runtime holds them)."""
        return self.sessions[0].get_session_options().intra_op_num_threads

    def build_sessions(self, threads: int, warm: bool = True) -> list:
        """New sessions of this model, one per instance, with ``threads`` intra-op threads each,
        run once each when ``warm`` (the signature must be known by then)."""
        import onnxruntime as ort

        sessions = [self._session(ort, self.path, threads, self._providers) for _ in range(self._instances)]
        if warm:
            self.warm_up(sessions)
        return sessions

    def swap_sessions(self, sessions: list) -> list:
        """Serve from ``sessions`` from the next batch on; returns the sessions replaced (a batch
        running on one of them finishes there)."""
        replaced, self.sessions = self.sessions, sessions
        return replaced

    @staticmethod
    def _session(ort, path: str, threads: int, providers: list[str]):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # The event loop shares these cores: spinning intra-op threads would starve it.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            return ort.InferenceSession(path, sess_options=opts, providers=providers)
        except Exception as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"{path} is not a loadable ONNX model: {first_line}") from exc

    @staticmethod
    def _spec(node) -> TensorSpec:
        try:
            datatype = datatype_for_onnx(node.type)
        except ValueError as exc:
            raise ModelLoadError(f"tensor '{node.name}': {exc}") from None
        return TensorSpec(node.name, datatype, _dims(node.shape))

    def run(self, instance: int, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run one batch on one instance; returns every output, in signature order."""
        return self.sessions[instance].run(None, feeds)

    def warm_up(self, sessions: list | None = None) -> None:
        """Run each session (by default, each instance's) once on a one-row input, so the first
        request is not slow."""
        feeds = {spec.name: self._zeros(spec) for spec in self.inputs}
        for session in self.sessions if sessions is None else sessions:
            session.run(None, feeds)

    @staticmethod
    def _zeros(spec: TensorSpec) -> np.ndarray:
        shape = tuple(1 if d == -1 else d for d in spec.shape)
        if spec.datatype.name == "BYTES":
            array = np.empty(shape, dtype=object)
            array.fill(b"")
            return array
        return np.zeros(shape, dtype=spec.datatype.dtype)
