"""HTTP to the tooling's own hosts (loopback, the real node's bridge, pod IPs): never through a proxy."""

from __future__ import annotations

import urllib.request

DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when a GET of ``url`` answers 200; False when it fails or cannot connect."""
    try:
        with DIRECT.open(url, timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False
