"""``kubeinfer-server tune``: measure server configurations on real load, then size a pod from the figures.

``run`` takes ``TuneSettings`` and, top-down:

1. reads the model's graph (``inspect_model``): a file that is not ONNX is a
   usage error before anything starts;
2. plans the sweep (``tune_plan.plan``): CPU counts capped at what this
   machine lets tune use, configurations that oversubscribe skipped, serve's
   defaults first (for comparison);
3. for each configuration, starts a real ``kubeinfer-server serve`` pinned
   to that many CPUs (``tune_server``) and drives it at ascending
   concurrencies (``tune_client``: perf_analyzer or the built-in client, on
   the other CPUs), each point a fixed window, pruned by ``tune_plan``'s rules
   and stopped by the time budget;
4. measures the choice again on a fresh server (``--confirmations``
   times at most, in time the sweep keeps back for it): a choice that misses
   the bound then, or falls behind the next best, gives way to it;
5. decides from the points alone (``tune_report.choose``) and returns the
   report: every point, the chosen one and why, the pod's resources, the
   replicas for ``--target-rps``, serve's defaults beside it.

Exit codes (the CLI's): 0 a configuration met the bound, 3 none did (the
report names the closest), 1 ``TuneFailed`` (no point could be measured), 2
``TuneUsageError`` (arguments or a model that do not fit; nothing started).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kubeinfer_server import tune_client as client
from kubeinfer_server import tune_plan
from kubeinfer_server import tune_report as reporting
from kubeinfer_server.batcher import BatchingConfig
from kubeinfer_server.cpulimit import cgroup_cpu_limit
from kubeinfer_server.model import ModelOptions
from kubeinfer_server.tune_plan import Config, Measured
from kubeinfer_server.tune_report import Point
from kubeinfer_server.tune_server import ServerFailed, ServerUnderTest, machine_cpus
from kubeinfer_server.tune_settings import (
    ModelShape,
    TuneSettings,
    TuneUsageError,
    inspect_model,
    perf_analyzer_shapes,
    serve_args_list,
    served_name,
)

log = logging.getLogger(__name__)

NOT_LOADABLE = "is not a loadable ONNX model"  # the server's ModelLoadError phrase
SERVER_START_TIMEOUT_S = 120.0
FIRST_START_GUESS_S = 3.0  # until a start has been timed
CLIENT_START_GUESS_S = 1.0  # a load process's start and ModelMetadata, beside its window
CONFIRM_SLOTS = 2  # server starts and points kept back from the sweep for measuring the choice again


class TuneFailed(Exception):
    """No point could be measured (exit 1)."""


def run(settings: TuneSettings) -> dict[str, Any]:
    """Measure the sweep and return the report (see the module doc)."""
    shape = inspect_model(settings.model)
    found = None if settings.client == "builtin" else client.find_perf_analyzer()
    if settings.client == "perf_analyzer" and found is None:
        raise TuneUsageError("--client perf_analyzer: perf_analyzer is not on PATH nor in "
                             "$PERF_ANALYZER_HOME/bin (bench/install_perf_analyzer.sh installs it)")
    cores = machine_cpus()[:cgroup_cpu_limit()]
    batch_sizes = settings.max_batch_sizes if shape.batchable else (0,)
    sweep = tune_plan.Sweep(settings.cpus, settings.threads, settings.instances, batch_sizes)
    default = (ModelOptions().intra_op_threads, BatchingConfig().instances, BatchingConfig().max_batch_size)
    plan = tune_plan.plan(sweep, len(cores), default if settings.compare_default else None)
    notes = list(plan.notes)
    if not shape.batchable:
        notes.append("the model's first dimension is not dynamic: the server cannot batch it, max batch size 0 only")
    runner = Sweeper(settings, plan, shape, cores, found, notes)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kubeinfer-tune-") as scratch:
        points = runner.run(Path(scratch))
    if not points:
        raise TuneFailed(runner.failure or "the budget ran out before any point was measured")
    if any(p.cpu >= len(cores) for p in points):
        notes.append(f"at {len(cores)} CPUs (all tune may use) the load generator ran on the server's CPUs: "
                     "those points understate what a pod of that size serves")
    goals = reporting.Goals(settings.p99_ms, settings.target_rps, settings.memory_margin)
    result = reporting.report(points, plan, goals, runner.skipped, notes)
    return {"model": settings.model, "machine_cpus": len(cores), "client": runner.client_name,
            "budget_seconds": settings.budget_seconds, "point_seconds": settings.point_seconds,
            "elapsed_seconds": round(time.monotonic() - started, 1), "budget_exhausted": runner.out_of_time,
            **result}


class Sweeper:
    """The measuring loop: one server per configuration, one load run per point, within the budget."""

    def __init__(self, settings: TuneSettings, plan: tune_plan.Plan, shape: ModelShape, cores: list[int],
                 found: tuple[str, dict[str, str]] | None, notes: list[str]) -> None:
        self.settings, self.plan, self.shape, self.cores, self.found = settings, plan, shape, cores, found
        self.notes = notes
        self.deadline = time.monotonic() + settings.budget_seconds
        self.reserving = settings.confirmations > 0
        self.start_cost = FIRST_START_GUESS_S
        self.point_cost = settings.point_seconds + min(0.5, settings.point_seconds / 4) + CLIENT_START_GUESS_S
        self.points: list[Point] = []
        self.ramps: dict[Config, list[Measured]] = {}
        self.skipped: list[dict[str, Any]] = [_skip(s.config, s.reason) for s in plan.skipped]
        self.failure = ""
        self.out_of_time = False
        self.starts = 0
        self.name = served_name(settings.model)

    @property
    def client_name(self) -> str:
        return "perf_analyzer" if self.found else "builtin"

    def left(self) -> float:
        """Seconds left (while sweeping: less the time kept back for measuring the choice again)."""
        kept = min(CONFIRM_SLOTS, self.settings.confirmations) * (self.start_cost + self.point_cost)
        return self.deadline - time.monotonic() - (kept if self.reserving else 0.0)

    def run(self, scratch: Path) -> list[Point]:
        if self.plan.default is not None:
            self.measure(self.plan.default, scratch)
        for group in _groups(self.plan.configs):
            previous: float | None = None
            for index, config in enumerate(group):
                if config not in self.ramps and not self.measure(config, scratch):
                    continue
                ramp = self.ramps.get(config, [])
                reason = tune_plan.group_stop(config, ramp, previous, self.settings.p99_ms)
                previous = tune_plan.best_within(ramp, self.settings.p99_ms)
                if reason:
                    self.skipped += [_skip(later, reason) for later in group[index + 1:]]
                    break
        self.reserving = False
        self.confirm(scratch)
        return self.points

    def confirm(self, scratch: Path) -> None:
        """Measure the choice again, each time on a fresh server, until one holds (or time or tries run out)."""
        tries = self.settings.confirmations
        for _ in range(tries):
            choice = reporting.choose(self.points, self.settings.p99_ms)
            if choice.chosen is None or choice.confirmed:
                return
            if self.left() < self.start_cost + self.point_cost:
                self.notes.append("the chosen point was not measured again: the time budget ran out")
                return
            with self.server(choice.chosen.config, scratch) as server:
                if server is not None:
                    self.point(choice.chosen.config, choice.chosen.concurrency, server, reporting.CONFIRM)
        choice = reporting.choose(self.points, self.settings.p99_ms)
        if tries and choice.chosen is not None and not choice.confirmed:
            self.notes.append(f"the chosen point was not measured again: --confirmations {tries} went to "
                              "better-looking points that did not hold")

    def measure(self, config: Config, scratch: Path) -> bool:
        """Start a server of ``config`` and ramp its concurrency; False when it was not measured."""
        if self.left() < self.start_cost + self.point_cost:
            self.out_of_time = True
            self.skipped.append(_skip(config, f"time budget: {max(0.0, self.left()):.0f} s of "
                                              f"{self.settings.budget_seconds:g} s left"))
            return False
        with self.server(config, scratch) as server:
            if server is None:
                return False
            self.ramps[config] = self.ramp(config, server)
        return True

    @contextlib.contextmanager
    def server(self, config: Config, scratch: Path) -> Iterator[ServerUnderTest | None]:
        """A started server of ``config``, stopped on leaving; None (and a skip) when it did not start."""
        flags = ["--intra-op-threads", str(config.intra_op_threads), "--instances", str(config.instances),
                 "--max-batch-size", str(config.max_batch_size), *serve_args_list(self.settings.serve_args)]
        self.starts += 1
        log_path = scratch / f"serve-{self.starts}.log"
        with ServerUnderTest(self.settings.model, self.name, flags, self.cores[:config.cpus], log_path) as server:
            began = time.monotonic()
            try:
                server.start(min(SERVER_START_TIMEOUT_S, max(self.left(), 1.0)))
            except ServerFailed as exc:
                if NOT_LOADABLE in str(exc):
                    raise TuneUsageError(f"{self.settings.model}: {exc}") from None
                self.failure = self.failure or str(exc)
                self.skipped.append(_skip(config, str(exc)))
                yield None
                return
            took = time.monotonic() - began  # the first start replaces the guess; later ones only raise it
            self.start_cost = max(self.start_cost, took) if self.starts > 1 else took
            yield server

    def ramp(self, config: Config, server: ServerUnderTest) -> list[Measured]:
        ramp: list[Measured] = []
        for concurrency in sorted(set(self.settings.concurrencies)):
            if self.left() < self.point_cost:
                self.out_of_time = True
                self.skipped.append(_skip(config, f"time budget: stopped before concurrency {concurrency}"))
                break
            point = self.point(config, concurrency, server)
            if point is None:
                break
            ramp.append(Measured(concurrency, point.throughput, point.p99_ms, not point.ok))
            if tune_plan.ramp_stop(ramp, self.settings.p99_ms):
                break
        return ramp

    def point(self, config: Config, concurrency: int, server: ServerUnderTest,
              phase: str = reporting.SWEEP) -> Point | None:
        """One load run; None (and a skip that says why) when the client produced nothing."""
        client_cores = self.cores[config.cpus:] or self.cores
        load = client.Load(server.target, self.name, concurrency, self.settings.point_seconds,
                           min(0.5, self.settings.point_seconds / 4),
                           perf_analyzer_shapes(self.shape, config.max_batch_size))
        began = time.monotonic()
        try:
            measured = self._load(load, client_cores)
        except client.LoadFailed as exc:
            why = str(exc) if server.alive() else f"{exc}; the server exited: {server.last_error()}"
            self.skipped.append(_skip(config, why) | {"concurrency": concurrency})
            return None
        self.point_cost = max(self.point_cost, time.monotonic() - began)
        shared = " (shared with the server)" if config.cpus >= len(self.cores) else ""
        point = Point(config, concurrency, measured.throughput, measured.p50_ms, measured.p99_ms,
                      server.peak_rss_bytes(), measured.requests, measured.errors, self.client_name,
                      _cpu_list(client_cores) + shared, phase)
        self.points.append(point)
        self._progress(point, measured.first_error)
        return point

    def _load(self, load: client.Load, cores: list[int]) -> client.Measurement:
        if self.found is None:
            return client.run_builtin(load, cores)
        try:
            return client.run_perf_analyzer(self.found, load, cores)
        except client.LoadFailed as exc:
            if self.settings.client == "perf_analyzer":
                raise
            self.notes.append(f"perf_analyzer failed ({exc}); the built-in client measured from then on")
            self.found = None
            return client.run_builtin(load, cores)

    def _progress(self, point: Point, first_error: str) -> None:
        verdict = "within" if point.within(self.settings.p99_ms) else "over"
        failed = f", {point.errors} failed ({first_error})" if point.errors else ""
        log.info("Measured%s %s at concurrency %d: %.0f inf/s (%.0f per CPU), p50 %.2f ms, p99 %.2f ms (%s the bound), "
                 "RSS %.0f MiB%s; %.0f s left", " again" if point.phase == reporting.CONFIRM else "",
                 point.config.label(), point.concurrency, point.throughput,
                 point.throughput_per_cpu, point.p50_ms, point.p99_ms, verdict, point.memory_bytes / reporting.MIB,
                 failed, max(0.0, self.left()))


def _groups(configs: tuple[Config, ...]) -> list[list[Config]]:
    """Consecutive configurations that share a group (they differ only by batch size)."""
    groups: list[list[Config]] = []
    for config in configs:
        if groups and groups[-1][0].group == config.group:
            groups[-1].append(config)
        else:
            groups.append([config])
    return groups


def _skip(config: Config, reason: str) -> dict[str, Any]:
    return {"cpus": config.cpus, "intra_op_threads": config.intra_op_threads, "instances": config.instances,
            "max_batch_size": config.max_batch_size, "reason": reason}


def _cpu_list(cores: list[int]) -> str:
    return ",".join(str(core) for core in cores)
