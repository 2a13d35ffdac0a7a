"""An in-place resize: a real server follows its cgroup's CPU quota with no failed request.

Covers: a server started inside a cgroup of its own with a 1-CPU quota loads its models
with 1 intra-op thread; when the quota becomes 2 CPUs (what the kubelet does on an
in-place pod resize) it rebuilds every model's sessions with 2 threads within a
bounded time, logs it per model (``1 -> 2``), ``kubeinfer_model_intra_op_threads`` says
2, and the old sessions are released (their ONNX Runtime threads end); back to 1 CPU
works the same way; through both, a steady load from several tritonclient clients on
two models sees every request succeed with the right outputs. With ``--workers``,
each worker rebuilds its own sessions and the gauge is not summed over them. A
rebuild that fails (the model file is gone) logs a warning and the loaded sessions
go on serving. With ``--intra-op-threads`` given, a quota change rebuilds nothing.

The cgroup is made here (cgroup v1: under ``/sys/fs/cgroup/cpu``; v2: a child of the
root with ``+cpu`` in its ``subtree_control``) and removed after. Without root, the cpu
controller or two CPUs the tests skip, saying why; under CI=true they fail instead.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tc

from devkit.models import linear, slow
from devkit.ports import free_port
from devkit.processes import spawn
from devkit.waiting import wait_for
from support.required import missing
from support.serverproc import BIN, ServerProcess

ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100000
WIDTH = 512  # the slow model's: about a millisecond a row on one thread, so batches overlap the swap
CLIENTS = 4
LOAD_LIMIT_S = 25.0  # the load stops by then whatever happens
LOAD_MAX_REQUESTS = 20000


class CpuCgroup:
    """A cgroup of its own under the cpu controller, with a CPU quota to change."""

    def __init__(self) -> None:
        name = f"kubeinfer-test-{secrets.token_hex(4)}"
        self.v2 = (ROOT / "cgroup.controllers").exists()
        self.parent = ROOT if self.v2 else ROOT / "cpu"
        self.path = self.parent / name
        if self.v2:
            if "cpu" not in (ROOT / "cgroup.controllers").read_text().split():
                raise OSError("the cpu controller is not available on cgroup v2's root")
            if "cpu" not in (ROOT / "cgroup.subtree_control").read_text().split():
                (ROOT / "cgroup.subtree_control").write_text("+cpu")
        self.path.mkdir()

    @property
    def procs(self) -> Path:
        return self.path / "cgroup.procs"

    def set_cpus(self, cpus: int) -> None:
        if self.v2:
            (self.path / "cpu.max").write_text(f"{cpus * PERIOD_US} {PERIOD_US}")
        else:
            (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (self.path / "cpu.cfs_quota_us").write_text(str(cpus * PERIOD_US))

    def remove(self) -> None:
        """Move whatever still runs here to the parent, then remove the cgroup."""
        deadline = time.monotonic() + 10
        while True:
            for pid in self.procs.read_text().split():
                try:
                    (self.parent / "cgroup.procs").write_text(pid)
                except OSError:  # exited meanwhile
                    pass
            try:
                self.path.rmdir()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


@pytest.fixture
def cpu_cgroup():
    if len(os.sched_getaffinity(0)) < 2:
        missing("test_resize needs 2 CPUs: it raises a 1-CPU quota to 2")
    why = f"test_resize could not make a cgroup with a CPU quota (needs root and a writable {ROOT})"
    try:
        cgroup = CpuCgroup()
    except OSError as exc:
        missing(f"{why}: {exc}")
    try:
        cgroup.set_cpus(1)
    except OSError as exc:
        cgroup.remove()
        missing(f"{why}: {exc}")
    try:
        yield cgroup
    finally:
        cgroup.remove()


class ServerInCgroup(ServerProcess):
    """A server process that enters ``cgroup`` before it execs, so it loads under the cgroup's quota."""

    def __init__(self, cgroup: CpuCgroup, *args: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.cgroup = cgroup

    def launch(self):
        script = 'echo $$ > "$0" && exec "$@"'
        self.proc = spawn(["sh", "-c", script, str(self.cgroup.procs), str(BIN), *self.args], self.log_path,
                          env=self.env)
        return self.proc


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resize")
    return {"linear": linear(folder / "linear.onnx"), "slow": slow(folder / "slow.onnx", width=WIDTH, layers=8)}


def _expected(models) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """For each model, a few inputs and their outputs as ONNX Runtime computes them in this process."""
    rng = np.random.default_rng(7)
    cases: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    weights = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)  # devkit's linear
    xs = [rng.standard_normal((rows, 4)).astype(np.float32) for rows in (1, 2, 3)]
    cases["linear"] = [(x, x @ weights) for x in xs]
    session = ort.InferenceSession(models["slow"], providers=["CPUExecutionProvider"])
    xs = [rng.standard_normal((rows, WIDTH)).astype(np.float32) for rows in (1, 2)]
    cases["slow"] = [(x, session.run(None, {"x": x})[0]) for x in xs]
    return cases


