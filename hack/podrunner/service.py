"""Start and stop the runner as a background process whose pid file lives in the cluster's workdir."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import containers

HACK = Path(__file__).resolve().parents[1]
PID_FILE = "podrunner.pid"
TARGETS_FILE = "prometheus-targets.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def pid(workdir: Path) -> int | None:
    try:
        value = int((workdir / PID_FILE).read_text())
    except (OSError, ValueError):
        return None
    return value if _alive(value) else None


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
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [os.path.abspath(sys.executable), "-m", "podrunner", "run",
             f"--kubeconfig={kubeconfig}", f"--targets-file={workdir / TARGETS_FILE}"],
            cwd=HACK, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=containers._die_with_runner if tie_to_parent else None)
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
        while _alive(running) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(running):
            os.kill(running, signal.SIGKILL)
    (workdir / PID_FILE).unlink(missing_ok=True)
    return running is not None
