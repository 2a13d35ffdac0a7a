"""End-to-end autoscaling benchmark on the local cluster (real pods, Prometheus, adapter, HPA).

    .venv/bin/python bench/e2e_bench.py [--steady-seconds 300] [--markdown bench/RESULTS.md] [--keep-stack]

Needs root (the real node runs containers) and the e2e stack's pieces
(``make e2e-deps``). It brings up (or reuses) the local cluster with its real node,
Prometheus, prometheus-adapter and the model store (``make e2e-up``), helm-installs the
chart with the operator on the real node, applies one InferenceDeployment with
autoscaling (min 1, max 3, target queue depth 4, scale-down window 20 s, mTLS) and
measures:

1. load step -> HPA decision (status.desiredReplicas > 1) -> second pod Ready
   (Deployment readyReplicas >= 2) -> the new pod serving (its kubeinfer_requests_total
   > 0, read from podIP:8002/metrics and, as a cross-check, from Prometheus);
2. scale events (changes of the Deployment's spec.replicas and of the HPA's
   desiredReplicas, plus the HPA's SuccessfulRescale events) during a steady-load
   period once scaled out (``--steady-seconds``, default 300): want none;
3. failed requests during scale-in (a light client keeps running while the HPA goes
   back to one pod) and during a forced certificate rotation (as
   tests/e2e/test_rotation.py forces it: spec.tls.certificateDurationSeconds changes):
   want zero.

Load: the e2e kit's ``Load`` (tritonclient threads over mTLS, round robin over the
ready addresses of the headless Service's EndpointSlices, re-resolved every second).
Everything is bounded in time. At the end the InferenceDeployment is deleted while the
operator still runs, the chart is uninstalled, and what this script started is
stopped (``make cluster-down`` if it started the cluster, else ``make e2e-down`` if it
started the e2e stack; ``--keep-stack`` leaves it running).

With ``--markdown FILE`` the section "## End to end: autoscaling on the local cluster"
(between ``<!-- e2e_bench:begin -->`` and ``<!-- e2e_bench:end -->``) is replaced or
appended; the rest of the file is left as it is.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

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
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from devkit.models import make_mlp
from e2ekit.clients import (
    DIRECT,
    NODE_PLACEMENT,
    Load,
    batch,
    client,
    infer,
    presented_cert,
    ready_addresses,
    served_by,
    write_secret,
)

NAME = "bench"
MODEL_FILE = "bench-mlp.onnx"
TARGET_QUEUE_DEPTH = 4
SCALE_DOWN_WINDOW = 20
MIN_REPLICAS, MAX_REPLICAS = 1, 3
HEAVY_WORKERS, HEAVY_ROWS = 16, 32
LIGHT_WORKERS, LIGHT_ROWS = 2, 1
SECTION = Section("## End to end: autoscaling on the local cluster", "e2e_bench")


# -- observation ------------------------------------------------------------------------
@dataclass
class Sample:
    t: float                   # time.monotonic()
    hpa_desired: int | None
    hpa_current: int | None
    queue_depth: str | None    # the HPA's current average (as the adapter reports it)
    spec_replicas: int | None  # the Deployment's
    ready_replicas: int
    pods: dict                 # name -> (podIP, ready)


@dataclass
class Sampler(Poller):
    """Polls the HPA, the Deployment and the pods every ``interval`` seconds (own thread)."""

    kube: Kube
    ns: str
    name: str

    def poll(self) -> Sample:
        ns, name = self.ns, self.name
        hpa = self.kube.get(f"/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers/{name}") or {}
        dep = self.kube.get(f"/apis/apps/v1/namespaces/{ns}/deployments/{name}") or {}
        status = hpa.get("status", {})
        metrics = status.get("currentMetrics") or [{}]
        depth = ((metrics[0] or {}).get("pods") or {}).get("current", {}).get("averageValue")
        found = {pod["metadata"]["name"]: (pod.get("status", {}).get("podIP"), pod_ready(pod))
                 for pod in self.kube.pods(ns, name)}
        return Sample(time.monotonic(), status.get("desiredReplicas"), status.get("currentReplicas"), depth,
                      dep.get("spec", {}).get("replicas"), dep.get("status", {}).get("readyReplicas") or 0, found)


def changes(samples: list[Sample], attr: str) -> list[tuple[float, object, object]]:
    out, last = [], None
    for s in samples:
        value = getattr(s, attr)
        if value is None:
            continue
        if last is not None and value != last:
            out.append((s.t, last, value))
        last = value
    return out


def pod_requests(ip: str, timeout: float = 2) -> float:
    """Requests the pod answered OK, from its own /metrics (podIP:8002, plain HTTP)."""
    with DIRECT.open(f"http://{ip}:8002/metrics", timeout=timeout) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("kubeinfer_requests_total{") and 'code="OK"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total



def rescale_events(kube: Kube, ns: str, name: str) -> int:
    """Sum of the counts of the HPA's SuccessfulRescale events (aggregated events carry a count)."""
    selector = urllib.parse.quote(f"involvedObject.name={name},involvedObject.kind=HorizontalPodAutoscaler,"
                                  "reason=SuccessfulRescale")
    events = kube.get(f"/api/v1/namespaces/{ns}/events?fieldSelector={selector}") or {"items": []}
    return sum(e.get("count") or 1 for e in events["items"])


