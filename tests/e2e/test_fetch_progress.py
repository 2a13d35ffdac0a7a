"""End to end: while the init step fetches a model, the status says how far it has come.

A slow HTTP store of the test's own, on the real node's bridge address, sends a
16 MiB file (with its Content-Length) at 1 MiB/s. The fetch step logs its
progress every 5 s; the operator reads the last line of that log while the step
runs (issue 17). Covers: ``Ready=False LoadingModel`` quotes "N of 16.0 MiB (P%)",
and the figure moves during the fetch (the operator looks again although no
object changes).
"""

from __future__ import annotations

import http.server
import re
import threading
import time
from collections.abc import Iterator

import pytest

from e2e.test_serving import apply, condition, infd
from localcluster.nodeconfig import NODE_IP

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

SIZE = 16 << 20
PIECE = 256 << 10
PIECES_PER_SECOND = 4  # 1 MiB/s: the fetch takes 16 s


class _SlowStore(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(200)
        self.send_header("Content-Length", str(SIZE))
        self.end_headers()
        deadline = time.monotonic() + 60  # bounded, whatever the client does
        sent = 0
        try:
            while sent < SIZE and time.monotonic() < deadline and not self.server.stopping:  # type: ignore[attr-defined]
                self.wfile.write(bytes(PIECE))
                sent += PIECE
                time.sleep(1 / PIECES_PER_SECOND)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def slow_store() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer((NODE_IP, 0), _SlowStore)
    httpd.daemon_threads = True
    httpd.stopping = False  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{NODE_IP}:{httpd.server_address[1]}/big.onnx"
    finally:
        httpd.stopping = True  # type: ignore[attr-defined]
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def test_loading_model_says_how_much_is_fetched(cluster, installed, slow_store):
    ns, name = installed.apps, "slow-fetch"
    progress = re.compile(rf"Fetching the model from {re.escape(slow_store)}: (\d+\.\d) of 16\.0 MiB \((\d+)%\)")
    seen: set[str] = set()

    def two_figures() -> bool:
        found = condition(cluster, ns, name)
        if found.get("reason") == "LoadingModel" and (match := progress.search(found.get("message", ""))):
            seen.add(match[1])
        return len(seen) >= 2

    apply(cluster, infd(name, ns, slow_store, replicas=1))
    try:
        cluster.wait_for("LoadingModel with two different fetch figures", two_figures, timeout=120)
        assert all(0 < float(mib) < 16 for mib in seen), seen
    finally:  # the node is shared by the whole e2e session
        cluster.kubectl("delete", "infd", name, "-n", ns, "--wait=true", "--timeout=60s", check=False, timeout=90)
