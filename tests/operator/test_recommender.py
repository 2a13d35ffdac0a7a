"""The right-sizing recommender on synthetic usage series (pure).

Covers: a steady series gives its level plus the margin; spikes below the
CPU percentile's share are ignored, above it they set the CPU; memory follows
the peaks (not compressible), and a growing series weighs its recent windows
most (decay); an OOM kill bumps memory past the usage it died at; the clamps
(spec min and max, the model's load floor) are applied and said; too few
samples give no recommendation; intra-op threads follow the CPU; hysteresis
holds a change within the margin or too soon after the last.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from kubeinfer_operator.recommender import DecayingHistogram, Policy, Sample, needs_change, recommend

MIB = 2**20
HOUR = 3600.0


def series(cpu, memory, step: float = 30.0, start: float = 0.0) -> list[Sample]:
    return [Sample(start + i * step, float(c), float(m)) for i, (c, m) in enumerate(zip(cpu, memory, strict=True))]


def steady(count: int = 240, cpu: float = 0.5, memory: float = 400 * MIB, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    return series(cpu + rng.uniform(-0.02, 0.02, count), memory + rng.uniform(-5, 5, count) * MIB)


def test_steady_usage_plus_the_margin():
    found = recommend(steady(), Policy(margin=0.15))
    assert found is not None and found.samples == 240 and found.clamped_by == ()
    assert 0.5 * 1.15 <= found.cpu <= 0.52 * 1.05 * 1.15 + 0.001
    assert 405 * MIB * 1.15 <= found.memory <= 405 * MIB * 1.05 * 1.15 + MIB
    assert found.intra_op_threads == 1 and found.window_seconds == 239 * 30


@pytest.mark.parametrize("spike_share, expect_spike", [(0.05, False), (0.2, True)])
def test_cpu_spikes_count_only_above_the_percentiles_share(spike_share, expect_spike):
    count = 400
    cpu = np.full(count, 0.2)
    cpu[np.random.default_rng(1).permutation(count)[: int(count * spike_share)]] = 2.0
    found = recommend(series(cpu, np.full(count, 300 * MIB)), Policy(cpu_percentile=0.9, margin=0.0, cpu_min=0.01))
    assert found is not None
    assert (found.cpu >= 2.0) is expect_spike and (found.cpu < 0.25) is not expect_spike
    assert found.intra_op_threads == math.ceil(found.cpu)  # as the server derives them from its CPU limit


def test_memory_follows_the_peaks_and_recent_windows_weigh_most():
    hours = 96  # four daily windows, growing from 200 MiB to 800 MiB
    memory = np.linspace(200, 800, hours * 120) * MIB
    samples = series(np.full(hours * 120, 0.3), memory)
    found = recommend(samples, Policy(memory_percentile=0.5, margin=0.0))
    assert found is not None and found.memory_peak >= 799 * MIB
    window_peaks = [memory[(d + 1) * 24 * 120 - 1] for d in range(4)]
    assert found.memory >= window_peaks[2]  # the weighted median sits in the recent windows, not the middle
    flat = Policy(memory_percentile=0.5, margin=0.0, half_life_seconds=1e12)  # no decay
    assert recommend(samples, flat).memory < found.memory


def test_an_oom_kill_bumps_memory():
    samples = steady(memory=480 * MIB)
    plain = recommend(samples, Policy())
    bumped = recommend(samples, Policy(), ooms=[Sample(samples[-1].at, None, 500 * MIB)])
    assert plain is not None and bumped is not None
    assert bumped.memory >= 600 * MIB * 1.15 > plain.memory


def test_clamps_are_applied_and_said():
    tiny = recommend(steady(cpu=0.01, memory=50 * MIB), Policy(cpu_min=0.25, memory_min=256 * MIB))
    assert tiny is not None and tiny.cpu == 0.25 and tiny.memory == 256 * MIB
    assert tiny.clamped_by == ("cpu.min", "memory.min")
    huge = recommend(steady(cpu=20.0, memory=40 * 2**30), Policy(cpu_max=8.0, memory_max=16 * 2**30))
    assert huge is not None and (huge.cpu, huge.memory) == (8.0, 16 * 2**30)
    assert huge.clamped_by == ("cpu.max", "memory.max") and huge.intra_op_threads == 8
    floor = recommend(steady(memory=300 * MIB), Policy(), load_floor_memory=700 * MIB)
    assert floor is not None and floor.memory == 700 * MIB and "model load" in floor.clamped_by


def test_too_few_samples_give_none():
    assert recommend(steady(count=99), Policy(min_samples=100)) is None
    assert recommend([Sample(i, None, None) for i in range(500)], Policy()) is None
    assert recommend(steady(count=100), Policy(min_samples=100)) is not None


def test_hysteresis():
    found = recommend(steady(), Policy())
    assert found is not None
    assert not needs_change(found.cpu * 1.1, found.memory, found, margin=0.15, last_change_at=None, now=0)
    assert needs_change(found.cpu * 2, found.memory, found, margin=0.15, last_change_at=None, now=0)
    assert not needs_change(found.cpu * 2, found.memory, found, margin=0.15, last_change_at=100, now=400)
    assert needs_change(found.cpu * 2, found.memory, found, margin=0.15, last_change_at=100, now=800)


def test_histogram_percentiles_and_decay():
    histogram = DecayingHistogram(0.01, half_life_seconds=HOUR, reference=0.0)
    assert histogram.percentile(0.9) == 0.0
    histogram.add(1.0, at=-10 * HOUR)  # weighs 2^-10
    histogram.add(0.1, at=0.0)
    assert histogram.percentile(0.99) == pytest.approx(0.1, rel=0.05)
    assert histogram.percentile(1.0) == pytest.approx(1.0, rel=0.05)