def secret_cert(kube: Kube, ns: str, name: str) -> bytes:
    secret = kube.get(f"/api/v1/namespaces/{ns}/secrets/{name}")
    pem = base64.b64decode(secret["data"]["tls.crt"])
    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)



# -- the benchmark ----------------------------------------------------------------------
def infd_manifest(ns: str, duration: int, uri: str) -> dict:
    return {"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceDeployment",
            "metadata": {"name": NAME, "namespace": ns},
            "spec": {"model": {"uri": uri},
                     "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
                     "autoscaling": {"minReplicas": MIN_REPLICAS, "maxReplicas": MAX_REPLICAS,
                                     "targetQueueDepth": TARGET_QUEUE_DEPTH,
                                     "scaleDownStabilizationSeconds": SCALE_DOWN_WINDOW},
                     "tls": {"mode": "Mutual", "clients": [{"name": "load"}],
                             "certificateDurationSeconds": duration},
                     **NODE_PLACEMENT}}


def scale_out(kube, stack, ns, sampler, certs, res: Results, timeout: float) -> tuple[Load, float]:
    """Phase 1: load step -> HPA decision -> second pod Ready -> the new pod serving."""
    before = set(sampler.latest().pods)
    say(f"Load step: {HEAVY_WORKERS} threads x {HEAVY_ROWS} rows over mTLS (pods before: {sorted(before)})")
    t0 = time.monotonic()
    load = Load(kube, ns, NAME, certs, workers=HEAVY_WORKERS, rows=HEAVY_ROWS).start()
    t_decision = t_ready = t_serving = t_prom = None
    new_pod = None
    last_prom = 0.0
    deadline = t0 + timeout
    while time.monotonic() < deadline and None in (t_decision, t_ready, t_serving, t_prom):
        s = sampler.latest()
        now = time.monotonic()
        if t_decision is None and s.t >= t0 and (s.hpa_desired or 0) > 1:
            t_decision = s.t - t0
            say(f"  HPA desiredReplicas={s.hpa_desired} at +{t_decision:.1f}s (queue depth {s.queue_depth})")
        if t_ready is None and s.t >= t0 and s.ready_replicas >= 2:
            t_ready = s.t - t0
            say(f"  Deployment readyReplicas={s.ready_replicas} at +{t_ready:.1f}s")
        if t_serving is None:
            for pod, (ip, _ready) in sorted(s.pods.items()):
                if pod in before or not ip:
                    continue
                try:
                    if pod_requests(ip, timeout=1) > 0:
                        t_serving, new_pod = time.monotonic() - t0, pod
                        say(f"  new pod {pod} ({ip}) answered requests at +{t_serving:.1f}s (its /metrics)")
                        break
                except OSError:
                    pass
        if t_prom is None and now - last_prom >= 1:
            last_prom = now
            try:
                served = served_by(stack["prometheus"], ns, timeout=3)
                if any(n > 0 for p, n in served.items() if p.startswith(NAME) and p not in before):
                    t_prom = time.monotonic() - t0
                    say(f"  Prometheus shows a new pod's requests at +{t_prom:.1f}s")
            except (OSError, ValueError, KeyError):
                pass
        time.sleep(0.25)
    res.add("load step -> HPA decision (desiredReplicas > 1)", fmt_s(t_decision), "", t_decision is not None)
    res.add("load step -> second pod Ready (readyReplicas >= 2)", fmt_s(t_ready), "", t_ready is not None)
    res.add("load step -> new pod serving (podIP:8002/metrics, requests_total > 0)", fmt_s(t_serving), "",
            t_serving is not None)
    res.add("load step -> new pod serving, as Prometheus sees it", fmt_s(t_prom), "", t_prom is not None)
    if new_pod:
        res.notes.append(f"first new pod serving: {new_pod}")
    if None in (t_decision, t_ready, t_serving):
        load.stop()
        raise BenchError(f"scale-out not complete within {timeout:.0f}s of the load step "
                         f"(decision {t_decision}, ready {t_ready}, serving {t_serving})")
    return load, t0


