"""Start and stop the runner as a background process whose pid file lives in the cluster's workdir."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from devkit.processes import alive, running_pid, spawn

PID_FILE = "podrunner.pid"
TARGETS_FILE = "prometheus-targets.json"


def pid(workdir: Path) -> int | None:
    return running_pid(workdir / PID_FILE)


def log_path(workdir: Path) -> Path:
    return workdir / "logs" / "podrunner.log"


def start(workdir: Path, kubeconfig: Path, tie_to_parent: bool, timeout: float = 30) -> int:
    """The runner, started and registered (its log says "Pod runner ready")."""
    workdir = workdir.resolve()
    if os.geteuid() != 0:
        raise RuntimeError("the pod runner needs root (network namespaces, mounts)")
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    log = log_path(workdir)
    offset = log.stat().st_size if log.exists() else 0
    proc = spawn([os.path.abspath(sys.executable), "-m", "podrunner", "run", f"--kubeconfig={kubeconfig}",
                  f"--targets-file={workdir / TARGETS_FILE}"], log, cwd=workdir, tie_to_parent=tie_to_parent)
    (workdir / PID_FILE).write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_bytes()[offset:].decode(errors="replace")
        if "Pod runner ready" in text:
            return proc.pid
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    stop(workdir)
    raise RuntimeError("the pod runner did not start:\n" + log.read_bytes()[offset:].decode(errors="replace")[-3000:])


def stop(workdir: Path, timeout: float = 60) -> bool:
    """SIGTERM (the runner stops its pods and removes its namespaces), SIGKILL after timeout."""
    running = pid(workdir)
    if running:
        os.kill(running, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while alive(running) and time.monotonic() < deadline:
            time.sleep(0.2)
        if alive(running):
            os.kill(running, signal.SIGKILL)
    (workdir / PID_FILE).unlink(missing_ok=True)
    return running is not None
