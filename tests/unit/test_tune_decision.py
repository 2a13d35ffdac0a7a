"""``kubeinfer-server tune``'s pure parts, over tables of points (no server, no clock).

Covers:
- ``choose``: the highest throughput per CPU under the bound, not the highest throughput; ties go to
  the smaller pod, then the lower p99; points with failed requests never chosen; nothing under the
  bound: none chosen and the closest (lowest p99) named; nothing measured cleanly; a choice measured
  again stands with its worse figures, or gives way to the next when it misses the bound then;
- ``replicas_for`` (ceil, at least one), ``pod_memory_bytes`` (peak + margin, whole MiB),
  ``pod_resources``, ``peak_memory`` (the configuration's highest RSS over its points);
- ``report``: the contract keys, serve's defaults and the chosen point's gain over them;
- ``plan``: CPU counts capped at the machine's and said, threads never above the CPUs, instances x
  threads never above them, threads 0 as the CPU count, groups that fill the CPUs first, batch sizes
  ascending, serve's defaults at the largest CPU count;
- the pruning rules: the concurrency ramp stops over the bound, on a plateau (two flat steps), on failures; a group's
  larger batch sizes are skipped on a plateau, or when concurrency 1 already misses the bound.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from kubeinfer_server.tune_plan import Config, Measured, Sweep, group_stop, plan, ramp_stop
from kubeinfer_server.tune_report import (
    CONFIRM,
    MIB,
    Goals,
    Point,
    choose,
    peak_memory,
    pod_memory_bytes,
    pod_resources,
    replicas_for,
    report,
)

ONE = Config(1, 1, 1, 8)
TWO = Config(2, 2, 1, 8)
TWO_BATCHED = Config(2, 1, 2, 32)


def point(config: Config, concurrency: int, throughput: float, p99_ms: float, errors: int = 0,
          memory: int = 100 * MIB) -> Point:
    return Point(config, concurrency, throughput, p99_ms / 2, p99_ms, memory, requests=int(throughput),
                 errors=errors)


# (name, points, bound, expected chosen (config, concurrency) or None, expected closest or None)
TABLE = [
    ("per CPU beats raw throughput",
     [point(ONE, 4, 900, 8), point(TWO, 8, 1500, 9)], 10, (ONE, 4), None),
    ("the bound excludes the faster point",
     [point(ONE, 4, 900, 8), point(ONE, 16, 1400, 30), point(TWO, 16, 3000, 12)], 10, (ONE, 4), None),
    ("on the bound counts as within",
     [point(ONE, 4, 900, 10.0), point(ONE, 1, 500, 3)], 10, (ONE, 4), None),
    ("a tie per CPU goes to the smaller pod",
     [point(TWO, 8, 1800, 5), point(ONE, 4, 900, 6)], 10, (ONE, 4), None),
    ("a tie on the same pod goes to the lower p99",
     [point(ONE, 8, 900, 9), point(ONE, 4, 900, 4)], 10, (ONE, 4), None),
    ("failed requests are never chosen",
     [point(ONE, 4, 5000, 2, errors=3), point(TWO_BATCHED, 4, 1200, 5)], 10, (TWO_BATCHED, 4), None),
    ("nothing under the bound: the closest is the lowest p99",
     [point(ONE, 1, 500, 12), point(TWO, 1, 700, 11), point(TWO, 8, 2000, 40)], 10, None, (TWO, 1)),
    ("nothing clean at all",
     [point(ONE, 1, 500, 2, errors=1)], 10, None, None),
    ("no points", [], 10, None, None),
]


@pytest.mark.parametrize(("points", "bound", "chosen", "closest"), [case[1:] for case in TABLE],
                         ids=[case[0] for case in TABLE])
def test_choose_over_a_table_of_points(points, bound, chosen, closest):
    choice = choose(points, bound)
    assert (choice.chosen.config, choice.chosen.concurrency) == chosen if chosen else choice.chosen is None
    assert (choice.closest.config, choice.closest.concurrency) == closest if closest else choice.closest is None
    assert choice.reason


def again(config: Config, concurrency: int, throughput: float, p99_ms: float) -> Point:
    return dataclasses.replace(point(config, concurrency, throughput, p99_ms, memory=130 * MIB), phase=CONFIRM)


def test_a_choice_measured_again_stands_with_its_worse_figures():
    points = [point(ONE, 4, 900, 8), point(TWO, 8, 1500, 9), again(ONE, 4, 850, 9.5)]
    choice = choose(points, 10)
    assert choice.confirmed and choice.chosen.key == (ONE, 4)
    assert (choice.chosen.throughput, choice.chosen.p99_ms, choice.chosen.memory_bytes) == (850, 9.5, 130 * MIB)
    assert not choose(points[:2], 10).confirmed


def test_a_choice_whose_figures_fall_when_measured_again_gives_way_to_the_next():
    points = [point(ONE, 4, 900, 8), point(ONE, 8, 880, 9), again(ONE, 4, 700, 9)]
    choice = choose(points, 10)
    assert choice.chosen.key == (ONE, 8) and not choice.confirmed  # next in line to be measured again
    held = choose([*points, again(ONE, 8, 860, 9)], 10)
    assert held.chosen.key == (ONE, 8) and held.confirmed and held.chosen.throughput == 860


def test_a_choice_that_misses_the_bound_when_measured_again_gives_way():
    points = [point(ONE, 4, 900, 8), point(TWO, 8, 1500, 9), again(ONE, 4, 880, 14)]
    choice = choose(points, 10)
    assert choice.chosen.key == (TWO, 8) and not choice.confirmed
    assert "1 point(s) missed the bound when measured again: cpus=1" in choice.reason
    gone = choose([*points, again(TWO, 8, 1400, 11)], 10)
    assert gone.chosen is None and gone.closest.key == (ONE, 4) and "measured again" in gone.reason


def test_the_reason_says_what_was_chosen_and_what_came_next():
    choice = choose([point(ONE, 4, 900, 8), point(TWO, 8, 1500, 9)], 10)
    assert "900 inf/s per CPU" in choice.reason and "p99 8.0 ms" in choice.reason
    assert "next best cpus=2 threads=2 instances=1 max_batch_size=8 at 750 inf/s per CPU" in choice.reason
    missed = choose([point(ONE, 1, 500, 12)], 10)
    assert "no configuration met p99 <= 10 ms; the closest is cpus=1" in missed.reason and "12.0 ms" in missed.reason


@pytest.mark.parametrize(("target", "throughput", "replicas"),
                         [(1000, 300, 4), (900, 300, 3), (901, 300, 4), (10, 300, 1), (0.5, 1e6, 1)])
def test_replicas_are_the_ceiling_of_rate_over_throughput(target, throughput, replicas):
    assert replicas_for(target, throughput) == replicas == max(1, math.ceil(target / throughput))


def test_pod_memory_is_the_peak_plus_the_margin_in_whole_mebibytes():
    assert pod_memory_bytes(100 * MIB, 0.25) == 125 * MIB
    assert pod_memory_bytes(100 * MIB + 1, 0.0) == 101 * MIB
    assert pod_resources(TWO, 100 * MIB, 0.25) == {"requests": {"cpu": "2", "memory": "125Mi"},
                                                   "limits": {"cpu": "2", "memory": "125Mi"}}
    points = [point(ONE, 1, 500, 2, memory=90 * MIB), point(ONE, 8, 900, 5, memory=120 * MIB),
              point(TWO, 8, 900, 5, memory=300 * MIB)]
    assert peak_memory(points, ONE) == 120 * MIB


def test_the_report_holds_the_contract_keys_and_the_gain_over_serves_defaults():
    default = Config(2, 2, 1, 32)
    sweep = plan(Sweep((1, 2), (1,), (1,), (8,)), 2, (0, 1, 32))
    assert sweep.default == default
    points = [point(default, 4, 1000, 8), point(default, 16, 1600, 20), point(ONE, 4, 900, 8, memory=110 * MIB)]
    result = report(points, sweep, Goals(10, 2000, 0.25), [], [])
    keys = {"intra_op_threads", "instances", "max_batch_size", "concurrency", "throughput", "p99_ms", "cpu",
            "memory_bytes"}
    assert all(keys <= set(p) for p in result["points"]) and keys <= set(result["chosen"])
    assert (result["chosen"]["cpus"], result["chosen"]["concurrency"]) == (1, 4)
    assert result["replicas"] == 3 and result["resources"]["requests"] == {"cpu": "1", "memory": "138Mi"}
    assert result["default"]["best"]["concurrency"] == 4 and result["default"]["chosen_gain"] == 1.8
    assert [p["within_bound"] for p in result["points"]] == [True, False, True]


def test_the_plan_caps_cpus_prunes_oversubscription_and_orders_groups():
    sweep = plan(Sweep(cpus=(4, 1, 2), threads=(0, 1, 2, 4), instances=(1, 2), max_batch_sizes=(32, 0)), 2, None)
    assert sweep.notes == ("--cpus 4 capped to 2: this machine lets tune use 2 CPUs",)
    assert [c.group for c in sweep.configs] == [(1, 1, 1)] * 2 + [(2, 2, 1)] * 2 + [(2, 1, 2)] * 2 + [(2, 1, 1)] * 2
    assert [c.max_batch_size for c in sweep.configs][:2] == [0, 32]
    reasons = {(s.config.cpus, s.config.intra_op_threads, s.config.instances): s.reason for s in sweep.skipped}
    assert "never more threads than CPUs" in reasons[(1, 2, 1)] and "never more threads" in reasons[(2, 4, 1)]
    assert "only contend" in reasons[(1, 1, 2)] and "only contend" in reasons[(2, 2, 2)]
    assert all(c.intra_op_threads * c.instances <= c.cpus for c in sweep.configs)
    assert sweep.default is None


def test_the_ramp_stops_over_the_bound_on_a_plateau_and_on_failures():
    assert ramp_stop([Measured(1, 500, 3)], 10) == ""
    assert "passed the bound" in ramp_stop([Measured(1, 500, 3), Measured(4, 900, 11)], 10)
    assert ramp_stop([Measured(1, 500, 3), Measured(2, 490, 4)], 10) == ""  # one flat step: noise, go on
    flat = [Measured(1, 500, 3), Measured(2, 490, 4), Measured(4, 520, 5)]
    assert "2 steps up to concurrency 4 gained under 5% over 500" in ramp_stop(flat, 10)
    assert ramp_stop([Measured(1, 500, 3), Measured(2, 490, 4), Measured(4, 530, 5)], 10) == ""  # 6%: growing
    assert ramp_stop([*flat[:2], Measured(4, 900, 5), Measured(8, 910, 9)], 10) == ""  # best before: 500
    assert ramp_stop([Measured(1, 500, 3), Measured(4, 0, 0, failed=True)], 10) == "requests failed"


def test_a_groups_larger_batch_sizes_are_skipped_when_they_stop_paying():
    first = [Measured(1, 500, 3), Measured(8, 1000, 8)]
    assert group_stop(ONE, first, None, 10) == ""
    assert "gained under 5%" in group_stop(ONE, [Measured(1, 500, 3), Measured(8, 1040, 8)], 1000, 10)
    assert group_stop(ONE, [Measured(1, 500, 3), Measured(8, 1100, 8)], 1000, 10) == ""
    alone = group_stop(ONE, [Measured(1, 500, 12)], None, 10)
    assert "missed the bound at concurrency 1" in alone
    assert group_stop(ONE, [Measured(2, 500, 12)], None, 10) == ""  # not at concurrency 1: batching may help
