"""One pod's life on the runner node: sandbox, volumes, init containers, containers, status.

A ``PodWorker`` thread per pod does what the kubelet does for it, in order: a network
namespace with the pod IP, volumes on disk, each init container to completion (with
back-off on failure), then the containers (restarted with back-off when they exit),
their readiness probes, and the pod status written to ``pods/status`` whenever it
changes. ``stop`` is a pod deletion: SIGTERM, the grace period, SIGKILL, namespace
removed, then the pod object deleted with grace 0, as the kubelet confirms a deletion.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from . import containers, net
from .api import Api, ApiError
from .volumes import Volume, VolumeError, service_account_volume

log = logging.getLogger("podrunner")
TICK = 0.25
VOLUME_SYNC_SECONDS = 2.0
BACKOFF_BASE, BACKOFF_MAX = 2.0, 30.0
PROBE_PERIOD_MAX = 1.0  # the runner probes at least every second (the kubelet: periodSeconds)


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Container:
    """A container's process and the status the kubelet would report for it."""

    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.state: dict = {"waiting": {"reason": "PodInitializing"}}
        self.last_state: dict = {}
        self.ready = False
        self.next_start = 0.0
        self.next_probe = 0.0
        self.failures = 0

    def status(self) -> dict:
        out = {"name": self.spec["name"], "image": self.spec["image"], "imageID": "",
               "ready": self.ready, "restartCount": self.restarts, "state": self.state,
               "lastState": self.last_state, "started": "running" in self.state}
        if self.proc is not None:
            out["containerID"] = f"podrunner://{self.proc.pid}"
        return out