def settled(sampler: Sampler, quiet: float) -> Sample | None:
    """The latest sample when replicas agree everywhere and nothing changed for ``quiet`` s."""
    s = sampler.latest()
    if s is None:
        return None
    window = sampler.between(s.t - quiet, s.t)
    if not window or window[0].t > s.t - quiet + 1.5:
        return None
    keys = {(w.hpa_desired, w.hpa_current, w.spec_replicas, w.ready_replicas) for w in window}
    if len(keys) == 1 and s.hpa_desired == s.hpa_current == s.spec_replicas == s.ready_replicas:
        return s
    return None


def steady(kube, ns, sampler, load: Load, t_step: float, seconds: float, res: Results) -> None:
    """Phase 2: scale events during steady load once scaled out."""
    say("Waiting for the scale-out to settle (replicas equal everywhere, unchanged for 20 s)")
    t_wait = time.monotonic()
    s = wait("the scale-out to settle", lambda: settled(sampler, 20), timeout=240, interval=1)
    say(f"  settled at {s.spec_replicas} replicas after {time.monotonic() - t_wait:.0f}s more")
    full = next((w.t - t_step for w in sampler.between(t_step, s.t) if w.ready_replicas >= s.spec_replicas), None)
    res.add(f"load step -> all {s.spec_replicas} replicas Ready (settled: unchanged 20 s)", fmt_s(full))
    events0, ok0, failed0 = rescale_events(kube, ns, NAME), load.ok, len(load.failures)
    start = time.monotonic()
    say(f"Steady load for {seconds:.0f}s")
    while time.monotonic() - start < seconds:
        time.sleep(min(30, max(0.0, seconds - (time.monotonic() - start))))
        cur = sampler.latest()
        say(f"  +{time.monotonic() - start:4.0f}s replicas spec={cur.spec_replicas} ready={cur.ready_replicas} "
            f"hpa desired={cur.hpa_desired} queue depth/pod={cur.queue_depth} ok={load.ok - ok0} "
            f"failed={len(load.failures) - failed0}")
    end = time.monotonic()
    window = sampler.between(start, end)
    spec_changes = changes(window, "spec_replicas")
    hpa_changes = changes(window, "hpa_desired")
    events = rescale_events(kube, ns, NAME) - events0
    counts = sorted({w.spec_replicas for w in window if w.spec_replicas is not None})
    depths = [float(w.queue_depth.rstrip("m")) / (1000 if w.queue_depth.endswith("m") else 1)
              for w in window if w.queue_depth]
    ok, failed = load.ok - ok0, len(load.failures) - failed0
    res.add(f"steady load {end - start:.0f} s at {s.spec_replicas} replicas: Deployment spec.replicas changes",
            str(len(spec_changes)), "0", not spec_changes)
    res.add("  HPA desiredReplicas changes / SuccessfulRescale events", f"{len(hpa_changes)} / {events}", "0 / 0",
            not hpa_changes and events == 0)
    res.add("  requests OK / failed during steady load (rows/s)",
            f"{ok} / {failed} ({ok * HEAVY_ROWS / (end - start):.0f} rows/s)", "failed 0", failed == 0)
    if depths:
        res.notes.append(f"steady: queue depth per pod (HPA's view) min {min(depths):.2f}, "
                         f"mean {sum(depths) / len(depths):.2f}, max {max(depths):.2f}; replica counts seen {counts}; "
                         f"{len(window)} samples")
    for t, a, b in spec_changes + hpa_changes:
        res.notes.append(f"steady: change {a} -> {b} at +{t - start:.1f}s")


