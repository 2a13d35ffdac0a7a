"""Canary rollout benchmark on the local cluster (issue 15): the time from a model change to full promotion,
and the share of requests the canary really got at each step once its pods were ready.

    .venv/bin/python bench/canary_bench.py [--rounds 2] [--pause-seconds 40] [--markdown bench/RESULTS.md]
                                           [--keep-stack]

Needs root and the e2e stack (``make e2e-deps``); brings it up when it is not (``clusterbench``), helm-installs
the chart with its operator on the real node and applies one InferenceDeployment of 4 replicas (mTLS,
``runtime.maxConnectionAgeSeconds: 5``, ``rollout: Canary`` with steps at 25% and 50%, ``--pause-seconds`` each,
analysis every 5 s with ``minRequests: 20``). Each round changes ``spec.model.uri`` to a new file, an mlp
of 3 or 2 hidden layers in turn (both fast: canaries that pass), and follows the rollout to the end. Load runs
the whole time, from two kinds of client, each counting the answers' ``model_version`` (the revision that
answered):

- round robin: 3 threads of one-row requests over the headless Service's ready endpoints (re-resolved each
  second), what a client of ``dns:///NAME-headless`` with ``round_robin`` does;
- ClusterIP: 2 threads on one channel to the Service's ClusterIP: one connection at a time, to the pod
  kube-proxy picked, reopened when the server closes it (its maximum connection age).

Per round: change -> Progressing (the operator saw it), -> each step's pods all ready, -> each step's end,
-> Promoted, -> the old revision's pods gone; per step, each client's share of answers from the canary,
counted from 2 s after the step's pods were all ready (the round-robin client re-resolves each second) to the
step's end, beside the canary's share of the replicas; failed requests (want 0). The pauses are a floor on the
time to promotion: the table says how much the rollout took beyond them.

With ``--markdown FILE`` the section "## Canary rollouts on the local cluster" (between
``<!-- canary_bench:begin -->`` and ``<!-- canary_bench:end -->``) is replaced or appended.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass

from clusterbench import (
    BenchError,
    Installed,
    Kube,
    Poller,
    Results,
    Section,
    common_arguments,
    failures_summary,
    fmt_s,
    infd_ready,
    pod_ready,
    run,
    say,
    wait,
)

from devkit.models import make_mlp
from e2ekit.clients import NODE_PLACEMENT, Load, write_secret

NAME = "canary-bench"
REPLICAS = 4
WEIGHTS = (25, 50)
ANALYSIS = {"intervalSeconds": 5, "minRequests": 20, "maxErrorRate": 0.01, "maxLatencyRatio": 3.0,
            "failureLimit": 3}
CONNECTION_AGE_SECONDS = 5
SETTLE_MARGIN_SECONDS = 2.0
SECTION = Section("## Canary rollouts on the local cluster", "canary_bench")


def infd_manifest(ns: str, uri: str, pause_seconds: int) -> dict:
    return {"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceDeployment",
            "metadata": {"name": NAME, "namespace": ns},
            "spec": {"model": {"uri": uri}, "replicas": REPLICAS,
                     "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
                     "runtime": {"maxConnectionAgeSeconds": CONNECTION_AGE_SECONDS},
                     "rollout": {"strategy": "Canary", "analysis": ANALYSIS,
                                 "steps": [{"weight": w, "pauseSeconds": pause_seconds} for w in WEIGHTS]},
                     "tls": {"mode": "Mutual", "clients": [{"name": "load"}]},
                     **NODE_PLACEMENT}}


# -- observation ------------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    t: float                    # time.monotonic()
    rollout: dict               # status.rollout
    pods: dict                  # revision -> (ready, all, terminating included)
    answers: dict               # client -> {revision: answers so far}


@dataclass
class Sampler(Poller):
    """Polls status.rollout and the pods every ``interval`` seconds, with each client's answers so far."""

    kube: Kube
    ns: str
    clients: dict               # name -> Load

    def poll(self) -> Sample:
        rollout = self.kube.infd(self.ns, NAME).get("status", {}).get("rollout", {})
        answers = {name: load.counts() for name, load in self.clients.items()}
        return Sample(time.monotonic(), rollout, pods_now(self.kube, self.ns), answers)

    def rollout(self) -> dict:
        """status.rollout as last seen."""
        latest = self.latest()
        return latest.rollout if latest else {}


def pods_now(kube: Kube, ns: str) -> dict[str, tuple[int, int]]:
    """Revision -> (ready pods, all pods, terminating included)."""
    found: dict[str, tuple[int, int]] = {}
    for pod in kube.pods(ns, NAME):
        revision = (pod["metadata"].get("labels") or {}).get("kubeinfer.io/revision", "")
        was = found.get(revision, (0, 0))
        found[revision] = (was[0] + int(pod_ready(pod)), was[1] + 1)
    return found


