"""The canary's replica arithmetic, its figures from the servers' metrics, and its judge (pure, plus one
real server for the metrics' format).

Covers: the split at each weight (a canary of at least one, a stable side of at
least one until 100%), the canary beside an HPA-sized stable side; an
interval's figures from two scrapes of a real ``kubeinfer-server``'s
/metrics (requests, client errors not counted, a p99 from the histogram's
buckets), summed over pods and across a counter reset; the verdict over a
table of cases, including too few requests and a stable side with no p99.
"""

from __future__ import annotations

import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from devkit.models import linear
from kubeinfer_operator.canary import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    Analysis,
    Scrape,
    Window,
    canary_beside,
    judge,
    parse_scrape,
    split,
    window,
)
from support.serverproc import ServerProcess


@pytest.mark.parametrize("total, weight, expected", [
    (10, 0, (10, 0)), (10, 10, (9, 1)), (10, 50, (5, 5)), (10, 100, (0, 10)),
    (2, 10, (1, 1)), (1, 10, (1, 1)), (3, 50, (1, 2)), (20, 25, (15, 5)), (0, 100, (0, 1)),
])
def test_split(total, weight, expected):
    assert split(total, weight) == expected


@pytest.mark.parametrize("stable, weight, expected", [(9, 10, 1), (4, 50, 4), (1, 10, 1), (6, 25, 2), (5, 0, 0)])
def test_canary_beside_an_autoscaled_stable_side(stable, weight, expected):
    assert canary_beside(stable, weight) == expected


def _metrics(server) -> str:
    return urllib.request.urlopen(f"{server.metrics_url}/metrics", timeout=5).read().decode()


def test_figures_from_a_real_servers_metrics(tmp_path):
    model = linear(tmp_path / "linear.onnx")
    server = ServerProcess(f"--model=m={model}").start()
    try:
        client = tc.InferenceServerClient(server.url)
        good = tc.InferInput("x", [2, 4], "FP32")
        good.set_data_from_numpy(np.ones((2, 4), np.float32))
        bad = tc.InferInput("x", [2, 3], "FP32")
        bad.set_data_from_numpy(np.ones((2, 3), np.float32))
        client.infer("m", [good])
        before = parse_scrape([_metrics(server)], "m")
        for _ in range(30):
            client.infer("m", [good])
        for _ in range(5):
            with pytest.raises(InferenceServerException):
                client.infer("m", [bad])
        text = _metrics(server)
    finally:
        server.stop()
    after = parse_scrape([text], "m")
    assert after.codes["OK"] == 31 and after.codes["INVALID_ARGUMENT"] == 5
    got = window(before, after)
    assert (got.requests, got.server_errors) == (35, 0)  # a bad input is the client's error
    assert got.p99_ms is not None and 0 < got.p99_ms < 1000
    two_pods = parse_scrape([text, text], "m")
    assert two_pods.codes["OK"] == 62 and dict(two_pods.buckets)[float("inf")] == 72
    assert parse_scrape([text], "other").codes == {}


def test_server_errors_and_counter_resets():
    before = Scrape({"OK": 100.0, "INTERNAL": 1.0}, ((0.01, 90.0), (0.1, 100.0), (float("inf"), 101.0)))
    after = Scrape({"OK": 400.0, "INTERNAL": 4.0, "UNAVAILABLE": 2.0, "RESOURCE_EXHAUSTED": 1.0},
                   ((0.01, 300.0), (0.1, 395.0), (float("inf"), 407.0)))
    got = window(before, after)
    assert (got.requests, got.server_errors) == (306, 6)
    assert got.p99_ms == 100.0  # 99% of 306 lies past the last finite bucket (0.1 s): its bound, a floor
    restarted = Scrape({"OK": 10.0}, ((0.01, 10.0), (float("inf"), 10.0)))
    assert window(after, restarted).requests == 0  # a counter that went down counts nothing, never negative


def _tail(under_25ms: int, total: int = 1000) -> Window:
    """A side's interval: none under 10 ms, ``under_25ms`` of ``total`` under 25 ms, the rest under 50 ms."""
    empty = Scrape({}, ((0.01, 0.0), (0.025, 0.0), (0.05, 0.0), (float("inf"), 0.0)))
    seen = Scrape({"OK": float(total)}, ((0.01, 0.0), (0.025, float(under_25ms)), (0.05, float(total)),
                                         (float("inf"), float(total))))
    return window(empty, seen)


def test_p99_is_interpolated_inside_its_bucket():
    stable, canary = _tail(995), _tail(985)
    assert stable.p99_ms == pytest.approx(10 + 15 * 990 / 995)  # 24.9 ms, inside the 10 to 25 ms bucket
    assert canary.p99_ms == pytest.approx(25 + 25 * 5 / 15)  # 33.3 ms, just past the 25 ms bound
    # The buckets are 2 to 2.5 times apart: by their bounds alone these two would be 50 against 25 ms, a ratio
    # of 2 for a tail that differs by 1% of the requests.
    assert judge(canary, stable, Analysis(min_requests=200, max_latency_ratio=1.5)).outcome == PASS
    assert judge(_tail(900), stable, Analysis(min_requests=200, max_latency_ratio=1.5)).outcome == FAIL


ANALYSIS = Analysis(min_requests=200, max_error_rate=0.01, max_latency_ratio=1.5)


@pytest.mark.parametrize("canary, stable, outcome, says", [
    (Window(150, 0, 5.0), Window(1500, 0, 5.0), INCONCLUSIVE, "150 requests on the canary, fewer than minRequests"),
    (Window(300, 1, 5.0), Window(3000, 0, 5.0), PASS, "300 requests"),
    (Window(300, 6, 5.0), Window(3000, 0, 5.0), FAIL, "error rate 2.00% (6 of 300) above maxErrorRate 1.00%"),
    (Window(300, 0, 16.0), Window(3000, 0, 10.0), FAIL, "p99 16.0 ms is 1.60x the stable's 10.0 ms"),
    (Window(300, 0, 14.0), Window(3000, 0, 10.0), PASS, "p99 14.0 ms against the stable's 10.0 ms"),
    (Window(300, 0, 14.0), Window(0, 0, None), PASS, "against the stable's n/a"),
])
def test_judge(canary, stable, outcome, says):
    verdict = judge(canary, stable, ANALYSIS)
    assert verdict.outcome == outcome and says in verdict.reason, verdict.reason
