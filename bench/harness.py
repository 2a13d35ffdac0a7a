"""Building blocks of the server benchmark: in-process ONNX Runtime timing,
server processes on loopback, and perf_analyzer runs parsed from its CSV.

Nothing here knows the targets or the table; server_bench.py composes them.
Every process started here gets its own session (process group) and is
stopped with its whole group, so no worker outlives the benchmark.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import statistics
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PERF_ANALYZER = BENCH_DIR / "perf_analyzer"


@dataclass(frozen=True)
class Stat:
    """One measurement: rows (inferences) per second and latency percentiles in ms."""

    throughput: float
    p50_ms: float
    p99_ms: float


@dataclass(frozen=True)
class ServerSide:
    """perf_analyzer's "Server:" section (only when the server advertises statistics), in ms."""

    request_ms: float
    overhead_ms: float
    queue_ms: float
    compute_ms: float  # compute input + infer + output


@dataclass(frozen=True)
class Outcome:
    """A perf_analyzer run: its statistics, or the error it printed."""

    stat: Stat | None
    error: str = ""
    server_side: ServerSide | None = None


# --- in-process ONNX Runtime -------------------------------------------------

def make_session(model_path: Path, threads: int, providers: str = "cpu"):
    """An ONNX Runtime session with the server's settings: ``threads`` intra-op threads, one
    inter-op thread, no spinning, and of ``providers`` (kubeinfer-server's --providers
    names) those this onnxruntime build has."""
    import onnxruntime as ort

    from kubeinfer_server.model import PROVIDER_NAMES
    from kubeinfer_server.settings import parse_providers

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    wanted = [PROVIDER_NAMES[p] for p in parse_providers(providers)]
    available = set(ort.get_available_providers())
    return ort.InferenceSession(str(model_path), options,
                                providers=[p for p in wanted if p in available] or ["CPUExecutionProvider"])


class InProcess:
    """Times sequential ``session.run`` calls, one thread calling.

    The session is ``make_session``'s: the server's thread settings
    (server/kubeinfer_server/model.py: intra_op_num_threads, one inter-op
    thread, no spinning; on a busy machine spinning costs more than it saves)
    and the bench's --providers (``providers`` says what the session got).
    The input is made once, so this is the compute-only limit a server can
    approach at a given batch size.
    """

    def __init__(self, model_path: Path, threads: int, providers: str = "cpu"):
        import numpy as np

        self._session = make_session(model_path, threads, providers)
        self.providers = self._session.get_providers()  # what it really got
        self._input = self._session.get_inputs()[0]
        self._rng = np.random.default_rng(0)

    def measure(self, batch: int, seconds: float) -> Stat:
        dims = [d if isinstance(d, int) and d > 0 else 1 for d in self._input.shape[1:]]
        feed = {self._input.name: self._rng.random([batch, *dims], dtype="float32")}
        for _ in range(5):
            self._session.run(None, feed)
        latencies = []
        start = time.perf_counter()
        while len(latencies) < 20 or time.perf_counter() - start < seconds:
            t0 = time.perf_counter_ns()
            self._session.run(None, feed)
            latencies.append((time.perf_counter_ns() - t0) / 1e6)
        elapsed = time.perf_counter() - start
        return Stat(batch * len(latencies) / elapsed, _percentile(latencies, 50), _percentile(latencies, 99))


def mean_stat(a: Stat, b: Stat) -> Stat:
    return Stat((a.throughput + b.throughput) / 2, (a.p50_ms + b.p50_ms) / 2, (a.p99_ms + b.p99_ms) / 2)


def median_stat(stats: list[Stat]) -> Stat:
    fields = zip(*((s.throughput, s.p50_ms, s.p99_ms) for s in stats), strict=True)
    return Stat(*(statistics.median(field) for field in fields))


