"""The access log: one JSON line per request (sampled), as the ``kubeinfer.access`` logger.

A line reads like any other log line of the server (``<asctime> INFO
kubeinfer.access: {...}``), but it does not go through ``logging`` one record
at a time: a record, a formatter and a flushed write per request cost more
than a small model's inference. Lines are formatted by hand, buffered, and
written to the log stream in one write at most every ``FLUSH_EVERY_S`` (or
every ``FLUSH_LINES`` lines), and on ``flush`` at shutdown. Setting the
``kubeinfer.access`` logger above INFO (``--log-level warning``) turns it off.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sys
import time
from typing import TextIO

log = logging.getLogger("kubeinfer.access")

FLUSH_EVERY_S = 0.05
FLUSH_LINES = 512
_QUOTED_CACHE = 4096  # distinct model and client names kept JSON-quoted


class AccessLog:
    def __init__(self, sample_rate: float, stream: TextIO | None = None) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError("access log sample rate must be between 0 and 1")
        self.sample_rate = sample_rate
        self._random = random.Random()
        self._stream = stream
        self._lines: list[str] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._second = -1
        self._local = self._utc = ""
        self._quoted: dict[str, str] = {}

    def record(self, model: str, client: str, code: str, seconds: float, batch_size: int) -> None:
        if self.sample_rate < 1.0 and self._random.random() >= self.sample_rate:
            return
        if not log.isEnabledFor(logging.INFO):
            return
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._local = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._utc = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        ms = int((now - second) * 1000)
        self._lines.append(
            f'{self._local},{ms:03d} INFO kubeinfer.access: {{"time":"{self._utc}.{ms:03d}Z",'
            f'"model":{self._quote(model)},"client":{self._quote(client)},"code":"{code}",'
            f'"latency_ms":{round(seconds * 1000, 3)},"batch_size":{batch_size}}}\n'
        )
        if len(self._lines) >= FLUSH_LINES:
            self.flush()
        elif self._flush_handle is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a test calling directly): write at once
                self.flush()
                return
            self._flush_handle = loop.call_later(FLUSH_EVERY_S, self.flush)

    def flush(self) -> None:
        """Write the buffered lines (the server calls this at shutdown too)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._lines:
            return
        stream = self._stream or sys.stderr
        text = "".join(self._lines)
        self._lines.clear()
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):  # a closed or broken log stream must not fail requests
            pass

    def _quote(self, text: str) -> str:
        quoted = self._quoted.get(text)
        if quoted is None:
            quoted = json.dumps(text)
            if len(self._quoted) < _QUOTED_CACHE:
                self._quoted[text] = quoted
        return quoted