class PodWorker(threading.Thread):
    def __init__(self, pod: dict, api: Api, addresses: net.Addresses, root: Path) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.pod, self.api, self.addresses = pod, api, addresses
        self.key = f"{meta['namespace']}/{meta['name']}"
        self.uid = meta["uid"]
        self.dir = root / f"{meta['namespace']}_{meta['name']}_{self.uid[:8]}"
        self.netns = f"{net.NETNS_PREFIX}{self.uid[:8]}"
        self.veth = f"{net.VETH_PREFIX}{self.uid[:8]}"
        self.ip = ""
        self.grace: float | None = None  # set: stop, with this grace period
        self.delete_after = True
        self.inits = [Container(c) for c in pod["spec"].get("initContainers") or []]
        self.mains = [Container(c) for c in pod["spec"]["containers"]]
        self.volumes: dict[str, Volume] = {}
        self.mounts_extra: dict = {}
        self.started_at = now()
        self.transitions: dict[str, tuple[str, str]] = {}
        self.sent: dict | None = None
        self.failure = ""

    # -- control from the runner ----------------------------------------------------------
    def stop(self, grace: float, delete: bool = True) -> None:
        if self.grace is None or grace < self.grace:
            self.grace = grace
        self.delete_after = delete

    def running(self) -> bool:
        return any(c.proc is not None and c.proc.poll() is None for c in self.mains)

    # -- the thread -------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._sandbox()
            self._loop()
        except Exception:  # noqa: BLE001  (the runner must go on with other pods)
            log.exception("Pod %s failed in the runner", self.key)
        finally:
            self._teardown()

    def _sandbox(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)
        self.ip = self.addresses.take()
        net.add_netns(self.netns, self.veth, self.ip)
        specs = list(self.pod["spec"].get("volumes") or [])
        sa = service_account_volume(self.pod)
        if sa:
            specs.append(sa[0])
            self.mounts_extra = sa[1]
        self.volumes = {v["name"]: Volume(v, self.dir / "volumes", self.pod, self.api)
                        for v in specs}
        log.info("Started sandbox of pod %s at %s (netns %s)", self.key, self.ip, self.netns)

    def _loop(self) -> None:
        next_sync = 0.0
        while self.grace is None:
            if time.monotonic() >= next_sync:
                next_sync = time.monotonic() + VOLUME_SYNC_SECONDS
                if not self._sync_volumes():
                    self._report()
                    time.sleep(1)
                    continue
            if self._init_done():
                for c in self.mains:
                    self._drive(c, always=True)
                    self._probe(c)
            self._report()
            time.sleep(TICK)
        self._terminate()

    def _sync_volumes(self) -> bool:
        try:
            for volume in self.volumes.values():
                if volume.refresh() and self.sent is not None:
                    log.info("Updated volume %s of pod %s", volume.name, self.key)
            self.failure = ""
            return True
        except (VolumeError, ApiError) as exc:
            self.failure = f"MountVolume.SetUp failed: {exc}"
            for c in self.inits + self.mains:
                if c.proc is None:
                    c.state = {"waiting": {"reason": "ContainerCreating", "message": self.failure}}
            return False

    def _init_done(self) -> bool:
        for c in self.inits:
            if "terminated" in c.state and c.state["terminated"]["exitCode"] == 0:
                continue
            self._drive(c, always=False)
            return False
        return True

    def _drive(self, c: Container, always: bool) -> None:
        """Start the container when due; notice when it exits and schedule the restart."""
        if c.proc is None:
            if time.monotonic() >= c.next_start:
                self._start(c)
            return
        code = c.proc.poll()
        if code is None or "terminated" in c.state:
            if code is not None and "terminated" in c.state and (always or code != 0):
                self._back_off(c)
            return
        reason = "Completed" if code == 0 else "Error"
        term = {"exitCode": code, "reason": reason, "finishedAt": now(),
                "startedAt": c.state.get("running", {}).get("startedAt", now()),
                "containerID": f"podrunner://{c.proc.pid}"}
        if code != 0 and c.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            term["message"] = containers.log_tail(self._log(c))
        c.state, c.ready = {"terminated": term}, False
        log.info("Container %s of pod %s exited with %s", c.spec["name"], self.key, code)

    def _back_off(self, c: Container) -> None:
        c.last_state = c.state
        c.restarts += 1
        delay = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (c.restarts - 1))
        c.state = {"waiting": {"reason": "CrashLoopBackOff", "message":
                               f"back-off {delay:.0f}s restarting failed container "
                               f"{c.spec['name']} in pod {self.key}"}}
        c.proc, c.next_start = None, time.monotonic() + delay

    def _start(self, c: Container) -> None:
        try:
            env = containers.environment(self.pod, c.spec, self.ip, self._env_ref)
            argv = containers.argv(c.spec, env)
        except containers.ImageError as exc:
            c.state = {"waiting": {"reason": "ErrImagePull", "message": str(exc)}}
            c.next_start = time.monotonic() + BACKOFF_MAX
            return
        mounts = []
        for m in (c.spec.get("volumeMounts") or []) + ([self.mounts_extra] if self.mounts_extra else []):
            if c in self.inits and m is self.mounts_extra:
                continue
            source = self.volumes[m["name"]].dir / m.get("subPath", "")
            mounts.append(containers.Mount(source, m["mountPath"]))
        c.proc = containers.start(self.netns, argv, env, mounts, c.spec.get("workingDir", "/"),
                                  self._log(c))
        c.state = {"running": {"startedAt": now()}}
        c.failures, c.next_probe = 0, time.monotonic()
        log.info("Started container %s of pod %s (pid %d): %s", c.spec["name"], self.key,
                 c.proc.pid, " ".join(argv[1:]))

    def _env_ref(self, source: dict) -> str | None:
        import base64
        ref = source.get("secretKeyRef") or source.get("configMapKeyRef")
        kind = "secrets" if "secretKeyRef" in source else "configmaps"
        obj = self.api.get(kind, self.pod["metadata"]["namespace"], ref["name"]) or {}
        value = (obj.get("data") or {}).get(ref["key"])
        if value is not None and kind == "secrets":
            value = base64.b64decode(value).decode()
        return value

    def _log(self, c: Container) -> Path:
        return self.dir / "logs" / f"{c.spec['name']}.log"

    def _probe(self, c: Container) -> None:
        if "running" not in c.state or time.monotonic() < c.next_probe:
            return
        spec = c.spec.get("readinessProbe")
        if spec is None:
            c.ready = True
            return
        period = min(float(spec.get("periodSeconds", 10)), PROBE_PERIOD_MAX)
        c.next_probe = time.monotonic() + period
        if containers.probe(c.spec, spec, self.ip):
            c.failures, c.ready = 0, True
        else:
            c.failures += 1
            if c.failures >= int(spec.get("failureThreshold", 3)) or not c.ready:
                c.ready = False

    # -- status -------------------------------------------------------------------------
    def _condition(self, kind: str, ok: bool, reason: str = "") -> dict:
        status = "True" if ok else "False"
        if self.transitions.get(kind, ("",))[0] != status:
            self.transitions[kind] = (status, now())
        cond = {"type": kind, "status": status, "lastTransitionTime": self.transitions[kind][1],
                "lastProbeTime": None}
        if not ok and reason:
            cond["reason"] = reason
        return cond

    def status(self) -> dict:
        initialized = all("terminated" in c.state and c.state["terminated"]["exitCode"] == 0
                          for c in self.inits)
        ready = initialized and all(c.ready for c in self.mains)
        phase = "Running" if initialized and any(c.proc for c in self.mains) else "Pending"
        return {
            "phase": phase, "hostIP": str(net.GATEWAY), "hostIPs": [{"ip": str(net.GATEWAY)}],
            "podIP": self.ip, "podIPs": [{"ip": self.ip}], "startTime": self.started_at,
            "conditions": [
                self._condition("PodScheduled", True),
                self._condition("Initialized", initialized, "ContainersNotInitialized"),
                self._condition("ContainersReady", ready, "ContainersNotReady"),
                self._condition("Ready", ready, "ContainersNotReady"),
            ],
            "initContainerStatuses": [c.status() for c in self.inits],
            "containerStatuses": [c.status() for c in self.mains],
        }

    def _report(self, final: bool = False) -> None:
        status = self.status()
        if final:
            for c in self.mains:
                c.ready = False
            status = self.status()
        if status == self.sent:
            return
        try:
            self.api.patch_pod_status(*self.key.split("/"), status)
            self.sent = status
        except ApiError as exc:
            if exc.status == 404:
                self.stop(0)
            else:
                log.warning("Could not update the status of pod %s: %s", self.key, exc)

    # -- termination --------------------------------------------------------------------
    def _terminate(self) -> None:
        procs = [c for c in self.inits + self.mains if c.proc and c.proc.poll() is None]
        for c in procs:
            containers.signal_process(c.proc, signal.SIGTERM)
        deadline = time.monotonic() + float(self.grace or 0)
        while time.monotonic() < deadline and any(c.proc.poll() is None for c in procs):
            time.sleep(0.1)
        for c in procs:
            if c.proc.poll() is None:
                log.info("Killed container %s of pod %s after the grace period", c.spec["name"], self.key)
                containers.signal_process(c.proc, signal.SIGKILL)
                c.proc.wait(5)
        for c in self.mains:
            if c.proc is not None and "running" in c.state:
                c.state = {"terminated": {"exitCode": c.proc.returncode, "finishedAt": now(),
                                          "reason": "Completed" if c.proc.returncode == 0 else "Error"}}
        self._report(final=True)

    def _teardown(self) -> None:
        net.delete_netns(self.netns, self.veth)
        if self.ip:
            self.addresses.give_back(self.ip)
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.delete_after:
            try:
                self.api.delete_pod_now(*self.key.split("/"), self.uid)
            except ApiError as exc:
                if exc.status not in (404, 409):
                    log.warning("Could not delete pod %s: %s", self.key, exc)
        log.info("Removed pod %s", self.key)
