"""Background processes: free ports, process groups, death with the parent."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent() -> None:  # runs in the child, after setsid
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours is not alive
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return False


def kill_group(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM the process group led by pid, then SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            if not alive(pid):
                # the leader is gone; make sure no group member lingers
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                return
            time.sleep(0.1)


def in_use(path: Path) -> bool:
    """True when some process names `path` on its command line."""
    needle = str(path).encode()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if needle in (proc / "cmdline").read_bytes():
                    return True
            except OSError:
                continue
    return False


def sweep_stale_dirs(root: Path, prefix: str, min_age_s: float = 600) -> None:
    """Remove `root/prefix*` dirs left by runs that were killed (-9) before cleanup.

    Only dirs older than `min_age_s` that no process names, so a cluster being
    started right now by someone else is never touched.
    """
    now = time.time()
    for path in root.glob(f"{prefix}*"):
        try:
            old = now - path.stat().st_mtime > min_age_s
        except OSError:
            continue
        if old and path.is_dir() and not in_use(path):
            shutil.rmtree(path, ignore_errors=True)
