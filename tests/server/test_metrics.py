"""The metrics layer: live values on the request path, metric families at scrape time.

Covers: histogram buckets follow Prometheus's ``le`` (a value equal to a bound
counts in that bound's bucket; cumulative in the exposition); request counts
by model, code and client; the waiting gauge reads the model's queue when
scraped; kubeinfer_model_info carries the providers, instances, the file's sha256
and its optimization method; the ``--workers`` view sums every worker's snapshot
and leaves out the gauges of a worker that is gone (its counts stay).
"""

import json
from types import SimpleNamespace

from prometheus_client import generate_latest

from kubeinfer_server import metrics as m

SHA = "9f2c" * 16  # the served file's sha256, a label of kubeinfer_model_info


def _lines(registry) -> list[str]:
    return [line for line in generate_latest(registry).decode().splitlines() if not line.startswith("#")]


def test_histogram_buckets_are_le_and_cumulative_in_the_exposition():
    metrics = m.Metrics()
    live = metrics.model("fraud", "CPUExecutionProvider", 1, SHA, "none", "1")
    for rows in (1, 2, 3, 2000):
        live.batch_rows.observe(rows)
    lines = _lines(metrics.registry)
    assert 'kubeinfer_batch_size_bucket{le="1.0",model="fraud"} 1.0' in lines
    assert 'kubeinfer_batch_size_bucket{le="2.0",model="fraud"} 2.0' in lines  # 2 <= 2
    assert 'kubeinfer_batch_size_bucket{le="4.0",model="fraud"} 3.0' in lines
    assert 'kubeinfer_batch_size_bucket{le="1024.0",model="fraud"} 3.0' in lines
    assert 'kubeinfer_batch_size_bucket{le="+Inf",model="fraud"} 4.0' in lines
    assert 'kubeinfer_batch_size_count{model="fraud"} 4.0' in lines
    assert 'kubeinfer_batch_size_sum{model="fraud"} 2006.0' in lines


def test_gauges_and_request_counts_read_live_values():
    metrics = m.Metrics()
    live = metrics.model("fraud", "CPUExecutionProvider", 2, SHA, "dynamic", "7f9c2a")
    live.in_flight, live.queue = 5, SimpleNamespace(waiting=3)  # waiting: read from the model's queue
    for code in ("OK", "OK", "INVALID_ARGUMENT"):
        metrics.count_request("fraud", code, "alice")
    lines = _lines(metrics.registry)
    assert 'kubeinfer_queue_depth{model="fraud"} 5.0' in lines
    assert 'kubeinfer_queue_waiting{model="fraud"} 3.0' in lines
    assert 'kubeinfer_requests_total{client="alice",code="OK",model="fraud"} 2.0' in lines
    assert 'kubeinfer_requests_total{client="alice",code="INVALID_ARGUMENT",model="fraud"} 1.0' in lines
    assert ('kubeinfer_model_info{instances="2",model="fraud",optimization_method="dynamic",'
            f'providers="CPUExecutionProvider",revision="7f9c2a",sha256="{SHA}"}} 1.0') in lines
    live.in_flight = 0
    assert 'kubeinfer_queue_depth{model="fraud"} 0.0' in _lines(metrics.registry)


def test_workers_view_sums_snapshots_and_drops_gone_workers_gauges(tmp_path):
    for index, (depth, requests) in enumerate(((4, 10), (7, 5))):
        metrics = m.Metrics()
        live = metrics.model("fraud", "CPUExecutionProvider", 1, SHA, "none", "1")
        live.in_flight = depth
        live.request_seconds.observe(0.003)
        for _ in range(requests):
            metrics.count_request("fraud", "OK", "anonymous")
        m.write_snapshot(metrics.snapshot(), m.snapshot_path(str(tmp_path), index))
    (tmp_path / "worker-9.json").write_text("{not json")  # caught mid-write: skipped, not fatal
    assert json.loads(m.snapshot_path(str(tmp_path), 0).read_text())["worker"] == "worker-0"

    everyone = _lines(m.workers_registry(str(tmp_path), lambda name: True))
    assert 'kubeinfer_queue_depth{model="fraud"} 11.0' in everyone
    assert 'kubeinfer_requests_total{client="anonymous",code="OK",model="fraud"} 15.0' in everyone
    assert 'kubeinfer_request_duration_seconds_bucket{le="0.005",model="fraud"} 2.0' in everyone
    assert ('kubeinfer_model_info{instances="1",model="fraud",optimization_method="none",'
            f'providers="CPUExecutionProvider",revision="1",sha256="{SHA}"}} 1.0') in everyone

    first_gone = _lines(m.workers_registry(str(tmp_path), lambda name: name != "worker-0"))
    assert 'kubeinfer_queue_depth{model="fraud"} 7.0' in first_gone
    assert 'kubeinfer_requests_total{client="anonymous",code="OK",model="fraud"} 15.0' in first_gone