def median_outcome(outcomes: list[Outcome]) -> Outcome:
    """Medians of the successful runs; the first error is kept beside them."""
    good = [o for o in outcomes if o.stat]
    error = next((o.error for o in outcomes if o.error), "")
    if not good:
        return Outcome(None, error)
    by_throughput = sorted(good, key=lambda o: o.stat.throughput)
    return Outcome(median_stat([o.stat for o in good]), error, by_throughput[len(good) // 2].server_side)


def _percentile(values: list[float], pct: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1] if len(values) > 1 else values[0]


# --- processes -----------------------------------------------------------------

class Process:
    """A child process in its own session, output to a log file, stopped as a group."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.popen = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, start_new_session=True,
        )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        self._log.flush()
        return self.log_path.read_bytes()[-chars:].decode(errors="replace")

    def stop(self, grace: float = 10.0) -> None:
        if self.alive():
            self._signal(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # Workers may outlive their parent; the group takes them all.
        self._signal(signal.SIGKILL)
        if self.popen.poll() is None:
            self.popen.wait(5)
        self._log.close()

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass


def wait_ready(process: Process, port: int, model: str, timeout: float) -> None:
    """Waits until the model answers ModelReady over gRPC; raises with the log tail otherwise."""
    import tritonclient.grpc as grpcclient

    deadline = time.monotonic() + timeout
    last_error = "no answer"
    while time.monotonic() < deadline:
        if not process.alive():
            raise RuntimeError(f"{process.argv[0]} exited with {process.popen.returncode}:\n{process.log_tail()}")
        try:
            client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
            try:
                if client.is_model_ready(model):
                    return
                last_error = "ModelReady answered false"
            finally:
                client.close()
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            last_error = str(exc).splitlines()[0]
        time.sleep(0.25)
    raise RuntimeError(f"{model} not ready on port {port} after {timeout:.0f} s ({last_error}):\n{process.log_tail()}")


def probe_ready(port: int, model: str, timeout: float = 5.0) -> str:
    """One ModelReady call with a deadline, said in words: for the note on a hung run."""
    import tritonclient.grpc as grpcclient

    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        try:
            ready = client.is_model_ready(model, client_timeout=timeout)
        finally:
            client.close()
    except Exception as exc:  # noqa: BLE001 - the answer is the text
        return f"did not answer ModelReady within {timeout:.0f} s ({str(exc).splitlines()[0]})"
    return f"answered ModelReady ({'ready' if ready else 'not ready'})"


def _scrape(metrics_url: str) -> str:
    """The server's /metrics text (raises OSError when it does not answer)."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        return response.read().decode()


def histogram_totals(metrics_url: str, name: str, model: str) -> tuple[float, float] | None:
    """(sum, count) of a Prometheus histogram for one model, or None when unavailable."""
    try:
        text = _scrape(metrics_url)
    except OSError:
        return None
    totals = {}
    for suffix in ("_sum", "_count"):
        match = re.search(rf'^{name}{suffix}{{[^}}]*model="{re.escape(model)}"[^}}]*}} (\S+)$', text, re.M)
        if not match:
            return None
        totals[suffix] = float(match.group(1))
    return totals["_sum"], totals["_count"]


def server_providers(metrics_url: str, model: str) -> str:
    """The providers label of ``kubeinfer_model_info`` for one model: what the server's session got
    (prometheus-client writes the labels sorted by name: model before providers)."""
    try:
        text = _scrape(metrics_url)
    except OSError as exc:
        return f"unknown ({exc})"
    match = re.search(rf'^kubeinfer_model_info{{[^}}]*model="{re.escape(model)}"[^}}]*providers="([^"]+)"', text, re.M)
    return match.group(1) if match else "unknown (no kubeinfer_model_info for it)"


def http_status(url: str) -> int | str:
    """The status code of GET url, or the error text (only ever 127.0.0.1 here)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError as exc:
        return str(exc)


# --- perf_analyzer ---------------------------------------------------------------

@dataclass(frozen=True)
class Load:
    """How perf_analyzer loads the server for one case."""

    concurrency: int
    batch: int
    streaming: bool = False
    protocol: str = "grpc"  # or "http" (the port given is then the server's REST port)
    tensor_format: str = "binary"  # over http: binary or json tensors, both ways


@dataclass(frozen=True)
class Windows:
    """perf_analyzer's measurement: time windows, stability threshold, trials.

    With a huge stability percentage perf_analyzer measures exactly three
    windows and reports them merged: a fixed-length measurement, the only kind
    that ends predictably on a shared, noisy two-core machine.
    """

    interval_ms: int = 2000
    stability_percentage: int = 10000
    max_trials: int = 3


def run_perf_analyzer(model: str, port: int, load: Load, windows: Windows, csv_path: Path,
                      workers: int, timeout: float) -> Outcome:
    argv = [
        str(PERF_ANALYZER), "-m", model, "-i", load.protocol, "-u", f"127.0.0.1:{port}",
        "--concurrency-range", str(load.concurrency), "-b", str(load.batch),
        "--measurement-mode", "time_windows", "-p", str(windows.interval_ms),
        "-s", str(windows.stability_percentage), "-r", str(windows.max_trials),
        "-f", str(csv_path),
    ]
    if load.streaming:
        argv.append("--streaming")
    if load.protocol == "http":
        argv += ["--input-tensor-format", load.tensor_format, "--output-tensor-format", load.tensor_format]
    env = dict(os.environ)
    if workers > 1:
        # One HTTP/2 connection per client, so SO_REUSEPORT can spread them over workers.
        env["TRITON_CLIENT_GRPC_CHANNEL_MAX_SHARE_COUNT"] = "1"
    csv_path.unlink(missing_ok=True)
    log_path = csv_path.with_suffix(".log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # Before the kill, so that a hang can be told apart: a server that still answers
            # while perf_analyzer waits points at the client or at the one stuck call.
            rc = f"killed after {timeout:.0f} s; meanwhile the target {probe_ready(port, model)}"
        finally:  # also on KeyboardInterrupt: it runs in its own session
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    printed = log_path.read_text(errors="replace")
    if rc != 0 or not csv_path.exists():
        return Outcome(None, f"perf_analyzer rc={rc}: {' '.join(argv)}\n{_tail(printed)}")
    return Outcome(parse_csv(csv_path), server_side=parse_server_side(printed))


_SERVER_SIDE = re.compile(
    r"Avg request latency: (\d+) usec \(overhead (\d+) usec \+ queue (\d+) usec \+ compute input (\d+) usec"
    r" \+ compute infer (\d+) usec \+ compute output (\d+) usec\)"
)


def parse_server_side(printed: str) -> ServerSide | None:
    match = _SERVER_SIDE.search(printed)
    if not match:
        return None
    total, overhead, queue, c_in, c_infer, c_out = (int(g) / 1000 for g in match.groups())
    return ServerSide(total, overhead, queue, c_in + c_infer + c_out)


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def parse_csv(path: Path) -> Stat:
    """Reads the first row of a perf_analyzer CSV (latencies there are in microseconds)."""
    with open(path, newline="") as handle:
        row = next(csv.DictReader(handle))
    return Stat(float(row["Inferences/Second"]), float(row["p50 latency"]) / 1000, float(row["p99 latency"]) / 1000)