def scale_in(kube, ns, sampler, certs, res: Results) -> None:
    """Phase 3a: a light client runs across the scale-in; count its failed requests."""
    say(f"Scale-in: heavy load stopped, {LIGHT_WORKERS} light threads x {LIGHT_ROWS} row keep running")
    trickle = Load(kube, ns, NAME, certs, workers=LIGHT_WORKERS, rows=LIGHT_ROWS).start()
    t0 = time.monotonic()
    t_desired = t_gone = None
    try:
        def desired_one():
            s = sampler.latest()
            return s if s.t > t0 and s.hpa_desired == 1 else None
        wait("the HPA to want one replica", desired_one, timeout=SCALE_DOWN_WINDOW + 150)
        t_desired = time.monotonic() - t0
        say(f"  HPA desiredReplicas=1 at +{t_desired:.1f}s")

        def one_pod():
            s = sampler.latest()
            return s if (s.t > t0 and s.hpa_current == 1 and s.spec_replicas == 1 and len(s.pods) == 1) else None
        wait("the removed pods to be gone", one_pod, timeout=150)
        t_gone = time.monotonic() - t0
        say(f"  one pod left at +{t_gone:.1f}s")
        time.sleep(3)
    finally:
        trickle.stop()
    res.add("scale-in: heavy load stop -> HPA desiredReplicas 1", fmt_s(t_desired),
            f"~{SCALE_DOWN_WINDOW} s window")
    res.add("scale-in: heavy load stop -> removed pods gone", fmt_s(t_gone))
    res.add("scale-in: light client requests OK / failed", f"{trickle.ok} / {len(trickle.failures)}",
            "failed 0", trickle.ok > 0 and not trickle.failures)
    if trickle.failures:
        res.notes.append(f"scale-in failures: {failures_summary(trickle.failures)}")


def rotation(kube, ns, certs, workdir: Path, res: Results) -> None:
    """Phase 3b: force a certificate rotation under load; count failed requests."""
    address = ready_addresses(kube, ns, NAME)[0]
    server_name = f"{NAME}.{ns}.svc"
    before = secret_cert(kube, ns, f"{NAME}-tls")
    if presented_cert(address, server_name, certs) != before:
        raise BenchError("the pod does not present the server certificate of its Secret before rotation")
    load = Load(kube, ns, NAME, certs, workers=2, rows=4).start()
    fresh = {"ok": 0, "failed": []}
    stop = threading.Event()

    def fresh_connections() -> None:  # a new channel (new TLS handshake) for every call
        while not stop.is_set():
            try:
                infer(client([address], certs, server_name), NAME, batch(1), timeout=10)
                fresh["ok"] += 1
            except Exception as exc:  # noqa: BLE001  (every failure counts)
                fresh["failed"].append((time.time(), str(exc)[:200]))
            stop.wait(0.2)

    worker = threading.Thread(target=fresh_connections, daemon=True)
    worker.start()
    t_secret = t_served = None
    try:
        time.sleep(2)
        say("Rotation: spec.tls.certificateDurationSeconds 3600 -> 3700")
        t0 = time.monotonic()
        kube.kubectl("patch", "infd", NAME, "-n", ns, "--type", "merge",
                     "-p", json.dumps({"spec": {"tls": {"certificateDurationSeconds": 3700}}}))
        after = wait("the operator to reissue the server certificate",
                     lambda: (lambda c: c if c != before else None)(secret_cert(kube, ns, f"{NAME}-tls")),
                     timeout=90)
        t_secret = time.monotonic() - t0
        say(f"  new server certificate in the Secret at +{t_secret:.1f}s")
        wait("a new connection to see the new certificate",
             lambda: presented_cert(address, server_name, certs) == after, timeout=60)
        t_served = time.monotonic() - t0
        say(f"  a new handshake gets the new certificate at +{t_served:.1f}s")
        time.sleep(5)
    finally:
        stop.set()
        worker.join(30)
        load.stop()
    renewed = write_secret(kube, ns, f"{NAME}-client-load", workdir / "client-renewed")
    works = infer(client([address], renewed, server_name), NAME, batch(2)).shape == (2, 16)
    res.add("rotation: patch -> new certificate in the Secret", fmt_s(t_secret))
    res.add("rotation: patch -> server presents it on a new handshake", fmt_s(t_served))
    res.add("rotation: requests OK / failed (open channels, 2 threads)", f"{load.ok} / {len(load.failures)}",
            "failed 0", load.ok > 0 and not load.failures)
    res.add("rotation: requests OK / failed (new channel per call)", f"{fresh['ok']} / {len(fresh['failed'])}",
            "failed 0", fresh["ok"] > 0 and not fresh["failed"])
    res.add("rotation: renewed client certificate accepted", "yes" if works else "no", "yes", works)
    for name, failures in (("open channels", load.failures), ("new channels", fresh["failed"])):
        if failures:
            res.notes.append(f"rotation failures ({name}): {failures_summary(failures)}")