class Load:
    """``CLIENTS`` threads, each with a client of its own, calling both models in turn until stopped
    (or ``LOAD_LIMIT_S``, or ``LOAD_MAX_REQUESTS`` in all); every answer is checked."""

    def __init__(self, url: str, cases) -> None:
        self.url, self.cases = url, cases
        self.answered = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(CLIENTS)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(LOAD_LIMIT_S)

    def _client(self, index: int) -> None:
        client = tc.InferenceServerClient(self.url)
        deadline = time.monotonic() + LOAD_LIMIT_S
        names = [("linear", "x", "logits"), ("slow", "x", "y")]
        call = index
        try:
            while not self._stop.is_set() and time.monotonic() < deadline and self.answered < LOAD_MAX_REQUESTS:
                model, input_name, output_name = names[call % 2]
                x, want = self.cases[model][call % len(self.cases[model])]
                call += 1
                self._record(model, self._call(client, model, input_name, output_name, x, want))
        finally:
            client.close()

    @staticmethod
    def _call(client, model, input_name, output_name, x, want) -> str | None:
        tensor = tc.InferInput(input_name, list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        try:
            got = client.infer(model, [tensor], client_timeout=10).as_numpy(output_name)
        except Exception as exc:  # every failure is the test's business: kept, asserted on
            return f"{type(exc).__name__}: {exc}"
        if not np.allclose(got, want, rtol=1e-4, atol=1e-5):
            return f"wrong output: {got!r} != {want!r}"
        return None

    def _record(self, model: str, failure: str | None) -> None:
        with self._lock:
            self.answered += 1
            if failure is not None:
                self.failures.append(f"{model}: {failure}")

    def more_answers(self, count: int) -> None:
        """Wait until ``count`` more calls than now have been answered."""
        target = self.answered + count
        wait_for(lambda: self.answered >= target, timeout=10, what=f"{count} more answers")


def _threads_gauge(server) -> dict[str, float]:
    text = urllib.request.urlopen(f"{server.metrics_url}/metrics", timeout=5).read().decode()
    return {m: float(v) for m, v in re.findall(r'^kubeinfer_model_intra_op_threads\{model="(\w+)"\} (\S+)$',
                                               text, re.M)}


def _rebuilt(server, before: int, after: int) -> int:
    return len(re.findall(rf"Rebuilt model \w+'s sessions for the new CPU limit: {before} -> {after} intra-op "
                          r"threads", server.log()))


def _infer_linear(server) -> np.ndarray:
    client = tc.InferenceServerClient(server.url)
    try:
        x = tc.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.ones((1, 4), np.float32))
        return client.infer("linear", [x]).as_numpy("logits")
    finally:
        client.close()


def _os_threads(server) -> int:
    return len(os.listdir(f"/proc/{server.proc.pid}/task"))


