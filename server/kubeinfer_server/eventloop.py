"""The event loop the server runs on: uvloop when it is installed (the default), else asyncio's.

gRPC's asyncio stack runs on any asyncio loop. uvloop's loop is written in
Cython; with it the per-call work of grpc.aio that runs on the loop (waking
handlers, completing futures, polling) costs less, so a single server process
answers more small requests per second (see bench/RESULTS.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

CHOICES = ("auto", "uvloop", "asyncio")


def runner(choice: str) -> tuple[str, Callable[[Coroutine], Any]]:
    """``(name, run)``: the loop's name and a function that runs a coroutine on a new loop of it."""
    if choice not in CHOICES:
        raise ValueError(f"--event-loop takes one of {', '.join(CHOICES)}, got {choice!r}")
    if choice == "asyncio":
        return "asyncio", asyncio.run
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ValueError("--event-loop uvloop: uvloop is not installed (pip install uvloop)") from None
        return "asyncio", asyncio.run
    return "uvloop", uvloop.run
