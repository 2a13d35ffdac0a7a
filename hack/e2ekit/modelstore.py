"""The model store of the e2e tests and the demo: an HTTP server on the real node's bridge address.

Pods' ``kubeinfer-server fetch`` init containers really download from it: the node's
address (``NODE_IP``) is on the bridge the pods are plugged into, so it is a test host
of our own and nothing leaves the machine.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from devkit.ports import free_port
from devkit.processes import spawn, terminate
from localcluster.nodeconfig import NODE_IP


@dataclass
class ModelStore:
    directory: Path
    port: int
    proc: subprocess.Popen | None = None

    def url(self, name: str) -> str:
        return f"http://{NODE_IP}:{self.port}/{name}"

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, grace=5)


def start(directory: Path, log: Path, port: int = 0, tie_to_parent: bool = True) -> ModelStore:
    """Serve ``directory`` at ``http://NODE_IP:port/`` (a free port when 0)."""
    port = port or free_port()
    proc = spawn([sys.executable, "-m", "http.server", "--bind", NODE_IP, "--directory", str(directory),
                  str(port)], log, tie_to_parent=tie_to_parent)
    return ModelStore(directory, port, proc)
