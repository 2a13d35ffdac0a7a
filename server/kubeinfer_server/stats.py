"""Per-model counters behind Triton's ModelStatistics (true counts, nanoseconds)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)


@dataclass(slots=True)
class BatchDurations:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class ModelStats:
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0  # rows answered
    execution_count: int = 0  # batches run
    last_inference_ms: int = 0
    batches: dict[int, BatchDurations] = field(default_factory=dict)

    def record_batch(self, rows: int, requests: int, timings: tuple[float, float, float]) -> None:
        concat_s, infer_s, split_s = timings
        self.execution_count += 1
        self.inference_count += rows
        self.last_inference_ms = int(time.time() * 1000)
        # Triton counts compute per request: each request in the batch shares the batch's time.
        self.compute_input.add(concat_s * requests, requests)
        self.compute_infer.add(infer_s * requests, requests)
        self.compute_output.add(split_s * requests, requests)
        per_size = self.batches.setdefault(rows, BatchDurations())
        per_size.compute_input.add(concat_s)
        per_size.compute_infer.add(infer_s)
        per_size.compute_output.add(split_s)
