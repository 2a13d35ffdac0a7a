"""Server benchmark: kubeinfer-server against in-process ONNX Runtime and the RPC ceiling.

For each sample model (devkit.models: mlp, cnn, and on request linear,
which has next to no compute) one run:

1. times in-process ONNX Runtime with the server's thread settings (the
   compute limit) at batch 1, 8, 32 and 64;
2. starts the echo server (bench/echo_server.py: same signature, no compute,
   same process count: the RPC ceiling) and ``kubeinfer-server serve``;
3. drives both with perf_analyzer, interleaved case by case so that load from
   elsewhere on the machine hits both alike: concurrency 1, 8, 64 with
   single-row requests, 64 over ModelStreamInfer, and batch-32 requests;
4. prints, per model, the absolute numbers, each one as a ratio to the
   in-process limit and to the echo ceiling, and PASS/FAIL per target.

It always exits 0 unless it cannot run at all: it is a benchmark, not a test.

Usage: python bench/server_bench.py [--models mlp,cnn] [--server-args "--max-queue-delay-us 500"] [--rounds 2]
       [--markdown bench/RESULTS.md] [--window-ms 2000]
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import harness
from harness import Outcome, Windows
from report import (
    CASES,
    MEASURED_BATCHES,
    Case,
    ModelResult,
    reference_batch,
    render_model,
    render_targets,
    write_markdown,
)

from devkit.models import make_all
from devkit.ports import free_port
from kubeinfer_server import eventloop

PERF_TIMEOUT_S = 120
READY_TIMEOUT_S = 180


@dataclass(frozen=True)
class Settings:
    models: tuple[str, ...]
    server_bin: str
    server_args: tuple[str, ...]
    providers: str  # the server's --providers, also the in-process session's
    threads: int
    workers: int
    event_loop: str  # the server's --event-loop, resolved; the echo ceiling runs on the same loop
    max_batch_size: int
    windows: Windows
    in_process_seconds: float
    rounds: int
    workdir: Path
    markdown: Path | None


@dataclass
class Servers:
    """The two targets for one model; stopped together."""

    echo: harness.Process | None = None
    server: harness.Process | None = None
    ports: dict[str, int] = field(default_factory=dict)

    def stop(self) -> None:
        for proc in (self.echo, self.server):
            if proc is not None:
                proc.stop()


def _flag(args: list[str], name: str, env: str, default: int) -> int:
    """The value of an integer server flag as the server will see it (flag, then env)."""
    return int(_text_flag(args, name, env, str(default)))


def _text_flag(args: list[str], name: str, env: str, default: str) -> str:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return os.environ.get(env, default)


def _install_perf_analyzer() -> None:
    env = dict(os.environ, PYTHON=sys.executable)
    subprocess.run(["bash", str(harness.BENCH_DIR / "install_perf_analyzer.sh")], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def _start(settings: Settings, model: str, path: Path) -> Servers:
    servers = Servers()
    logs = settings.workdir
    try:
        port, metrics = free_port(), free_port()
        servers.server = harness.Process(
            [settings.server_bin, "serve", "--model", f"{model}={path}", "--host", "127.0.0.1",
             "--grpc-port", str(port), "--http-port", str(free_port()), "--metrics-port", str(metrics),
             *([] if "--intra-op-threads" in " ".join(settings.server_args)
               else ["--intra-op-threads", str(settings.threads)]),
             "--providers", settings.providers,
             *settings.server_args],
            logs / f"{model}-server.log",
        )
        echo_port = free_port()
        servers.echo = harness.Process(
            [sys.executable, str(harness.BENCH_DIR / "echo_server.py"), "--model", f"{model}={path}",
             "--port", str(echo_port), "--workers", str(settings.workers), "--event-loop", settings.event_loop,
             "--max-batch-size", str(max(settings.max_batch_size, 1))],
            logs / f"{model}-echo.log",
        )
        servers.ports = {"server": port, "echo": echo_port, "metrics": metrics}
        harness.wait_ready(servers.echo, echo_port, model, READY_TIMEOUT_S)
        harness.wait_ready(servers.server, port, model, READY_TIMEOUT_S)
    except BaseException:
        servers.stop()
        raise
    return servers


def _bench_model(settings: Settings, model: str, path: Path) -> ModelResult:
    sys.stderr.write(f"[{model}] timing in-process ONNX Runtime ({settings.threads} intra-op threads)\n")
    result = ModelResult(model)
    in_process = harness.InProcess(path, settings.threads, settings.providers)
    result.in_process = {b: in_process.measure(b, settings.in_process_seconds) for b in MEASURED_BATCHES}
    sys.stderr.write(f"[{model}] starting kubeinfer-server and the echo server ({settings.workers} worker(s))\n")
    try:
        servers = _start(settings, model, path)
    except RuntimeError as exc:
        result.notes.append(f"server did not start: {exc}")
        return result
    try:
        running_on = harness.server_providers(f"http://127.0.0.1:{servers.ports['metrics']}/metrics", model)
        result.notes.append(f"execution providers: in-process {','.join(in_process.providers)}; "
                            f"server {running_on} (asked for {settings.providers})")
        readyz = harness.http_status(f"http://127.0.0.1:{servers.ports['metrics']}/readyz")
        if readyz != 200:
            result.notes.append(f"GET /readyz answered {readyz} while the model was ready over gRPC")
        rounds: dict[str, list[CaseRun]] = {case.label: [] for case in CASES}
        for round_no in range(settings.rounds):
            for case in CASES:
                sys.stderr.write(f"[{model}] round {round_no + 1}/{settings.rounds} {case.label}: "
                                 "in-process, echo, server\n")
                rounds[case.label].append(_run_case(settings, model, servers, in_process, case, round_no))
                if not servers.server.alive():
                    result.notes.append(f"kubeinfer-server exited during {case.label}:\n{servers.server.log_tail()}")
                    break
            if not servers.server.alive():
                break
        _combine(result, rounds)
    finally:
        servers.stop()
    return result


@dataclass(frozen=True)
class CaseRun:
    """One case measured once: in-process reference, echo, server, executed batch size."""

    reference: harness.Stat
    echo: Outcome
    server: Outcome
    mean_batch: float | None


def _run_case(settings: Settings, model: str, servers: Servers, in_process: harness.InProcess,
              case: Case, round_no: int) -> CaseRun:
    # The in-process reference is timed right before and right after the pair and averaged.
    ref_batch = reference_batch(case.load, settings.max_batch_size)
    ref_before = in_process.measure(ref_batch, settings.in_process_seconds / 2)
    echo = _measure(settings, model, servers, "echo", case, round_no)
    metrics_url = f"http://127.0.0.1:{servers.ports['metrics']}/metrics"
    before = harness.histogram_totals(metrics_url, "kubeinfer_batch_size", model)
    server = _measure(settings, model, servers, "server", case, round_no)
    after = harness.histogram_totals(metrics_url, "kubeinfer_batch_size", model)
    reference = harness.mean_stat(ref_before, in_process.measure(ref_batch, settings.in_process_seconds / 2))
    mean_batch = (after[0] - before[0]) / (after[1] - before[1]) if before and after and after[1] > before[1] else None
    return CaseRun(reference, echo, server, mean_batch)


def _combine(result: ModelResult, rounds: dict[str, list[CaseRun]]) -> None:
    """Per case, the median over rounds of every number; errors are kept."""
    for label, runs in rounds.items():
        if not runs:
            continue
        result.reference[label] = harness.median_stat([r.reference for r in runs])
        result.runs[(label, "echo")] = harness.median_outcome([r.echo for r in runs])
        result.runs[(label, "server")] = harness.median_outcome([r.server for r in runs])
        batches = [r.mean_batch for r in runs if r.mean_batch is not None]
        if batches:
            result.mean_batch[label] = statistics.median(batches)


def _measure(settings: Settings, model: str, servers: Servers, target: str, case: Case, round_no: int) -> Outcome:
    csv_path = settings.workdir / f"{model}-{target}-{case.label.replace(' ', '_')}-r{round_no + 1}.csv"
    outcome = harness.run_perf_analyzer(model, servers.ports[target], case.load, settings.windows, csv_path,
                                        settings.workers, PERF_TIMEOUT_S)
    if outcome.stat is not None or "rc=killed" not in outcome.error:
        return outcome
    # A hung run (seen rarely, with the echo's stream) is tried once more; the hang stays on record.
    retry = harness.run_perf_analyzer(model, servers.ports[target], case.load, settings.windows,
                                      csv_path.with_name(csv_path.stem + "-retry.csv"), settings.workers,
                                      PERF_TIMEOUT_S)
    said = "the retry measured it" if retry.stat is not None else f"the retry failed too:\n{retry.error}"
    return replace(retry, error=f"{outcome.error}\n-> {said}")


def _parse(argv: list[str] | None) -> Settings:
    parser = argparse.ArgumentParser(description="kubeinfer-server vs in-process ONNX Runtime and the RPC ceiling.")
    parser.add_argument("--models", default="mlp,cnn",
                        help="comma-separated sample models (mlp, cnn; linear: next to no compute, "
                             "the server's own cost per request)")
    parser.add_argument("--server-args", default="", help="extra kubeinfer-server serve flags, one shell string")
    parser.add_argument("--server-bin", default=str(Path(sys.executable).parent / "kubeinfer-server"))
    parser.add_argument("--intra-op-threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="ONNX Runtime intra-op threads, in-process and passed to the server")
    parser.add_argument("--providers", default="cpu",
                        help="execution providers in order of preference (as kubeinfer-server's --providers), "
                             "for the server and the in-process session: cuda,cpu on a GPU machine")
    parser.add_argument("--window-ms", type=int, default=2000, help="perf_analyzer measurement window")
    parser.add_argument("--stability-percentage", type=int, default=10000,
                        help="perf_analyzer -s; the default makes every case exactly three windows")
    parser.add_argument("--max-trials", type=int, default=3, help="perf_analyzer -r")
    parser.add_argument("--in-process-seconds", type=float, default=2.0, help="timing per batch size")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat every case this many times and report medians (about 3.5 min per round)")
    parser.add_argument("--workdir", type=Path, help="models, logs and CSVs (default: a new temporary directory)")
    parser.add_argument("--markdown", type=Path, help="also write the tables as a section of this file")
    args = parser.parse_args(argv)
    server_args = tuple(shlex.split(args.server_args))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kubeinfer-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    return Settings(
        models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
        server_bin=args.server_bin,
        server_args=server_args,
        providers=args.providers,
        threads=args.intra_op_threads,
        workers=_flag(list(server_args), "--workers", "KUBEINFER_WORKERS", 1),
        event_loop=eventloop.runner(_text_flag(list(server_args), "--event-loop", "KUBEINFER_EVENT_LOOP", "auto"))[0],
        max_batch_size=_flag(list(server_args), "--max-batch-size", "KUBEINFER_MAX_BATCH_SIZE", 32),
        windows=Windows(args.window_ms, args.stability_percentage, args.max_trials),
        in_process_seconds=args.in_process_seconds,
        rounds=args.rounds,
        workdir=workdir,
        markdown=args.markdown,
    )


def main(argv: list[str] | None = None) -> int:
    settings = _parse(argv)
    # SIGTERM unwinds like Ctrl-C, so every server started here is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    _install_perf_analyzer()
    paths = make_all(settings.workdir / "models")
    header = (f"kubeinfer server bench {datetime.datetime.now().isoformat(timespec='seconds')}: "
              f"{os.cpu_count()} CPUs, providers {settings.providers}, intra-op threads {settings.threads}, "
              f"workers {settings.workers}, "
              f"event loop {settings.event_loop} (server and echo), "
              f"server args: {' '.join(settings.server_args) or '(defaults)'}; "
              f"perf_analyzer {settings.windows.max_trials} x {settings.windows.interval_ms} ms windows, "
              f"median of {settings.rounds} round(s)")
    sections = []
    for model in settings.models:
        result = _bench_model(settings, model, paths[model])
        text = render_model(result, CASES, settings.max_batch_size, markdown=False)
        text += "\n" + render_targets(result)
        sys.stdout.write(f"\n{text}\n")
        sys.stdout.flush()
        sections.append((result, text))
    sys.stdout.write(f"\n{header}\nLogs and CSVs: {settings.workdir}\n")
    if settings.markdown:
        write_markdown(settings.markdown, header, [
            render_model(r, CASES, settings.max_batch_size, markdown=True)
            + "\n" + render_targets(r, markdown=True)
            for r, _ in sections
        ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
