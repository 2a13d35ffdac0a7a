"""Test hosts: a process in a network namespace of its own on the runner's bridge.

The model store that the e2e tests and the demo serve models from is one: an HTTP
server at 10.244.255.10:8080 that the pods' ``kubeinfer-server fetch`` really
downloads from. The addresses come from 10.244.255.0/24, which pods never get.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from devkit.processes import spawn, terminate

from . import net

MODEL_STORE_IP = "10.244.255.10"
MODEL_STORE_PORT = 8080


class TestHost:
    def __init__(self, name: str, address: str) -> None:
        self.netns = f"{net.NETNS_PREFIX}host-{name}"[:15]
        self.veth = f"{net.VETH_PREFIX}h{name}"[:15]
        self.address = address
        self.proc: subprocess.Popen | None = None

    def start(self, argv: list[str], log: Path, tie_to_parent: bool = True) -> TestHost:
        net.add_netns(self.netns, self.veth, self.address)
        self.proc = spawn(["ip", "netns", "exec", self.netns, *argv], log, tie_to_parent=tie_to_parent)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, grace=5)
        net.delete_netns(self.netns, self.veth)


def model_store(directory: Path, log: Path, tie_to_parent: bool = True) -> TestHost:
    """An HTTP server for ``directory`` on its own test host; URLs: ``store_url(name)``."""
    host = TestHost("store", MODEL_STORE_IP)
    return host.start([sys.executable, "-m", "http.server", "--bind", MODEL_STORE_IP,
                       "--directory", str(directory), str(MODEL_STORE_PORT)], log, tie_to_parent)


def store_url(name: str) -> str:
    return f"http://{MODEL_STORE_IP}:{MODEL_STORE_PORT}/{name}"
