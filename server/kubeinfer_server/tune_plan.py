"""The sweep ``kubeinfer-server tune`` measures, and the rules that prune it. Pure: numbers in, plans out.

A configuration is what a pod of the server is made of: how many CPUs it
gets, and serve's ``--intra-op-threads``, ``--instances`` and
``--max-batch-size``. ``plan`` turns the sweep's lists into the ordered
configurations to measure and the ones skipped before measuring, each with
its reason. Three rules prune while measuring, each a function here so that
the sweep's loop only asks:

- ``ramp_stop``: concurrencies are tried in ascending order; the ramp stops
  once a point's p99 passes the bound (more load only adds queueing) or two
  steps in a row grew throughput less than ``PLATEAU_GAIN`` over the best
  before them (one flat step is noise, or batching not yet filling).
- ``group_stop``: within one (cpus, threads, instances), batch sizes are tried
  in ascending order; the larger ones are skipped once one gains less than
  ``PLATEAU_GAIN`` over the one before, or when the lowest concurrency (1)
  already misses the bound (a lone request runs alone at any batch size).
- the time budget, applied by the sweep itself (``tune.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

PLATEAU_GAIN = 0.05  # less than 5% more throughput counts as "stopped growing"
PLATEAU_PATIENCE = 2  # ... for this many steps in a row: one step is within a shared machine's noise


@dataclass(frozen=True, slots=True, order=True)
class Config:
    """One server configuration: the CPUs it is pinned to and serve's flags."""

    cpus: int
    intra_op_threads: int
    instances: int
    max_batch_size: int

    @property
    def group(self) -> tuple[int, int, int]:
        """The configurations that differ only by batch size share a group."""
        return self.cpus, self.intra_op_threads, self.instances

    def label(self) -> str:
        return (f"cpus={self.cpus} threads={self.intra_op_threads} instances={self.instances} "
                f"max_batch_size={self.max_batch_size}")


@dataclass(frozen=True, slots=True)
class Skip:
    config: Config
    reason: str


@dataclass(frozen=True, slots=True)
class Plan:
    configs: tuple[Config, ...]  # in the order they are measured
    skipped: tuple[Skip, ...]  # before measuring
    notes: tuple[str, ...]  # what was changed in the sweep asked for, and why
    default: Config | None  # serve's defaults, measured first for comparison (None: not asked); it may
    # also be one of ``configs``, then measured once


@dataclass(frozen=True, slots=True)
class Sweep:
    """The lists given on the command line (``threads`` 0: as many as the CPUs, like serve)."""

    cpus: tuple[int, ...]
    threads: tuple[int, ...]
    instances: tuple[int, ...]
    max_batch_sizes: tuple[int, ...]


def plan(sweep: Sweep, machine_cpus: int, default: tuple[int, int, int] | None) -> Plan:
    """The configurations to measure: CPU counts capped at ``machine_cpus``, pruned, ordered.

    ``default``: serve's (threads, instances, max batch size), measured first at the largest
    CPU count of the sweep, or None.
    """
    cpus, notes = _capped(sweep.cpus, machine_cpus)
    configs, skipped = [], []
    for count in cpus:
        for config in _group_order(count, sweep):
            reason = _oversubscribed(config)
            if reason:
                skipped.append(Skip(config, reason))
            elif config not in configs:
                configs.append(config)
    baseline = None
    if default is not None:
        threads, instances, batch = default
        baseline = Config(cpus[-1], threads or cpus[-1], instances, batch)
    return Plan(tuple(configs), tuple(skipped), tuple(notes), baseline)


def _capped(cpus: Sequence[int], machine_cpus: int) -> tuple[list[int], list[str]]:
    notes = [f"--cpus {count} capped to {machine_cpus}: this machine lets tune use {machine_cpus} CPUs"
             for count in sorted(set(cpus)) if count > machine_cpus]
    return sorted({min(count, machine_cpus) for count in cpus}), notes


def _group_order(cpus: int, sweep: Sweep) -> list[Config]:
    """The configurations of one CPU count: groups that fill the CPUs first, batch sizes ascending."""
    groups = sorted({(t or cpus, i) for t in sweep.threads for i in sweep.instances},
                    key=lambda g: (-g[0] * g[1], -g[0]))
    return [Config(cpus, threads, instances, batch)
            for threads, instances in groups for batch in sorted(set(sweep.max_batch_sizes))]


def _oversubscribed(config: Config) -> str:
    if config.intra_op_threads > config.cpus:
        return f"{config.intra_op_threads} intra-op threads on {config.cpus} CPUs: never more threads than CPUs"
    if config.intra_op_threads * config.instances > config.cpus:
        return (f"{config.instances} instances x {config.intra_op_threads} threads on {config.cpus} CPUs: "
                "their thread pools would only contend")
    return ""


@dataclass(frozen=True, slots=True)
class Measured:
    """What the pruning rules read of one point."""

    concurrency: int
    throughput: float
    p99_ms: float
    failed: bool = False


def ramp_stop(ramp: Sequence[Measured], p99_ms: float) -> str:
    """Why the concurrency ramp of one configuration stops after its latest point; "" to go on."""
    latest = ramp[-1]
    if latest.failed:
        return "requests failed"
    if latest.p99_ms > p99_ms:
        return f"p99 {latest.p99_ms:.1f} ms passed the bound {p99_ms:g} ms at concurrency {latest.concurrency}"
    before = ramp[:-PLATEAU_PATIENCE]
    best = max((m.throughput for m in before), default=0.0)
    recent = ramp[-PLATEAU_PATIENCE:]
    if before and best and all(m.throughput < best * (1 + PLATEAU_GAIN) for m in recent):
        return (f"throughput stopped growing: {PLATEAU_PATIENCE} steps up to concurrency {latest.concurrency} "
                f"gained under {PLATEAU_GAIN:.0%} over {best:.0f} inf/s")
    return ""


def best_within(ramp: Sequence[Measured], p99_ms: float) -> float:
    """The highest throughput of a ramp's points under the bound (0: none)."""
    return max((m.throughput for m in ramp if not m.failed and m.p99_ms <= p99_ms), default=0.0)


def group_stop(config: Config, ramp: Sequence[Measured], previous_best: float | None, p99_ms: float) -> str:
    """Why the larger batch sizes of ``config``'s group are skipped after measuring it; "" to go on.

    ``previous_best``: the best throughput under the bound of the group's batch size before
    this one (None: this is the group's first).
    """
    first = ramp[0] if ramp else None
    if first is not None and first.concurrency == 1 and (first.failed or first.p99_ms > p99_ms):
        return (f"{config.label()} missed the bound at concurrency 1, where every batch size runs "
                "each request alone")
    best = best_within(ramp, p99_ms)
    if previous_best is not None and previous_best > 0 and best < previous_best * (1 + PLATEAU_GAIN):
        return (f"max batch size {config.max_batch_size} gained under {PLATEAU_GAIN:.0%} over the one before "
                f"({best:.0f} against {previous_best:.0f} inf/s under the bound)")
    return ""
