"""``session.run`` against IO binding, in-process: the data for deciding whether the
server should use IO binding (issue 2 asks to try it on the CUDA provider).

The server gets its inputs in CPU memory and must answer from CPU memory, so both
paths here start from a NumPy array and end with one:

- ``run``: ``session.run(None, feed)``, what the server does today;
- ``binding``: a fresh ``io_binding()`` per call, the input bound from CPU memory, the
  outputs bound to the CPU (ONNX Runtime copies to and from the device itself);
- ``binding reused``: one binding object, the input re-bound each call.

The three are timed in turns, round after round, and the report gives each one's
median rows/s and its ratio to ``run``. On the CPU provider all three do the same work,
so ratios near 1 there only show the comparison is fair; the question is the CUDA
provider (``--providers cuda,cpu`` on a GPU machine, see bench/README.md).

Usage: python bench/iobinding_check.py [--providers cuda,cpu] [--models mlp,cnn] [--batches 1,32]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import harness
import numpy as np

from devkit.models import make_all


def _methods(session):
    inp = session.get_inputs()[0]
    outputs = [o.name for o in session.get_outputs()]
    reused = session.io_binding()

    def run(x):
        return session.run(None, {inp.name: x})

    def binding(x):
        io = session.io_binding()
        io.bind_cpu_input(inp.name, x)
        for name in outputs:
            io.bind_output(name, "cpu")
        session.run_with_iobinding(io)
        return io.copy_outputs_to_cpu()

    def binding_reused(x):
        reused.bind_cpu_input(inp.name, x)
        for name in outputs:
            reused.bind_output(name, "cpu")
        session.run_with_iobinding(reused)
        return reused.copy_outputs_to_cpu()

    return {"run": run, "binding": binding, "binding reused": binding_reused}


def _rows_per_s(method, x, seconds: float) -> float:
    calls, start = 0, time.perf_counter()
    while calls < 10 or time.perf_counter() - start < seconds:
        method(x)
        calls += 1
    return x.shape[0] * calls / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="session.run against IO binding, in-process.")
    parser.add_argument("--providers", default="cpu", help="as kubeinfer-server's --providers")
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="intra-op threads")
    parser.add_argument("--seconds", type=float, default=0.5, help="per method per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    paths = make_all(Path(tempfile.mkdtemp(prefix="kubeinfer-iobinding-")))
    rng = np.random.default_rng(0)
    print(f"| model | providers | batch | {' | '.join(f'{m} rows/s' for m in ('run', 'binding', 'binding reused'))} "
          "| binding / run | reused / run |")
    print("|---|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        session = harness.make_session(paths[model], args.threads, args.providers)
        methods = _methods(session)
        dims = [d if isinstance(d, int) and d > 0 else 1 for d in session.get_inputs()[0].shape[1:]]
        for batch in (int(b) for b in args.batches.split(",")):
            x = rng.random([batch, *dims], dtype="float32")
            want = methods["run"](x)
            for name, method in methods.items():  # warm-up, and the same answer each way
                got = method(x)
                assert all(np.allclose(g, w, rtol=1e-4, atol=1e-5) for g, w in zip(got, want, strict=True)), name
            rates = {name: [] for name in methods}
            for _ in range(args.rounds):
                for name, method in methods.items():
                    rates[name].append(_rows_per_s(method, x, args.seconds))
            med = {name: statistics.median(values) for name, values in rates.items()}
            print(f"| {model} | {','.join(session.get_providers())} | {batch} | "
                  + " | ".join(f"{med[m]:.0f}" for m in methods)
                  + f" | {med['binding'] / med['run']:.2f} | {med['binding reused'] / med['run']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
