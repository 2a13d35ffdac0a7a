"""The access log: one JSON line per request (sampled), on the ``kubeinfer.access`` logger."""

from __future__ import annotations

import json
import logging
import random
import time

log = logging.getLogger("kubeinfer.access")


class AccessLog:
    def __init__(self, sample_rate: float) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError("access log sample rate must be between 0 and 1")
        self.sample_rate = sample_rate
        self._random = random.Random()

    def record(self, model: str, client: str, code: str, seconds: float, batch_size: int) -> None:
        if self.sample_rate < 1.0 and self._random.random() >= self.sample_rate:
            return
        if not log.isEnabledFor(logging.INFO):
            return
        log.info(json.dumps({
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z",
            "model": model,
            "client": client,
            "code": code,
            "latency_ms": round(seconds * 1000, 3),
            "batch_size": batch_size,
        }, separators=(",", ":")))
