"""How ``tune`` loads a server for one point: Triton's perf_analyzer when found, else the built-in client.

Both run as processes of their own, pinned to the CPUs the server was not
given (all of them when it has every one: then client and server share, and
the point says so), with single-row requests at a fixed concurrency for a
fixed window. ``find_perf_analyzer`` looks on PATH, then in
``$PERF_ANALYZER_HOME/bin`` (default ``~/.cache/kubeinfer/perf_analyzer``,
where ``bench/install_perf_analyzer.sh`` puts it, its libraries in ``lib/``).
perf_analyzer measures three fixed windows (a huge stability percentage) and
reports them merged, read from its CSV (microseconds); the built-in client is
``tune_load``. Either way the result is a ``Measurement``, or
``LoadFailed`` with the client's own words.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kubeinfer_server.tune_server import pinned

CLIENTS = ("auto", "perf_analyzer", "builtin")
STARTUP_SLACK_S = 20.0  # what a client may take beyond its window before it is killed


class LoadFailed(Exception):
    """The load generator did not produce a measurement."""


@dataclass(frozen=True, slots=True)
class Measurement:
    throughput: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    first_error: str = ""


@dataclass(frozen=True, slots=True)
class Load:
    target: str  # HOST:PORT of the gRPC port
    model: str
    concurrency: int
    seconds: float  # the measured window
    warmup: float
    shapes: dict[str, tuple[int, ...]]  # perf_analyzer's --shape per input: every dimension, -1 as 1


def find_perf_analyzer(env: dict[str, str] | None = None) -> tuple[str, dict[str, str]] | None:
    """perf_analyzer's path and the environment it runs in, or None when it is not installed."""
    env = dict(os.environ if env is None else env)
    found = shutil.which("perf_analyzer", path=env.get("PATH"))
    if found:
        return found, env
    home = Path(env.get("PERF_ANALYZER_HOME") or Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                / "kubeinfer" / "perf_analyzer")
    binary = home / "bin" / "perf_analyzer"
    if not os.access(binary, os.X_OK):
        return None
    libraries = str(home / "lib")
    env["LD_LIBRARY_PATH"] = f"{libraries}:{env['LD_LIBRARY_PATH']}" if env.get("LD_LIBRARY_PATH") else libraries
    return str(binary), env


def run_builtin(load: Load, cores: Sequence[int]) -> Measurement:
    argv = [sys.executable, "-m", "kubeinfer_server.tune_load", load.target, load.model,
            "--concurrency", str(load.concurrency), "--seconds", str(load.seconds), "--warmup", str(load.warmup)]
    done = _run(argv, cores, load.seconds + load.warmup + STARTUP_SLACK_S, None)
    if done.returncode != 0:
        raise LoadFailed(f"the built-in client exited with {done.returncode}: {_last_line(done.stderr)}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return Measurement(result["throughput"], result["p50_ms"], result["p99_ms"], result["requests"],
                       result["errors"], result["first_error"])


def run_perf_analyzer(found: tuple[str, dict[str, str]], load: Load, cores: Sequence[int]) -> Measurement:
    binary, env = found
    interval_ms = max(100, round(load.seconds * 1000 / 3))
    with tempfile.TemporaryDirectory(prefix="kubeinfer-tune-pa-") as scratch:
        report = Path(scratch) / "point.csv"
        argv = [binary, "-m", load.model, "-i", "grpc", "-u", load.target, "-b", "1",
                "--concurrency-range", str(load.concurrency), "--measurement-mode", "time_windows",
                "-p", str(interval_ms), "-s", "10000", "-r", "3", "-f", str(report)]
        for name, shape in load.shapes.items():
            argv += ["--shape", f"{name}:{','.join(str(d) for d in shape)}"]
        done = _run(argv, cores, load.seconds + STARTUP_SLACK_S, env)
        if done.returncode != 0 or not report.exists():
            raise LoadFailed(f"perf_analyzer exited with {done.returncode}: {_last_line(done.stdout + done.stderr)}")
        with open(report, newline="") as handle:
            row = next(csv.DictReader(handle))
    count = re.search(r"Client:\s+Request count: (\d+)", done.stdout)
    return Measurement(float(row["Inferences/Second"]), float(row["p50 latency"]) / 1000,
                       float(row["p99 latency"]) / 1000, int(count[1]) if count else 0, 0)


def _run(argv: list[str], cores: Sequence[int], timeout: float, env: dict[str, str] | None):
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                              stdin=subprocess.DEVNULL, preexec_fn=pinned(cores))
    except subprocess.TimeoutExpired:
        raise LoadFailed(f"{Path(argv[0]).name} did not finish within {timeout:.0f} s") from None
    except OSError as exc:
        raise LoadFailed(f"{argv[0]}: {exc.strerror or exc}") from None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(nothing printed)"
