"""Bounded polling: wait until something done in the background shows, or fail with a deadline."""

from __future__ import annotations

import time


def wait_for(predicate, timeout: float = 10.0, what: str = "condition", interval: float = 0.05):
    """Call ``predicate`` every ``interval`` seconds until it returns something true, and
    return that; fail (AssertionError, so a test fails) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
