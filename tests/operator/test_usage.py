"""Reading the server containers' usage from Prometheus (``usage``).

Covers: a query_range answer in Prometheus's JSON (the shape its HTTP API
documents, as recorded below for the two queries) becomes per-pod series, NaN
and infinities dropped; an error answer, a vector and a non-answer are refused
with Prometheus's own words; the two series join into one sample per pod and
time; the PromQL names the namespace, the server container and each pod, with
a rate window of several scrapes; the step grows with the pods so a query stays
bounded; OOM kills come from the pods' status (when, at what memory); the load
floor is a container's peak in its first minutes, only when its series reaches
back to its start; without a Prometheus URL nothing is read and the reason
says so. Against a Prometheus stand-in on loopback (a real HTTP server): the
queries are POSTed as forms on the step grid, read at most once an interval
(a failed read too), and an error answer or a closed port becomes the reading's
error, fast.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
import urllib.parse

import pytest

from devkit.ports import free_port
from kubeinfer_operator import rightsizing, usage
from kubeinfer_operator.recommender import Sample
from kubeinfer_operator.settings import Settings

MIB = 2**20
T0 = 1764669600.0  # 2025-12-02T10:00:00Z
POD_A, POD_B = "fraud-7d9c8b6f5-x2x7k", "fraud-7d9c8b6f5-q8wzn"

# POST /api/v1/query_range, query=max by (pod) (rate(container_cpu_usage_seconds_total{...}[60s])), step=30
RECORDED_CPU = json.loads("""{"status": "success", "data": {"resultType": "matrix", "result": [
 {"metric": {"pod": "fraud-7d9c8b6f5-x2x7k"},
  "values": [[1764669600, "0.4831"], [1764669630, "0.5120"], [1764669660, "NaN"], [1764669690, "0.4977"]]},
 {"metric": {"pod": "fraud-7d9c8b6f5-q8wzn"},
  "values": [[1764669630, "0.0102"], [1764669660, "+Inf"], [1764669690, "1.9043"]]}]}}""")
# the same, query=max by (pod) (max_over_time(container_memory_working_set_bytes{...}[30s]))
RECORDED_MEMORY = json.loads("""{"status": "success", "data": {"resultType": "matrix", "result": [
 {"metric": {"pod": "fraud-7d9c8b6f5-x2x7k"},
  "values": [[1764669600, "419430400"], [1764669630, "421527552"], [1764669690, "425721856"]]},
 {"metric": {"pod": "fraud-7d9c8b6f5-q8wzn"},
  "values": [[1764669630, "734003200"], [1764669660, "736100352"]]}]}}""")
RECORDED_ERROR = {"status": "error", "errorType": "bad_data",
                  "error": 'invalid parameter "query": 1:10: parse error: unexpected "}"'}


def pod(name: str, started: str | None = "2025-12-02T10:00:00Z", last: dict | None = None,
        limits: dict | None = None) -> dict:
    status = {"name": "server", "state": {"running": {"startedAt": started}} if started else {}}
    if last:
        status["lastState"] = {"terminated": last}
    resources = {"requests": {"cpu": "1", "memory": "512Mi"}, **({"limits": limits} if limits else {})}
    return {"metadata": {"name": name, "uid": f"uid-{name}"},
            "spec": {"containers": [{"name": "server", "resources": resources}]},
            "status": {"containerStatuses": [status]}}


def test_a_recorded_answer_becomes_series_per_pod():
    cpu = usage.parse_matrix(RECORDED_CPU)
    assert cpu == {POD_A: {T0: 0.4831, T0 + 30: 0.512, T0 + 90: 0.4977}, POD_B: {T0 + 30: 0.0102, T0 + 90: 1.9043}}
    assert usage.parse_matrix(RECORDED_MEMORY)[POD_B] == {T0 + 30: 700 * MIB, T0 + 60: 702 * MIB}


@pytest.mark.parametrize("body, words", [
    (RECORDED_ERROR, "parse error"),
    ({"status": "success", "data": {"resultType": "vector", "result": []}}, "expected a matrix"),
    ("<html>proxy</html>", "not a Prometheus answer"),
])
def test_what_is_not_a_matrix_is_refused_with_its_reason(body, words):
    with pytest.raises(usage.UsageError, match=words):
        usage.parse_matrix(body)


def test_series_join_into_one_sample_per_pod_and_time():
    joined = usage.samples(usage.parse_matrix(RECORDED_CPU), usage.parse_matrix(RECORDED_MEMORY))
    assert len(joined) == 6  # A at T0+60 has neither figure (NaN, no memory); B at T0+60 has its memory only
    assert Sample(T0 + 60, None, 736100352.0) in joined and Sample(T0 + 60, None, None) not in joined
    assert Sample(T0 + 90, 0.4977, 425721856.0) in joined


def test_the_queries_name_namespace_container_and_pods():
    cpu, memory = usage.queries("ml", [POD_B, POD_A, "odd.name"], step=30)
    selector = f'namespace="ml",container="server",pod=~"{POD_B}|{POD_A}|odd\\\\.name"'
    assert cpu == f"max by (pod) (rate(container_cpu_usage_seconds_total{{{selector}}}[60s]))"
    assert memory == f"max by (pod) (max_over_time(container_memory_working_set_bytes{{{selector}}}[30s]))"
    assert usage.queries("ml", [POD_A], step=120)[0].endswith("[120s]))")


def test_the_step_grows_with_the_pods():
    config = Settings(usage_step_seconds=30, usage_history_seconds=86400)
    assert usage.query_step(config, 10) == 30
    assert usage.query_step(config, 100) == pytest.approx(86400 * 100 / usage.MAX_POINTS, abs=1)
    assert usage.query_step(Settings(usage_step_seconds=1, usage_history_seconds=86400), 1) == 8  # 11,000 a series


def test_oom_kills_come_from_the_pods_status():
    killed = {"reason": "OOMKilled", "exitCode": 137, "finishedAt": "2025-12-02T10:05:00Z"}
    pods = [pod(POD_A, last=killed, limits={"memory": "768Mi"}), pod(POD_B, last={**killed, "reason": "Error"}),
            pod("no-limit", last=killed)]
    assert usage.oom_samples(pods) == (Sample(T0 + 300, None, 768 * MIB), Sample(T0 + 300, None, 512 * MIB))


def test_the_load_floor_is_the_peak_of_a_servers_first_minutes():
    memory = {POD_A: {T0 + 30 * i: (900 if i == 3 else 400) * MIB for i in range(40)},
              POD_B: {T0 + 3600 + 30 * i: 1200 * MIB for i in range(5)}}  # its series starts an hour after it
    assert usage.load_floor(memory, [pod(POD_A), pod(POD_B)], step=30) == 900 * MIB
    assert usage.load_floor(memory, [pod(POD_A, started=None)], step=30) == 0.0


def test_without_a_prometheus_nothing_is_read():
    measured = usage.measure(Settings(), "uid", "ml", [pod(POD_A)], T0)
    assert measured.problem is not None and measured.problem[0] == rightsizing.NO_USAGE_SOURCE
    assert "--prometheus-url" in measured.problem[1]


class StandIn:
    """A Prometheus stand-in on loopback: answers query_range POSTs with recorded bodies, keeps the forms."""

    def __init__(self, status: int = 200, body: object = None) -> None:
        self.forms: list[dict[str, str]] = []
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers["Content-Length"])
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                stand_in.forms.append({"path": self.path, "type": self.headers["Content-Type"], **form})
                answer = body if body is not None else (
                    RECORDED_CPU if "cpu" in form["query"] else RECORDED_MEMORY)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stand_in():
    started: list[StandIn] = []

    def start(**kwargs) -> StandIn:
        started.append(StandIn(**kwargs))
        return started[-1]

    yield start
    for server in started:
        server.close()


def test_queries_are_posted_on_the_step_grid_and_read_once_an_interval(stand_in):
    prometheus = stand_in()
    config = Settings(prometheus_url=prometheus.url, usage_step_seconds=30, usage_history_seconds=3600,
                      usage_query_seconds=300)
    first = usage.measure(config, "uid-read-once", "ml", [pod(POD_A), pod(POD_B)], T0 + 100)
    again = usage.measure(config, "uid-read-once", "ml", [pod(POD_A), pod(POD_B)], T0 + 130)
    assert len(prometheus.forms) == 2 and first.problem is None and again.samples is first.samples
    form = prometheus.forms[0]
    assert form["path"] == "/api/v1/query_range" and form["type"] == "application/x-www-form-urlencoded"
    assert (float(form["start"]), float(form["end"]), float(form["step"])) == (T0 + 90 - 3600, T0 + 90, 30)
    assert "container_cpu_usage_seconds_total" in form["query"] and POD_B in form["query"]
    assert len(first.samples) == 6


def test_an_error_answer_is_the_readings_error_and_is_not_asked_again_at_once(stand_in):
    prometheus = stand_in(status=400, body=RECORDED_ERROR)
    config = Settings(prometheus_url=prometheus.url)
    measured = usage.measure(config, "uid-error", "ml", [pod(POD_A)], T0)
    assert measured.problem is not None and measured.problem[0] == rightsizing.USAGE_UNAVAILABLE
    assert "parse error" in measured.problem[1] and prometheus.url in measured.problem[1]
    usage.measure(config, "uid-error", "ml", [pod(POD_A)], T0)
    assert len(prometheus.forms) == 1


def test_a_closed_port_is_an_error_fast():
    config = Settings(prometheus_url=f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    reading = usage.read(config, "ml", [POD_A], T0)
    assert reading.error is not None and reading.samples == ()
    assert time.monotonic() - started < usage.TIMEOUT_SECONDS


def test_no_pods_no_query(stand_in):
    prometheus = stand_in()
    assert usage.read(Settings(prometheus_url=prometheus.url), "ml", [], T0).samples == ()
    assert prometheus.forms == []
