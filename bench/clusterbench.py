"""What the benchmarks on the local cluster share (``e2e_bench.py``, ``canary_bench.py``).

- ``Kube``: kubectl and helm through the project's binaries, and direct API reads for cheap polling;
- ``on_the_cluster``: brings the e2e stack up when it is not (``make e2e-up``), helm-installs the chart
  with its operator on the real node watching a namespace of its own, yields them (``Installed``), and
  on the way out deletes what the bench made and stops what it started (``--keep-stack`` keeps it);
- ``Poller``: a thread that keeps what ``poll`` returns every half second (each bench's ``Sampler``);
- ``Results``: the rows of the table a bench prints, and ``run``: a bench's main (root, SIGTERM, the
  header, the table, its section of RESULTS.md written between its markers, the exit code).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import monitoring
from devkit.processes import running_pid
from e2ekit.clients import NODE_PLACEMENT
from e2ekit.stack import STORE_PID, store_url
from localcluster import Cluster
from localcluster.nodeconfig import NAME as NODE
from localcluster.pki import kubeconfig_opener

REPO = Path(__file__).resolve().parents[1]
API = "/apis/kubeinfer.io/v1alpha1"


class BenchError(RuntimeError):
    pass


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def wait(what: str, check, timeout: float, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = check()
        except (OSError, ValueError, KeyError, RuntimeError, AttributeError, TypeError):
            found = None
        if found:
            return found
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class Kube:
    """kubectl/helm through the project's binaries, plus direct API reads (cheap polling)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.server, self._api = kubeconfig_opener(cluster.kubeconfig)

    def kubectl(self, *args: str, check: bool = True, input: str | None = None, timeout: float = 60):
        return self.cluster.kubectl(*args, check=check, input=input, timeout=timeout)

    def helm(self, *args: str, check: bool = True, timeout: float = 240) -> subprocess.CompletedProcess:
        home = self.cluster.workdir / "helm"
        env = {**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig),
               "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
               "HELM_DATA_HOME": str(home / "data")}
        proc = subprocess.run([str(self.cluster.bins / "helm"), *args], env=env, capture_output=True,
                              text=True, timeout=timeout)
        if check and proc.returncode:
            raise BenchError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return proc

    def get(self, path: str, timeout: float = 5) -> dict | None:
        """GET an API path; None when it does not exist."""
        try:
            with self._api.open(self.server + path, timeout=timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def infd(self, ns: str, name: str) -> dict:
        return self.get(f"{API}/namespaces/{ns}/inferencedeployments/{name}") or {}

    def pods(self, ns: str, instance: str | None = None) -> list[dict]:
        """The pods in ``ns`` (of one InferenceDeployment, with ``instance``)."""
        query = "?labelSelector=" + urllib.parse.quote(f"app.kubernetes.io/instance={instance}") if instance else ""
        return (self.get(f"/api/v1/namespaces/{ns}/pods{query}") or {}).get("items", [])


def pod_ready(pod: dict) -> bool:
    """Ready, and not on its way out."""
    conds = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
    return conds.get("Ready") == "True" and not pod["metadata"].get("deletionTimestamp")


def stack_state(cluster: Cluster) -> dict[str, bool]:
    workdir = cluster.workdir
    return {"cluster": cluster.readyz(), "monitoring": all(monitoring.running(workdir).values()),
            "model store": running_pid(workdir / STORE_PID) is not None}


def make(target: str, timeout: float) -> None:
    say(f"make {target}")
    subprocess.run(["make", "--no-print-directory", target], cwd=REPO, check=True, timeout=timeout)


def failures_summary(failures: list) -> str:
    if not failures:
        return ""
    kinds: dict[str, int] = {}
    for _t, message in failures:
        key = message.splitlines()[0][:120]
        kinds[key] = kinds.get(key, 0) + 1
    return "; ".join(f"{n}x {k}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])[:3])


def infd_ready(kube: Kube, ns: str, name: str) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in kube.infd(ns, name).get("status", {}).get("conditions", []))


def operator_ready(kube: Kube, ns: str) -> bool:
    return any(pod["spec"].get("nodeName") == NODE and pod_ready(pod) for pod in kube.pods(ns))


@dataclass(kw_only=True)
class Poller:
    """Calls ``poll`` every ``interval`` seconds on its own thread and keeps what it returns (each with
    ``.t``, its time.monotonic()); an API hiccup is counted in ``errors`` and polling goes on."""

    interval: float = 0.5
    samples: list = field(default_factory=list)
    errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def poll(self):
        raise NotImplementedError

    def start(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sample = self.poll()
                with self._lock:
                    self.samples.append(sample)
            except Exception:  # noqa: BLE001  (an API hiccup: count it, keep polling)
                self.errors += 1
            self._stop.wait(self.interval)

    def latest(self):
        with self._lock:
            return self.samples[-1] if self.samples else None

    def between(self, start: float, end: float = float("inf")) -> list:
        with self._lock:
            return [s for s in self.samples if start <= s.t <= end]


# -- the stack and the chart ------------------------------------------------------------
@dataclass
class Installed:
    """The chart installed for one bench run: its operator watches ``ns``; ``workdir`` is the bench's own."""

    cluster: Cluster
    kube: Kube
    ns: str
    op_ns: str
    release: str
    workdir: Path
    stack: dict  # monitoring.json: Prometheus' address and the like

    def model_uri(self, filename: str) -> str:
        """The model store's URI of a file under its directory (the bench writes the file there)."""
        return store_url(self.cluster.workdir, filename)

    @property
    def store_dir(self) -> Path:
        return self.cluster.workdir / "model-store"


@contextlib.contextmanager
def on_the_cluster(name: str, keep: bool) -> Iterator[Installed]:
    """The e2e stack up (started when it is not), the chart installed for this run; all undone after."""
    cluster = Cluster(REPO / ".cluster")
    state = stack_state(cluster)
    say("Found: " + ", ".join(f"{k} {'up' if v else 'down'}" for k, v in state.items()))
    started_cluster, started_stack = not state["cluster"], not all(state.values())
    kube = installed = None
    try:
        if started_stack:
            make("e2e-up", timeout=1800)
        if not cluster.readyz():
            raise BenchError("the cluster does not answer /readyz after make e2e-up")
        kube = Kube(cluster)
        installed = _install(cluster, kube, name)
        yield installed
    finally:
        _cleanup(kube, installed, started_cluster, started_stack, keep)


def _install(cluster: Cluster, kube: Kube, name: str) -> Installed:
    suffix = uuid.uuid4().hex[:6]
    workdir = cluster.workdir / name
    workdir.mkdir(exist_ok=True)
    installed = Installed(cluster, kube, f"{name}-{suffix}", f"kubeinfer-{name}-{suffix}",
                          f"kubeinfer-{name}-{suffix}", workdir,
                          json.loads((cluster.workdir / "monitoring.json").read_text()))
    say(f"helm install {installed.release} (operator namespace {installed.op_ns}, watching {installed.ns})")
    kube.kubectl("create", "namespace", installed.ns)
    values = workdir / "values.json"
    values.write_text(json.dumps({"watchNamespaces": [installed.ns], "operator": {"resyncSeconds": 5},
                                  **NODE_PLACEMENT}))
    t = time.monotonic()
    kube.helm("install", installed.release, str(REPO / "charts" / "kubeinfer"), "--namespace", installed.op_ns,
              "--create-namespace", "-f", str(values))
    wait("the operator pod Ready on the real node", lambda: operator_ready(kube, installed.op_ns), timeout=120)
    say(f"  operator Ready in {time.monotonic() - t:.1f}s")
    return installed


def _cleanup(kube: Kube | None, installed: Installed | None, started_cluster: bool, started_stack: bool,
             keep: bool) -> None:
    def step(what, fn):
        try:
            fn()
        except Exception as exc:  # noqa: BLE001  (keep cleaning up)
            say(f"  cleanup: {what} failed: {exc}")
    say("Cleaning up")
    if kube and installed:
        ns, op_ns = installed.ns, installed.op_ns
        step("delete the InferenceDeployments", lambda: kube.kubectl(
            "delete", "infd", "--all", "-n", ns, "--wait=true", "--timeout=90s", check=False, timeout=120))
        step("helm uninstall", lambda: kube.helm("uninstall", installed.release, "--namespace", op_ns, check=False))
        for name in (ns, op_ns):
            step(f"delete namespace {name}", lambda name=name: kube.kubectl(
                "delete", "namespace", name, "--wait=false", check=False))
    if keep:
        return
    if started_cluster:
        step("make cluster-down", lambda: make("cluster-down", timeout=300))
    elif started_stack:
        step("make e2e-down", lambda: make("e2e-down", timeout=300))


# -- results ----------------------------------------------------------------------------
@dataclass
class Results:
    rows: list = field(default_factory=list)   # (measure, value, want, verdict)
    notes: list = field(default_factory=list)

    def add(self, measure: str, value: str, want: str = "", ok: bool | None = None) -> None:
        verdict = "" if ok is None else ("PASS" if ok else "FAIL")
        self.rows.append((measure, value, want, verdict))
        say(f"  {measure}: {value}" + (f"  [{verdict}]" if verdict else ""))

    def table(self) -> str:
        lines = ["| measure | value | want | |", "|---|---|---|---|"]
        lines += [f"| {m} | {v} | {w} | {k} |" for m, v, w, k in self.rows]
        return "\n".join(lines)


def fmt_s(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.1f} s"


@dataclass(frozen=True)
class Section:
    """A bench's section of RESULTS.md: its heading and the markers around it."""

    heading: str
    marker: str  # the section lies between <!-- MARKER:begin --> and <!-- MARKER:end -->

    def markdown(self, res: Results, *paragraphs: str) -> str:
        notes = "\n".join(f"- {n}" for n in res.notes)
        return "\n\n".join(part for part in [f"<!-- {self.marker}:begin -->", self.heading, *paragraphs,
                                             res.table(), notes, f"<!-- {self.marker}:end -->"] if part)

    def write(self, path: Path, body: str) -> None:
        """Replace the section in ``path`` (or append it); the rest of the file stays as it is."""
        begin, end = f"<!-- {self.marker}:begin -->", f"<!-- {self.marker}:end -->"
        text = path.read_text() if path.exists() else "# kubeinfer benchmark results\n"
        if begin in text and end in text:
            text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _m: body, text, flags=re.S)
        elif self.heading in text:  # a hand-made section without markers: up to the next heading of that level
            start = text.index(self.heading)
            nxt = re.search(r"^(## |<!-- )", text[start + len(self.heading):], flags=re.M)
            stop = start + len(self.heading) + nxt.start() if nxt else len(text)
            text = text[:start] + body + "\n\n" + text[stop:]
        else:
            text = text.rstrip("\n") + "\n\n" + body
        path.write_text(text.rstrip("\n") + "\n")


Measure = Callable[[Installed, Results], None]
Describe = Callable[[Results, str], str]  # (results, header) -> the section's markdown


def run(title: str, name: str, args: argparse.Namespace, measure: Measure, describe: Describe,
        section: Section) -> int:
    """A cluster bench's main: measure on a fresh install, print the table, write the section, exit code."""
    if os.geteuid() != 0:
        print("error: needs root (the real node runs containers)", file=sys.stderr)
        return 2

    def on_term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)
    started, res = time.monotonic(), Results()
    failed: str | None = None
    try:
        with on_the_cluster(name, keep=args.keep_stack) as installed:
            measure(installed, res)
    except (BenchError, KeyboardInterrupt, subprocess.SubprocessError, RuntimeError, OSError) as exc:
        failed = f"{type(exc).__name__}: {exc}"
        say(f"ERROR: {failed}")
        res.notes.append(f"run aborted: {failed}")
    header = (f"{datetime.now().isoformat(timespec='seconds')}, {os.cpu_count()} CPUs, {platform.node()}, "
              f"total {time.monotonic() - started:.0f} s" + (", ABORTED" if failed else ""))
    print(f"\n{title}: {header}\n")
    print(res.table())
    for note in res.notes:
        print(f"- {note}")
    if args.markdown:
        section.write(args.markdown, describe(res, header))
        print(f"\nwrote the section to {args.markdown}")
    if failed:
        return 1
    return 0 if all(row[3] != "FAIL" for row in res.rows) else 3


def common_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--markdown", type=Path, help="write the section into this file")
    parser.add_argument("--keep-stack", action="store_true",
                        help="leave a cluster/e2e stack this script started running")
    return parser
