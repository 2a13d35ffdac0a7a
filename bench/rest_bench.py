"""REST beside gRPC: one kubeinfer-server, perf_analyzer over both, in one run.

For each model (devkit.models: mlp by default; linear shows the server's own
cost, with next to no compute) it starts ``kubeinfer-server serve`` once and
drives it with perf_analyzer at concurrency 1, 8 and 64 (single-row
requests), over gRPC, over REST with binary tensors (Triton's extension, what
tritonclient.http sends by default) and over REST with JSON tensors, the
three interleaved case by case, ``--rounds`` times (medians). It prints
inferences per second and p50/p99 latency, and each REST figure as a ratio to
gRPC's in the same round. It always exits 0 unless it cannot run at all.

Usage: python bench/rest_bench.py [--models mlp,linear] [--rounds 2] [--window-ms 2000]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import harness
from harness import Load, Outcome, Windows

from devkit.models import make_all
from devkit.ports import free_port

CONCURRENCIES = (1, 8, 64)
TRANSPORTS = (("grpc", "grpc", "binary"), ("rest binary", "http", "binary"), ("rest json", "http", "json"))
PERF_TIMEOUT_S = 120


def start_server(server_bin: str, model: str, path: Path, workdir: Path) -> tuple[harness.Process, dict[str, int]]:
    ports = {"grpc": free_port(), "http": free_port(), "metrics": free_port()}
    process = harness.Process(
        [server_bin, "serve", "--model", f"{model}={path}", "--host", "127.0.0.1", "--grpc-port", str(ports["grpc"]),
         "--http-port", str(ports["http"]), "--metrics-port", str(ports["metrics"])],
        workdir / f"{model}-server.log")
    harness.wait_ready(process, ports["grpc"], model, 180)
    return process, ports


def measure(model: str, ports: dict[str, int], rounds: int, windows: Windows, workdir: Path) -> dict:
    """(transport, concurrency) -> the Outcome of each round."""
    outcomes: dict[tuple[str, int], list[Outcome]] = {}
    for round_index in range(rounds):
        for concurrency in CONCURRENCIES:
            for name, protocol, tensor_format in TRANSPORTS:
                load = Load(concurrency, 1, protocol=protocol, tensor_format=tensor_format)
                csv = workdir / f"{model}-{name.replace(' ', '-')}-c{concurrency}-r{round_index}.csv"
                outcome = harness.run_perf_analyzer(model, ports[protocol], load, windows, csv, 1, PERF_TIMEOUT_S)
                outcomes.setdefault((name, concurrency), []).append(outcome)
                print(f"  {model} {name} c{concurrency} round {round_index + 1}: "
                      f"{outcome.stat or outcome.error.splitlines()[0]}", flush=True)
    return outcomes


def report(model: str, outcomes: dict) -> str:
    lines = [f"### {model}", "",
             "| case | inf/s | p50 ms | p99 ms | inf/s ÷ gRPC | p50 ÷ gRPC |", "| --- | --- | --- | --- | --- | --- |"]
    for concurrency in CONCURRENCIES:
        grpc_rounds = outcomes[("grpc", concurrency)]
        for name, _, _ in TRANSPORTS:
            rounds = outcomes[(name, concurrency)]
            stats = [o.stat for o in rounds if o.stat]
            if not stats:
                lines.append(f"| {name} c{concurrency} | error: {rounds[0].error.splitlines()[0]} | | | | |")
                continue
            stat = harness.median_outcome(rounds).stat
            assert stat is not None
            # ratios within a round (same moment on a noisy machine), then their median
            ratios = [(o.stat.throughput / g.stat.throughput, o.stat.p50_ms / g.stat.p50_ms)
                      for o, g in zip(rounds, grpc_rounds, strict=True) if o.stat and g.stat]
            rate = statistics.median(r for r, _ in ratios) if ratios else float("nan")
            p50 = statistics.median(p for _, p in ratios) if ratios else float("nan")
            lines.append(f"| {name} c{concurrency} | {stat.throughput:.0f} | {stat.p50_ms:.3f} | {stat.p99_ms:.3f} "
                         f"| {rate:.2f} | {p50:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mlp")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--window-ms", type=int, default=2000)
    parser.add_argument("--server-bin", default=str(Path(sys.executable).parent / "kubeinfer-server"))
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    subprocess.run([str(harness.BENCH_DIR / "install_perf_analyzer.sh")], check=True, stdout=subprocess.DEVNULL)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kubeinfer-rest-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    paths = make_all(workdir / "models")
    tables = []
    for model in args.models.split(","):
        process, ports = start_server(args.server_bin, model, paths[model], workdir)
        try:
            tables.append(report(model, measure(model, ports, args.rounds, Windows(args.window_ms), workdir)))
        finally:
            process.stop()
    print("\n" + "\n".join(tables))
    print(f"work directory: {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
