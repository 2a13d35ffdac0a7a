"""The access log: one JSON line per call (sampled): who called which model, how, and what came of it.

A line holds the request id, the transport and method, the peer address, the
client identity, the model and version, the status code, the latency and the
rows of the batch the call ran in. Inference calls, metadata calls and
refused calls are logged alike; health and readiness probes are not.

On stderr a line reads like any other log line of the server (``<asctime>
INFO kubeinfer.access: {...}``); ``--access-log-file`` writes the bare JSON
lines to a file, rotated by size (``RotatingFile``), as well as or instead of
stderr. The log does not go through ``logging`` (a record, a formatter and a
flushed write per request cost more than a small model's inference), so
``--log-level`` does not silence it; ``--access-log-sample-rate 0`` does.
Lines are buffered and written in one write at most every ``FLUSH_EVERY_S``
(or every ``FLUSH_LINES`` lines), and on ``flush`` at shutdown.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import TextIO

log = logging.getLogger(__name__)

FLUSH_EVERY_S = 0.05
FLUSH_LINES = 512
MAX_ID_CHARS = 256  # of a client's request id, as logged
_QUOTED_CACHE = 4096  # distinct model, client and method names kept JSON-quoted


@dataclass(slots=True)
class Call:
    """One call as the transport received it: what the access log records of it."""

    protocol: str  # "grpc" or "http"
    method: str  # the RPC ("ModelInfer") or the REST route ("POST /v2/models/{model}/infer")
    peer: str  # "ipv4:127.0.0.1:50312", gRPC's form, for both transports
    client: str  # identity.Identity's name for the caller
    id: str = ""  # the client's request id, or one the server made up (echoed in the response)
    model: str = ""
    version: str = ""


class RequestIds:
    """Request ids for calls that bring none: a random prefix per process and a counter."""

    def __init__(self) -> None:
        self._prefix = f"{random.getrandbits(48):012x}"
        self._count = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}-{next(self._count)}"


class RotatingFile:
    """A log file that is renamed to ``PATH.1`` (``PATH.1`` to ``PATH.2``, ...) when it would
    pass ``max_bytes``; the ``backups`` newest old files are kept."""

    def __init__(self, path: str, max_bytes: int, backups: int) -> None:
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (kept open; closed by close())
        self._size = self._file.tell()

    def write(self, text: str) -> None:
        if self._size and self._size + len(text) > self.max_bytes:
            self._rotate()
        self._file.write(text)
        self._file.flush()
        self._size += len(text)

    def close(self) -> None:
        self._file.close()

    def _rotate(self) -> None:
        self._file.close()
        for index in range(self.backups - 1, 0, -1):
            older = f"{self.path}.{index}"
            if os.path.exists(older):
                os.replace(older, f"{self.path}.{index + 1}")
        if self.backups:
            os.replace(self.path, f"{self.path}.1")
        self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115
        self._size = 0


class AccessLog:
    def __init__(self, sample_rate: float, stream: TextIO | None = None, file: RotatingFile | None = None,
                 to_stderr: bool = True) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError("access log sample rate must be between 0 and 1")
        self.sample_rate = sample_rate
        self._random = random.Random()
        self._stream = stream  # None: sys.stderr at write time (tests swap it)
        self._to_stream = to_stderr
        self._file = file
        self._file_lines: list[str] = []
        self._stream_lines: list[str] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._second = -1
        self._local = self._utc = ""
        self._quoted: dict[str, str] = {}

    def record(self, call: Call, code: str, seconds: float, batch_size: int) -> None:
        if self.sample_rate < 1.0 and self._random.random() >= self.sample_rate:
            return
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._local = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._utc = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        ms = int((now - second) * 1000)
        quote = self._quote
        line = (
            f'{{"time":"{self._utc}.{ms:03d}Z","id":{json.dumps(call.id[:MAX_ID_CHARS])},'
            f'"protocol":"{call.protocol}","method":{quote(call.method)},"peer":{quote(call.peer)},'
            f'"client":{quote(call.client)},"model":{quote(call.model)},"version":{quote(call.version)},'
            f'"code":"{code}","latency_ms":{round(seconds * 1000, 3)},"batch_size":{batch_size}}}\n'
        )
        if self._file is not None:
            self._file_lines.append(line)
        if self._to_stream:
            self._stream_lines.append(f"{self._local},{ms:03d} INFO kubeinfer.access: {line}")
        if len(self._file_lines) + len(self._stream_lines) >= FLUSH_LINES:
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
        if self._file_lines:
            text, self._file_lines = "".join(self._file_lines), []
            self._write_file(text)
        if self._stream_lines:
            text, self._stream_lines = "".join(self._stream_lines), []
            self._write_stream(text)

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()

    def _write_file(self, text: str) -> None:
        file = self._file
        assert file is not None
        try:
            file.write(text)
        except (OSError, ValueError) as exc:  # a full disk must not fail requests
            log.warning("Could not write the access log file %s: %s", file.path, exc)

    def _write_stream(self, text: str) -> None:
        stream = self._stream or sys.stderr
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
