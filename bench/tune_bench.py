"""Tuning: what ``kubeinfer-server tune``'s choice buys over serve's defaults, in throughput per CPU.

For each model (devkit.models' ``mlp`` and ``cnn`` by default):

1. **sweep**: ``kubeinfer-server tune MODEL --p99-ms X`` with its default
   sweep and budget; serve's default configuration (intra-op threads = the
   CPUs, one instance, max batch size 32, at the largest CPU count) is
   measured first in the same run, under the same bound;
2. **re-measure**: the sweep picks the best of many noisy points, so its
   figure for the winner is biased upwards (and the default's is one point).
   The chosen configuration and the default one, each at the concurrency the
   sweep found best for it under the bound, are measured again, alternately,
   ``--rounds`` times (each a one-point ``tune`` run: a fresh server, the same
   client, the same CPU pinning); the medians are the figures to read.

It prints, per model: the default's and the chosen one's configuration and
throughput per CPU (sweep and re-measured), the gain (chosen over default,
re-measured medians), and tune's own choice among the points at the default's
CPU count (the flags' share of the gain, apart from the CPU count's). It always exits
0 unless it cannot run at all.

Usage: python bench/tune_bench.py [--models mlp,cnn] [--p99-ms 50] [--budget-seconds 120] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from devkit.models import make_all
from kubeinfer_server.tune_plan import Config
from kubeinfer_server.tune_report import Point, choose, point_dict

SERVER_BIN = Path(sys.executable).parent / "kubeinfer-server"
CONFIG_KEYS = ("cpus", "intra_op_threads", "instances", "max_batch_size")


def tune(model: Path, report: Path, *args: str, timeout: float = 1800) -> dict:
    done = subprocess.run([str(SERVER_BIN), "tune", str(model), "--report", str(report), "--log-level", "warning",
                           *args], capture_output=True, text=True, timeout=timeout)
    if done.returncode not in (0, 3):
        raise RuntimeError(f"kubeinfer-server tune failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(report.read_text())


def one_point(model: Path, report: Path, point: dict, p99_ms: float, seconds: float) -> dict:
    """The configuration of ``point`` measured again at its concurrency, alone."""
    args = ["--cpus", str(point["cpus"]), "--threads", str(point["intra_op_threads"]),
            "--instances", str(point["instances"]), "--max-batch-size", str(point["max_batch_size"]),
            "--concurrency", str(point["concurrency"]), "--p99-ms", str(p99_ms), "--point-seconds", str(seconds),
            "--no-compare-default", "--confirmations", "0", "--budget-seconds", "60"]
    return tune(model, report, *args)["points"][0]


def label(point: dict) -> str:
    return (f"{point['cpus']} CPU, {point['intra_op_threads']} thr, {point['instances']} inst, "
            f"batch {point['max_batch_size']}, c{point['concurrency']}")


def best_at(result: dict, cpus: int) -> dict | None:
    """tune's own choice among the points at ``cpus`` CPUs (measured again or not)."""
    points = [Point(Config(*(p[k] for k in CONFIG_KEYS)), p["concurrency"], p["throughput"], p["p50_ms"],
                    p["p99_ms"], p["memory_bytes"], p["requests"], p["errors"], phase=p["phase"])
              for p in result["points"] if p["cpus"] == cpus]
    best = choose(points, result["p99_ms"]).chosen
    return point_dict(best, result["p99_ms"]) if best else None


def remeasure(model: Path, workdir: Path, sides: dict[str, dict], p99_ms: float, rounds: int,
              seconds: float) -> dict[str, list[dict]]:
    """Each side's point measured ``rounds`` times, the sides alternating."""
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for round_ in range(rounds):
        for side, point in sides.items():
            runs[side].append(one_point(model, workdir / f"{model.stem}-{side}-{round_}.json", point, p99_ms, seconds))
            print(f"    {side} round {round_ + 1}: {runs[side][-1]['throughput_per_cpu']:.0f} inf/s/CPU, "
                  f"p99 {runs[side][-1]['p99_ms']:.1f} ms", flush=True)
    return runs


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def row(model: str, result: dict, runs: dict[str, list[dict]], elapsed: float) -> str:
    default, chosen = result["default"]["best"], result["chosen"]
    same_cpus = best_at(result, default["cpus"])
    tpc = {side: median(side_runs, "throughput_per_cpu") for side, side_runs in runs.items()}
    p99 = {side: median(side_runs, "p99_ms") for side, side_runs in runs.items()}
    flags_gain = same_cpus["throughput_per_cpu"] / default["throughput_per_cpu"] if same_cpus else float("nan")
    confirmed = "measured again" if chosen["confirmed"] else "not measured again"
    return (f"| {model} | {result['p99_ms']:g} | {label(default)} | {default['throughput_per_cpu']:.0f} / "
            f"{tpc['default']:.0f} (p99 {p99['default']:.1f}) | {label(chosen)} | {chosen['throughput_per_cpu']:.0f} / "
            f"{tpc['chosen']:.0f} (p99 {p99['chosen']:.1f}), {confirmed} | **{tpc['chosen'] / tpc['default']:.2f}x** | "
            f"{label(same_cpus) if same_cpus else '-'}: {flags_gain:.2f}x | {len(result['points'])} | "
            f"{result['client']} | {elapsed:.0f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--p99-ms", type=float, default=50.0)
    parser.add_argument("--budget-seconds", type=float, default=120.0, help="each model's sweep")
    parser.add_argument("--rounds", type=int, default=3, help="re-measurements of each side")
    parser.add_argument("--point-seconds", type=float, default=2.0)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kubeinfer-tune-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    models = make_all(workdir / "models")
    rows = []
    for name in args.models.split(","):
        started = time.monotonic()
        print(f"{name}: sweeping (budget {args.budget_seconds:g} s, p99 <= {args.p99_ms:g} ms)", flush=True)
        result = tune(models[name], workdir / f"{name}-sweep.json", "--p99-ms", str(args.p99_ms),
                      "--budget-seconds", str(args.budget_seconds), "--point-seconds", str(args.point_seconds))
        if not result["chosen"] or not result["default"]["best"]:
            rows.append(f"| {name} | {args.p99_ms:g} | {result['reason']} |")
            continue
        sides = {"default": result["default"]["best"], "chosen": result["chosen"]}
        runs = remeasure(models[name], workdir, sides, args.p99_ms, args.rounds, args.point_seconds)
        rows.append(row(name, result, runs, time.monotonic() - started))
        print(f"  {rows[-1]}", flush=True)
    print("\n| model | p99 bound ms | default (serve's flags) | default inf/s/CPU: sweep / re-measured | chosen | "
          "chosen inf/s/CPU: sweep / re-measured | gain (re-measured) | tune's choice at the default's CPUs: gain in "
          "the sweep | points "
          "| client | s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    print(f"\nwork directory (sweep reports): {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
