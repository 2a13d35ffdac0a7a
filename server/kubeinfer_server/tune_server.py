"""A real ``kubeinfer-server serve`` for ``tune``: on loopback, pinned to some CPUs, watched through /proc.

``ServerUnderTest.start`` runs serve as a child process of this Python, with
port 0 for every port, in a session of its own (stopped as a group) that the
kernel kills if tune dies (PR_SET_PDEATHSIG). Its CPU affinity is set before
exec, so every thread it makes (gRPC's, ONNX Runtime's) inherits it, and
``--intra-op-threads 0`` would read the same count. It is ready when it logs
the line that names its bound ports. ``peak_rss_bytes`` reads ``VmHWM`` from
``/proc/PID/status``: the most memory the process has held resident since it
started, loading included, which a periodic sample could miss.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

READY = re.compile(r"Serving .* on gRPC port (\d+), HTTP port (\d+), metrics port (\d+)")
PR_SET_PDEATHSIG = 1


class ServerFailed(Exception):
    """The server did not start (the message holds the last lines of its log)."""


def machine_cpus() -> list[int]:
    """The CPUs this process may run on, in order (its affinity mask: a container's cpuset)."""
    return sorted(os.sched_getaffinity(0))


def pinned(cores: Sequence[int]):
    """A ``preexec_fn``: run on ``cores`` only, and die with the parent."""

    def prepare() -> None:
        os.sched_setaffinity(0, cores)
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

    return prepare


class ServerUnderTest:
    def __init__(self, model: str, name: str, flags: Sequence[str], cores: Sequence[int], log_path: Path) -> None:
        self.argv = [sys.executable, "-m", "kubeinfer_server.cli", "serve", "--model", f"{name}={model}",
                     "--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0",
                     "--log-level", "INFO", *flags]
        self.cores = tuple(cores)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.grpc_port = self.metrics_port = 0

    def start(self, timeout: float) -> ServerUnderTest:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, preexec_fn=pinned(self.cores))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = READY.search(self.log_path.read_text(errors="replace"))
            if match:
                self.grpc_port, self.metrics_port = int(match[1]), int(match[3])
                return self
            if self.proc.poll() is not None:
                raise ServerFailed(f"kubeinfer-server serve exited with {self.proc.returncode}: {self.last_error()}")
            time.sleep(0.05)
        self.stop()
        raise ServerFailed(f"kubeinfer-server serve was not serving after {timeout:.0f} s: {self.last_error()}")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def peak_rss_bytes(self) -> int:
        """The server's resident-memory high-water mark (0 once it is gone)."""
        assert self.proc is not None
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return 0
        match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
        return int(match[1]) * 1024 if match else 0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def last_error(self, lines: int = 3) -> str:
        """The last lines of the log that say what went wrong (or the log's last lines)."""
        text = self.log_path.read_text(errors="replace").strip().splitlines()
        errors = [line for line in text if "error" in line.lower()]
        return " | ".join((errors or text)[-lines:]) or "(nothing logged)"

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the group, SIGKILL what is left after ``grace`` seconds."""
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        try:  # anything the group left behind
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def __enter__(self) -> ServerUnderTest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
