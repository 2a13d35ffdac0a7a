"""Background processes of the tooling and the tests: start, check, stop, and clean up after.

``spawn`` starts a command in a session (process group) of its own with its output in a
log file; with ``tie_to_parent`` the kernel kills it when the process that started it dies
(PR_SET_PDEATHSIG), so a killed test run leaves nothing behind. ``kill_group`` stops such
a group by pid (also one started by another process, through its pid file);
``terminate`` stops a ``Popen`` child. ``alive`` counts a zombie as dead; ``running_pid``
reads a pid file. ``Daemons``: named processes with pid files and logs in one work directory.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the child, before exec (``preexec_fn``): SIGKILL when the parent dies."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(argv: list[str], log: Path, *, cwd: Path | str | None = None, env: dict[str, str] | None = None,
          tie_to_parent: bool = False) -> subprocess.Popen:
    """``argv`` in a new session, stdin closed, stdout and stderr appended to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                cwd=cwd, env=env, start_new_session=True,
                                preexec_fn=die_with_parent if tie_to_parent else None)


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
    except (OSError, IndexError):
        return False


def running_pid(pid_file: Path) -> int | None:
    """The pid written in ``pid_file`` while that process lives; None if absent, unreadable or dead."""
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return None
    return pid if pid > 0 and alive(pid) else None


def kill_group(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM the process group led by pid, then SIGKILL what is left after ``timeout``."""
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


def terminate(proc: subprocess.Popen, grace: float = 20.0) -> int:
    """SIGTERM the child, SIGKILL it after ``grace`` seconds; returns its exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(10)


def in_use(path: Path) -> bool:
    """True when some process names ``path`` on its command line."""
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
    """Remove ``root/prefix*`` dirs left by runs that were killed (-9) before cleanup.

    Only dirs older than ``min_age_s`` that no process names, so a cluster being
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


class Daemons:
    """Named background processes, each with ``<name>.pid`` and ``logs/<name>.log`` in ``workdir``.

    The components of the local cluster and its real node, Prometheus and the adapter:
    started here, found again through their pid files by a later command (``make
    cluster-down``), stopped as a process group.
    """

    def __init__(self, workdir: Path, tie_to_parent: bool = False) -> None:
        self.workdir, self.tie_to_parent = workdir, tie_to_parent

    def pid_path(self, name: str) -> Path:
        return self.workdir / f"{name}.pid"

    def log_path(self, name: str) -> Path:
        return self.workdir / "logs" / f"{name}.log"

    def pid(self, name: str) -> int | None:
        """The pid of ``name`` while it runs."""
        return running_pid(self.pid_path(name))

    def start(self, name: str, argv: list[str]) -> int:
        self.log_path(name).parent.mkdir(parents=True, exist_ok=True)
        proc = spawn(argv, self.log_path(name), cwd=self.workdir, tie_to_parent=self.tie_to_parent)
        self.pid_path(name).write_text(f"{proc.pid}\n")
        return proc.pid

    def stop(self, name: str) -> int | None:
        """Stop ``name`` (SIGTERM, then SIGKILL) and forget its pid file; returns the pid it had."""
        pid = self.pid(name)
        if pid is not None:
            kill_group(pid)
        self.pid_path(name).unlink(missing_ok=True)
        return pid

    def log_tail(self, name: str, lines: int = 60) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace")
        except OSError:
            return f"(no log for {name})"
        return "\n".join(text.splitlines()[-lines:])

    def wait(self, what: str, check, deadline: float, name: str, error: type[Exception] = RuntimeError,
             lines: int = 60) -> None:
        """Poll ``check`` until true while ``name`` runs; ``error`` with its log tail when it exits
        or the deadline (``time.monotonic()``) passes."""
        while time.monotonic() < deadline:
            if self.pid(name) is None:
                raise error(f"{name} exited while waiting for {what}; last log lines:\n{self.log_tail(name, lines)}")
            if check():
                return
            time.sleep(0.25)
        raise error(f"timed out waiting for {what}; last {name} log lines:\n{self.log_tail(name, lines)}")