# -- one rollout, read from the samples -------------------------------------------------
@dataclass(frozen=True)
class Step:
    number: int
    weight: int
    start: float
    end: float | None           # None: the rollout left the step some other way, or never did
    settled: float | None       # when both sides' pods were all ready at the step's counts
    replica_share: float
    shares: dict                # client -> (canary answers, all answers) once settled


def in_step(s: Sample, revision: str, number: int) -> bool:
    r = s.rollout
    return r.get("canaryRevision") == revision and r.get("phase") == "Progressing" and r.get("step") == number


def is_settled(s: Sample, revision: str) -> bool:
    r = s.rollout
    canary, stable = r.get("canaryReplicas"), r.get("stableReplicas")
    return (s.pods.get(revision, (0, 0)) == (canary, canary)
            and s.pods.get(r.get("stableRevision", ""), (0, 0)) == (stable, stable))


def step_of(samples: list[Sample], revision: str, number: int) -> Step | None:
    inside = [s for s in samples if in_step(s, revision, number)]
    if not inside:
        return None
    first = inside[0]
    after = [s for s in samples if s.t > first.t and not in_step(s, revision, number)]
    end = after[0] if after else None
    settled = next((s for s in inside if is_settled(s, revision)), None)
    canary, stable = first.rollout.get("canaryReplicas", 0), first.rollout.get("stableReplicas", 0)
    shares = {}
    if settled is not None and end is not None:
        counted = [s for s in inside if s.t >= settled.t + SETTLE_MARGIN_SECONDS]
        if counted:
            shares = {name: _delta(counted[0].answers[name], end.answers[name], revision)
                      for name in end.answers}
    return Step(number, first.rollout.get("weight", 0), first.t, end.t if end else None,
                settled.t if settled else None, canary / max(canary + stable, 1), shares)


def _delta(before: dict, after: dict, revision: str) -> tuple[int, int]:
    moved = {v: n - before.get(v, 0) for v, n in after.items()}
    return moved.get(revision, 0), sum(moved.values())


def first_time(samples: list[Sample], check) -> float | None:
    return next((s.t for s in samples if check(s)), None)


# -- the benchmark ----------------------------------------------------------------------
def measure(args: argparse.Namespace):
    def rollouts(installed: Installed, res: Results) -> None:
        kube, ns = installed.kube, installed.ns
        say(f"Applying InferenceDeployment {ns}/{NAME} ({REPLICAS} replicas, Canary {WEIGHTS} with "
            f"{args.pause_seconds} s pauses, mTLS)")
        t = time.monotonic()
        manifest = infd_manifest(ns, model(installed, 0), args.pause_seconds)
        kube.kubectl("apply", "-f", "-", input=json.dumps(manifest))
        wait("the InferenceDeployment Ready", lambda: infd_ready(kube, ns, NAME), timeout=240)
        wait(f"{REPLICAS} ready pods", lambda: sum(r for r, _ in pods_now(kube, ns).values()) == REPLICAS,
             timeout=120)
        say(f"  Ready in {time.monotonic() - t:.1f}s")
        certs = write_secret(kube, ns, f"{NAME}-client-load", installed.workdir / "client")
        cluster_ip = kube.get(f"/api/v1/namespaces/{ns}/services/{NAME}")["spec"]["clusterIP"]
        clients = {"round robin": Load(kube, ns, NAME, certs, workers=3, rows=1),
                   "ClusterIP": Load(kube, ns, NAME, certs, workers=2, rows=1, through=cluster_ip)}
        for load in clients.values():
            load.start()
        sampler = Sampler(kube, ns, clients).start()
        try:
            wait("a first sample", sampler.latest, timeout=15)
            for number in range(1, args.rounds + 1):
                one_round(installed, sampler, clients, number, model(installed, number), args, res)
        finally:
            sampler.stop()
            for load in clients.values():
                load.stop()
        for name, load in clients.items():
            res.add(f"{name} client overall: requests OK / failed", f"{load.ok} / {len(load.failures)}",
                    "failed 0", load.ok > 0 and not load.failures)
            if load.failures:
                res.notes.append(f"{name} failures: {failures_summary(load.failures)}")
        if sampler.errors:
            res.notes.append(f"API polling errors (skipped samples): {sampler.errors}")
    return rollouts


def model(installed: Installed, number: int) -> str:
    """The URI of round ``number``'s model (0: the first one), written to the store: a new file each round."""
    filename = f"{NAME}-{number}.onnx"
    make_mlp(installed.store_dir / filename, layers=3 - number % 2)
    return installed.model_uri(filename)


