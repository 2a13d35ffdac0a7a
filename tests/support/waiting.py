"""Bounded polling for tests: wait until something a server does in the background shows."""

from __future__ import annotations

import time


def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    """Call ``predicate`` every 50 ms until it returns something true, and return that; fail
    the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
