"""Right-sizing: a pod's CPU and memory from its measured usage, the VPA recommender's way (pure).

Usage samples (CPU cores, working-set bytes) go into decaying histograms:
exponential buckets (5% apart), each sample weighted by 2^(age / half-life) so
that the last day counts twice the day before. The CPU recommendation is a
percentile of the CPU histogram; the memory one a percentile of the memory
histogram, where each aggregation window contributes its peak only (memory is
not compressible: the peak is what must fit). A container that was OOM-killed
bumps memory to 1.2 x its usage then (at least +100 MiB), as the VPA does. Then
the safety margin, then the clamps (spec min and max, and never below what the
server needs to load the model). Too few samples: no recommendation.

``needs_change`` is the hysteresis: a new recommendation replaces the current
one only when it differs by more than the margin, and not sooner than a minimum
interval after the last change.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

BUCKET_RATIO = 1.05
CPU_FIRST_BUCKET = 0.01  # cores
MEMORY_FIRST_BUCKET = 1e7  # bytes
OOM_BUMP_RATIO = 1.2
OOM_MIN_BUMP_BYTES = 100 * 2**20
MEMORY_WINDOW_SECONDS = 24 * 3600  # the VPA's memory aggregation interval
HALF_LIFE_SECONDS = 24 * 3600
MIN_CHANGE_INTERVAL_SECONDS = 600


@dataclasses.dataclass(frozen=True)
class Sample:
    at: float  # seconds (any epoch, the same for every sample and for ``now``)
    cpu: float | None  # cores in use, averaged over the scrape interval
    memory: float | None  # working-set bytes


@dataclasses.dataclass(frozen=True)
class Policy:
    """spec.rightSizing, parsed: the percentiles, the clamps, the margin, how many samples."""

    cpu_percentile: float = 0.9
    memory_percentile: float = 0.95
    cpu_min: float = 0.25
    cpu_max: float = 8.0
    memory_min: float = 256 * 2**20
    memory_max: float = 16 * 2**30
    margin: float = 0.15
    min_samples: int = 100
    half_life_seconds: float = HALF_LIFE_SECONDS
    memory_window_seconds: float = MEMORY_WINDOW_SECONDS


@dataclasses.dataclass(frozen=True)
class Recommendation:
    cpu: float  # cores
    memory: float  # bytes
    intra_op_threads: int
    samples: int
    window_seconds: float
    cpu_percentile_value: float  # before the margin and the clamps
    memory_peak: float
    clamped_by: tuple[str, ...]  # "cpu.min", "memory.max", "model load", ...


class DecayingHistogram:
    """Weights of values in exponential buckets; newer samples weigh more (half-life)."""

    def __init__(self, first_bucket: float, half_life_seconds: float, reference: float) -> None:
        self.first_bucket = first_bucket
        self.half_life = half_life_seconds
        self.reference = reference  # decay is relative to it, so weights stay finite
        self.weights: dict[int, float] = {}

    def _bucket(self, value: float) -> int:
        if value <= self.first_bucket:
            return 0
        return 1 + int(math.log(value / self.first_bucket, BUCKET_RATIO))

    def _upper(self, bucket: int) -> float:
        return self.first_bucket * BUCKET_RATIO ** bucket

    def add(self, value: float, at: float) -> None:
        weight = 2.0 ** ((at - self.reference) / self.half_life)
        bucket = self._bucket(value)
        self.weights[bucket] = self.weights.get(bucket, 0.0) + weight

    def percentile(self, share: float) -> float:
        """The smallest bucket end below which ``share`` of the weight lies (0 when empty)."""
        total = sum(self.weights.values())
        if not total:
            return 0.0
        running = 0.0
        for bucket in sorted(self.weights):
            running += self.weights[bucket]
            if running >= share * total:
                return self._upper(bucket)
        return self._upper(max(self.weights))


def recommend(samples: Sequence[Sample], policy: Policy, ooms: Iterable[Sample] = (),
              load_floor_memory: float = 0.0) -> Recommendation | None:
    """The right size for the container these samples measure, or None with fewer than ``min_samples``."""
    measured = [s for s in samples if s.cpu is not None or s.memory is not None]
    if len(measured) < policy.min_samples:
        return None
    start, end = min(s.at for s in measured), max(s.at for s in measured)
    cpu = DecayingHistogram(CPU_FIRST_BUCKET, policy.half_life_seconds, end)
    for sample in measured:
        if sample.cpu is not None:
            cpu.add(sample.cpu, sample.at)
    memory = DecayingHistogram(MEMORY_FIRST_BUCKET, policy.half_life_seconds, end)
    peaks = _window_peaks(measured, policy.memory_window_seconds)
    for bump in ooms:
        if bump.memory is not None:
            peaks.append((bump.at, max(bump.memory * OOM_BUMP_RATIO, bump.memory + OOM_MIN_BUMP_BYTES)))
    for at, peak in peaks:
        memory.add(peak, at)
    cpu_value, memory_value = cpu.percentile(policy.cpu_percentile), memory.percentile(policy.memory_percentile)
    clamped: list[str] = []
    cpu_cores = _clamp(cpu_value * (1 + policy.margin), policy.cpu_min, policy.cpu_max, "cpu", clamped)
    memory_bytes = _clamp(memory_value * (1 + policy.margin), policy.memory_min, policy.memory_max, "memory", clamped)
    if memory_bytes < load_floor_memory:
        memory_bytes = load_floor_memory
        clamped.append("model load")
    cpu_cores = math.ceil(cpu_cores * 1000) / 1000  # whole millicores
    return Recommendation(
        cpu=cpu_cores,
        memory=float(math.ceil(memory_bytes / 2**20) * 2**20),  # whole MiB
        intra_op_threads=max(1, math.ceil(cpu_cores)),  # the server's own rule for its CPU limit
        samples=len(measured), window_seconds=end - start, cpu_percentile_value=cpu_value,
        memory_peak=max((p for _, p in peaks), default=0.0), clamped_by=tuple(clamped))


def _window_peaks(samples: Sequence[Sample], window: float) -> list[tuple[float, float]]:
    """(time of the peak, peak) of memory in each aggregation window."""
    peaks: dict[int, tuple[float, float]] = {}
    for sample in samples:
        if sample.memory is None:
            continue
        key = int(sample.at // window)
        if key not in peaks or sample.memory > peaks[key][1]:
            peaks[key] = (sample.at, sample.memory)
    return [peaks[k] for k in sorted(peaks)]


def _clamp(value: float, low: float, high: float, what: str, clamped: list[str]) -> float:
    if value < low:
        clamped.append(f"{what}.min")
        return low
    if value > high:
        clamped.append(f"{what}.max")
        return high
    return value


def needs_change(current_cpu: float, current_memory: float, new: Recommendation, margin: float,
                 last_change_at: float | None, now: float,
                 min_interval: float = MIN_CHANGE_INTERVAL_SECONDS) -> bool:
    """Hysteresis: only a change beyond the margin, and not within ``min_interval`` of the last one."""
    if last_change_at is not None and now - last_change_at < min_interval:
        return False
    return _beyond(current_cpu, new.cpu, margin) or _beyond(current_memory, new.memory, margin)


def _beyond(current: float, new: float, margin: float) -> bool:
    return not current or abs(new - current) / current > margin