def one_round(installed: Installed, sampler: Sampler, clients: dict, number: int, uri: str, args,
              res: Results) -> None:
    kube, ns = installed.kube, installed.ns
    last = sampler.rollout()
    old, tried = last.get("stableRevision", ""), last.get("canaryRevision", "")
    failed_before = {name: len(load.failures) for name, load in clients.items()}
    say(f"Round {number}: spec.model.uri -> {uri.rsplit('/', 1)[-1]} (stable {old})")
    t0 = time.monotonic()
    kube.kubectl("patch", "infd", NAME, "-n", ns, "--type=merge",
                 "-p", json.dumps({"spec": {"model": {"uri": uri}}}))
    limit = 2 * len(WEIGHTS) * args.pause_seconds + 300

    def ended() -> dict | None:
        r = sampler.rollout()
        fresh = r.get("canaryRevision") not in (old, tried)
        return r if fresh and r.get("phase") in ("Promoted", "RolledBack") else None
    done = wait("the rollout to end", ended, timeout=limit)
    if done["phase"] != "Promoted":
        raise BenchError(f"round {number}: the canary was rolled back: {done.get('message')}")
    new = done["stableRevision"]
    wait("the old revision's pods gone", lambda: old not in pods_now(kube, ns), timeout=120)
    t_gone = time.monotonic()
    time.sleep(1)
    samples = sampler.between(t0)
    t_progressing = first_time(samples, lambda s: s.rollout.get("canaryRevision") == new
                               and s.rollout.get("phase") == "Progressing")
    t_promoted = first_time(samples, lambda s: s.rollout.get("phase") == "Promoted"
                            and s.rollout.get("stableRevision") == new)
    steps = [step_of(samples, new, i + 1) for i in range(len(WEIGHTS))]
    prefix = f"round {number}"
    res.add(f"{prefix}: change -> Progressing (the operator saw it)", fmt_s(_since(t_progressing, t0)))
    for step in steps:
        report_step(res, prefix, step, t0)
    pauses = len(WEIGHTS) * args.pause_seconds
    promoted = _since(t_promoted, t0)
    res.add(f"{prefix}: change -> Promoted", fmt_s(promoted),
            f">= {pauses} s (the pauses)" if promoted is None else f"{promoted - pauses:.1f} s beyond the pauses")
    res.add(f"{prefix}: change -> the old revision's pods gone", fmt_s(t_gone - t0))
    failed = {name: len(load.failures) - failed_before[name] for name, load in clients.items()}
    res.add(f"{prefix}: failed requests (" + ", ".join(clients) + ")",
            " / ".join(str(n) for n in failed.values()), "0", not any(failed.values()))
    if "lastAnalysis" in done:
        res.notes.append(f"{prefix}: the last analysis before promotion: {done['lastAnalysis']}")


def report_step(res: Results, prefix: str, step: Step | None, t0: float) -> None:
    if step is None:
        res.add(f"{prefix}: a step", "not seen", "", False)
        return
    where = f"{prefix}, step {step.number} ({step.weight}%)"
    res.add(f"{where}: change -> its pods all ready / the step's end",
            f"{fmt_s(_since(step.settled, t0))} / {fmt_s(_since(step.end, t0))}")
    shares = ", ".join(f"{name} {canary / total:.0%} ({canary} of {total})" if total else f"{name} n/a"
                       for name, (canary, total) in step.shares.items()) or "no settled window"
    res.add(f"{where}: the canary's share of answers once ready", shares,
            f"its share of the replicas: {step.replica_share:.0%}")


def _since(t: float | None, t0: float) -> float | None:
    return None if t is None else t - t0


def describe(args: argparse.Namespace):
    def markdown(res: Results, header: str) -> str:
        return SECTION.markdown(
            res,
            f"Written by `bench/canary_bench.py` (`.venv/bin/python bench/canary_bench.py --rounds {args.rounds} "
            f"--pause-seconds {args.pause_seconds} --markdown ...`). {header}",
            f"Real control plane, the chart's operator pod and kubeinfer-server pods run by the real node's "
            f"kubelet. One InferenceDeployment of {REPLICAS} replicas, steps at {WEIGHTS[0]}% and {WEIGHTS[1]}% "
            f"({args.pause_seconds} s each), analysis every {ANALYSIS['intervalSeconds']} s, servers' maximum "
            f"connection age {CONNECTION_AGE_SECONDS} s. Load the whole time: 3 threads round robin over the "
            "headless Service's ready endpoints and 2 threads on one channel to the ClusterIP, one-row requests "
            "over mTLS. A step's share is counted from 2 s after both sides' pods were all ready to the step's "
            "end; times are seconds from the model change (polling every 0.5 s).")
    return markdown


def main(argv: list[str] | None = None) -> int:
    parser = common_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--rounds", type=int, default=2, help="model changes, one rollout each (default 2)")
    parser.add_argument("--pause-seconds", type=int, default=40, help="each step's pauseSeconds (default 40)")
    args = parser.parse_args(argv)
    return run("kubeinfer canary rollout bench", "canary-bench", args, measure(args), describe(args), SECTION)


if __name__ == "__main__":
    sys.exit(main())