# -- output -----------------------------------------------------------------------------
def describe(args: argparse.Namespace):
    def markdown(res: Results, header: str) -> str:
        return SECTION.markdown(
            res,
            f"Written by `bench/e2e_bench.py` (`.venv/bin/python bench/e2e_bench.py --steady-seconds "
            f"{args.steady_seconds:g} --markdown ...`). {header}",
            "Real control plane, the chart's operator pod and kubeinfer-server pods run as containers by the "
            "real node's kubelet, Prometheus + prometheus-adapter feeding the operator's HPA "
            f"(min {MIN_REPLICAS}, max {MAX_REPLICAS}, target queue depth {TARGET_QUEUE_DEPTH}, scale-down window "
            f"{SCALE_DOWN_WINDOW} s). Load: the e2e kit's tritonclient `Load` over mTLS, round robin over the "
            f"headless Service's ready endpoints ({HEAVY_WORKERS} threads x {HEAVY_ROWS} rows; scale-in: "
            f"{LIGHT_WORKERS} threads x {LIGHT_ROWS} row; rotation: 2 threads x 4 rows + a new channel per call "
            "every 0.2 s). Times are seconds from the step; polling every 0.25-0.5 s.")
    return markdown


# -- main -------------------------------------------------------------------------------
def measure(args: argparse.Namespace):
    def autoscaling(installed: Installed, res: Results) -> None:
        kube, ns = installed.kube, installed.ns
        model = installed.store_dir / MODEL_FILE
        if not model.exists():
            make_mlp(model)
        say(f"Applying InferenceDeployment {ns}/{NAME} (autoscaling {MIN_REPLICAS}-{MAX_REPLICAS}, "
            f"target queue depth {TARGET_QUEUE_DEPTH}, scale-down window {SCALE_DOWN_WINDOW}s, mTLS)")
        t = time.monotonic()
        kube.kubectl("apply", "-f", "-", input=json.dumps(infd_manifest(ns, 3600, installed.model_uri(MODEL_FILE))))
        wait("the InferenceDeployment Ready", lambda: infd_ready(kube, ns, NAME), timeout=180)
        say(f"  Ready in {time.monotonic() - t:.1f}s")
        certs = write_secret(kube, ns, f"{NAME}-client-load", installed.workdir / "client")
        sampler = Sampler(kube, ns, NAME).start()
        try:
            _measure(installed, sampler, certs, res, args)
        finally:
            sampler.stop()
    return autoscaling


def _measure(installed: Installed, sampler: Sampler, certs: Path, res: Results, args) -> None:
    kube, ns = installed.kube, installed.ns

    def idle_with_metrics():
        s = sampler.latest()
        return s if (s and s.queue_depth is not None and s.hpa_desired == 1 and s.spec_replicas == 1
                     and s.ready_replicas == 1 and len(s.pods) == 1) else None
    wait("the HPA to read the queue-depth metric at one replica", idle_with_metrics, timeout=120)
    say("  the HPA reads kubeinfer_queue_depth; one pod serving")

    heavy, t_step = scale_out(kube, installed.stack, ns, sampler, certs, res, args.scale_out_timeout)
    try:
        steady(kube, ns, sampler, heavy, t_step, args.steady_seconds, res)
    finally:
        heavy.stop()
    res.add("heavy load overall: requests OK / failed", f"{heavy.ok} / {len(heavy.failures)}",
            "failed 0", not heavy.failures)
    if heavy.failures:
        res.notes.append(f"heavy load failures: {failures_summary(heavy.failures)}")
    scale_in(kube, ns, sampler, certs, res)
    rotation(kube, ns, certs, installed.workdir, res)
    if sampler.errors:
        res.notes.append(f"API polling errors (skipped samples): {sampler.errors}")


def main(argv: list[str] | None = None) -> int:
    parser = common_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--steady-seconds", type=float, default=300,
                        help="steady-load period once scaled out (default 300)")
    parser.add_argument("--scale-out-timeout", type=float, default=240)
    args = parser.parse_args(argv)
    return run("kubeinfer e2e autoscaling bench", "e2e-bench", args, measure(args), describe(args), SECTION)


if __name__ == "__main__":
    sys.exit(main())