def test_the_server_follows_an_in_place_resize_without_a_failed_request(cpu_cgroup, models):
    cases = _expected(models)
    server = ServerInCgroup(cpu_cgroup, f"--model=linear={models['linear']}", f"--model=slow={models['slow']}",
                            "--cpu-limit-poll-seconds=0.2", "--access-log-sample-rate=0")
    with server:
        assert str(server.proc.pid) in cpu_cgroup.procs.read_text().split()
        assert len(re.findall(r"Loaded model \w+ .* 1 intra-op threads", server.log())) == 2, server.log()
        assert _threads_gauge(server) == {"linear": 1.0, "slow": 1.0}
        with Load(server.url, cases) as load:
            load.more_answers(50)
            one_cpu_threads = _os_threads(server)

            cpu_cgroup.set_cpus(2)
            wait_for(lambda: _rebuilt(server, 1, 2) == 2, timeout=15, what="both models rebuilt with 2 threads")
            assert _threads_gauge(server) == {"linear": 2.0, "slow": 2.0}
            load.more_answers(50)

            cpu_cgroup.set_cpus(1)
            wait_for(lambda: _rebuilt(server, 2, 1) == 2, timeout=15, what="both models rebuilt with 1 thread")
            assert _threads_gauge(server) == {"linear": 1.0, "slow": 1.0}
            load.more_answers(50)
            # each 2-thread session had one ONNX Runtime pool thread: released with its session
            wait_for(lambda: _os_threads(server) <= one_cpu_threads, timeout=5,
                     what=f"the server back at {one_cpu_threads} threads (has {_os_threads(server)})")
        assert load.failures == [], load.failures[:5]
        assert load.answered >= 150
    assert "Kept model" not in server.log() and "Traceback" not in server.log(), server.log()


def test_every_worker_follows_the_limit(cpu_cgroup, models):
    server = ServerInCgroup(cpu_cgroup, f"--model=linear={models['linear']}", "--workers=2",
                            "--cpu-limit-poll-seconds=0.2", grpc_port=free_port(), http_port=free_port())
    with server:
        cpu_cgroup.set_cpus(2)
        wait_for(lambda: _rebuilt(server, 1, 2) == 2, timeout=15, what="each worker's linear rebuilt")
        assert sorted(re.findall(r"\[(w\d)\]: Rebuilt model linear", server.log())) == ["w0", "w1"]
        # the workers' snapshots are merged: the threads of a session, not a sum over workers
        wait_for(lambda: _threads_gauge(server) == {"linear": 2.0}, timeout=5, what="the gauge at 2")
        assert _infer_linear(server).shape == (1, 3)


def test_a_failed_rebuild_keeps_the_sessions_serving(cpu_cgroup, models, tmp_path):
    model = tmp_path / "linear.onnx"
    model.write_bytes(Path(models["linear"]).read_bytes())
    server = ServerInCgroup(cpu_cgroup, f"--model=linear={model}", "--cpu-limit-poll-seconds=0.2")
    with server:
        model.unlink()  # new sessions cannot be built now; the loaded ones do not need the file
        cpu_cgroup.set_cpus(2)
        wait_for(lambda: "Kept model linear on 1 intra-op threads" in server.log(), timeout=15,
                 what="the warning that the rebuild failed")
        assert _threads_gauge(server) == {"linear": 1.0}
        assert _infer_linear(server).shape == (1, 3)
    assert "Rebuilt model" not in server.log() and "Traceback" not in server.log(), server.log()


def test_explicit_intra_op_threads_are_kept(cpu_cgroup, models):
    server = ServerInCgroup(cpu_cgroup, f"--model=linear={models['linear']}", "--intra-op-threads=1",
                            "--cpu-limit-poll-seconds=0.1")
    with server:
        cpu_cgroup.set_cpus(2)
        time.sleep(1.0)  # ten polls, had there been a watch
        assert _threads_gauge(server) == {"linear": 1.0}
    assert "Rebuilt model" not in server.log(), server.log()
