"""A real ``kubeinfer-server serve`` process on loopback, for the server tests.

``ServerProcess`` starts the console script with port 0 for every port (or
given gRPC and HTTP ports), waits
(with a deadline) for the line that names the bound ports, and stops the
process with SIGTERM (then SIGKILL) so nothing outlives a test.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from devkit.direct import http_ok
from devkit.ports import free_port
from devkit.processes import spawn

BIN = Path(sys.executable).parent / "kubeinfer-server"
READY = re.compile(r"Serving .* on gRPC port (\d+), HTTP port (\d+), metrics port (\d+)")


class ServerProcess:
    def __init__(self, *args: str, env: dict[str, str] | None = None, startup_timeout: float = 60.0,
                 grpc_port: int = 0, http_port: int = 0, fixed_ports: bool = False) -> None:
        """``fixed_ports``: free ports chosen here, readiness from ``/readyz`` rather than the log
        (for a server whose log level hides the line that names its ports)."""
        self.fixed_ports = fixed_ports
        metrics_port = 0
        if fixed_ports:
            grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
        self.args = ["serve", "--host", "127.0.0.1", "--grpc-port", str(grpc_port), "--http-port", str(http_port),
                     "--metrics-port", str(metrics_port), *args]
        self.env = {**os.environ, **(env or {})}
        self.startup_timeout = startup_timeout
        self.log_path = Path(tempfile.mkstemp(prefix="kubeinfer-server-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None
        self.grpc_port, self.http_port, self.metrics_port = (grpc_port, http_port, metrics_port) if fixed_ports \
            else (0, 0, 0)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def start(self) -> ServerProcess:
        self.launch()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.fixed_ports and http_ok(f"{self.metrics_url}/readyz"):
                return self
            match = None if self.fixed_ports else READY.search(self.log())
            if match:
                self.grpc_port, self.http_port, self.metrics_port = int(match[1]), int(match[2]), int(match[3])
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"kubeinfer-server exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"kubeinfer-server did not become ready in {self.startup_timeout}s:\n{self.log()}")

    def launch(self) -> subprocess.Popen:
        """Start the process and return at once (``start`` also waits until it serves)."""
        self.proc = spawn([str(BIN), *self.args], self.log_path, env=self.env)
        return self.proc

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(10)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run_cli(*args: str, timeout: float = 60.0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``kubeinfer-server ARGS`` to completion and capture its output."""
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
