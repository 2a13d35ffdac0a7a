"""Free TCP ports for servers started by the tooling and the tests.

A port found free is closed again before the caller binds it, so another process can
take it in between: callers that start a server on it must expect that race (or use
port 0 where the server reports the port it bound).
"""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
