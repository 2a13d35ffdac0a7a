"""End to end: InferenceBatchJobs run by the real node, reading and writing the test bed's S3 server.

The operator is the chart's (helm), the pods run ``kubeinfer-server batch`` from the
built server image on the real kubelet, and the model, the input and the output are
objects in SeaweedFS (``devkit.s3server``, on the node's bridge address, where pods
reach it). Covers (issue 18):
- three shards score three Parquet files into Parquet parts: the job reaches
  Succeeded with shards 3/3 and every row counted in its status and a
  Succeeded Event; the parts equal, row for row, what ``kubeinfer-server batch``
  run here writes for the same input;
- bad rows over ``maxFailedRows``: Failed, the reason names the bad rows, a
  Warning Event says so;
- a schedule that fires within the test (the real CronJob controller): a run
  writes to its ``{date}`` folder and the status shows lastScheduleTime and the
  run's phase; deleting the InferenceBatchJob deletes its CronJob and Jobs.
"""

from __future__ import annotations

import datetime as dt
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from devkit.models import linear
from devkit.s3server import S3Server
from e2e.test_serving import apply
from e2ekit.clients import NODE_PLACEMENT, get_json
from localcluster.nodeconfig import NODE_IP
from support.serverproc import run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

ROWS_PER_FILE = 300


def table(start: int, rows: int, nulls: int = 0) -> pa.Table:
    x = np.random.default_rng(start).standard_normal((rows, 4)).astype(np.float32)
    values = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 4)
    if nulls:
        values = pa.array([None if i < nulls else v for i, v in enumerate(values.to_pylist())], values.type)
    return pa.table({"txn": np.arange(start, start + rows), "x": values})


def parquet(t: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(t, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    model = linear(tmp_path_factory.mktemp("batch") / "linear.onnx")
    with S3Server(host=NODE_IP) as server:
        server.create_bucket("data")
        server.put("data", "models/linear.onnx", open(model, "rb").read())
        for i in range(3):
            server.put("data", f"in/part-{i}.parquet", parquet(table(1000 * i, ROWS_PER_FILE)))
        server.put("data", "bad/a.parquet", parquet(table(0, 50, nulls=3)))
        yield server


@pytest.fixture(scope="module")
def keys(cluster, installed, store):
    literals = [f"--from-literal={k}={v}" for k, v in store.env().items()]
    cluster.kubectl("create", "secret", "generic", "store-keys", "-n", installed.apps, *literals)
    return "store-keys"


def ibj(name: str, namespace: str, keys: str, **spec) -> dict:
    secret = {"secretRef": {"name": keys}}
    return {"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceBatchJob",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"model": {"uri": "s3://data/models/linear.onnx", "credentials": secret}, "credentials": secret,
                     "input": {"uri": "s3://data/in/", "idColumn": "txn"},
                     "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
                     "runtime": {"intraOpThreads": 1}, **NODE_PLACEMENT, **spec}}


def status(cluster, namespace: str, name: str) -> dict:
    return get_json(cluster, "ibj", name, "-n", namespace).get("status") or {}


def finished(cluster, namespace: str, name: str) -> dict | None:
    found = status(cluster, namespace, name)
    return found if found.get("phase") in ("Succeeded", "Failed") else None


def events(cluster, namespace: str, name: str) -> list[dict]:
    listed = get_json(cluster, "events", "-n", namespace, "--field-selector",
                      f"involvedObject.kind=InferenceBatchJob,involvedObject.name={name}")
    return listed["items"]


def parts(store: S3Server, prefix: str) -> pa.Table:
    client = store.client()
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="data", Prefix=prefix).get("Contents", [])
                  if "/part-" in o["Key"])
    tables = [pq.read_table(io.BytesIO(client.get_object(Bucket="data", Key=k)["Body"].read())) for k in keys]
    return pa.concat_tables(tables).sort_by("txn")


def test_three_shards_score_the_dataset_like_the_cli(cluster, installed, store, keys, tmp_path):
    ns = installed.apps
    apply(cluster, ibj("scores", ns, keys, parallelism=3, output={"uri": "s3://data/out/scores/"}))
    done = cluster.wait_for("the batch job to finish", lambda: finished(cluster, ns, "scores"), timeout=240)
    assert done["phase"] == "Succeeded", json.dumps(done)
    assert done["shards"] == {"total": 3, "succeeded": 3, "failed": 0, "active": 0}
    assert done["rows"] == {"done": 3 * ROWS_PER_FILE, "failed": 0} and done["progress"] == "3/3 shards"
    assert {c["type"]: c["status"] for c in done["conditions"]} == {"Complete": "True", "Failed": "False"}
    assert "completionTime" in done and "startTime" in done
    assert any(e["reason"] == "Succeeded" and "900 rows" in e["message"] for e in events(cluster, ns, "scores"))

    cli = run_cli("batch", "--model", "s3://data/models/linear.onnx", "--input", "s3://data/in/",
                  "--output", "s3://data/out/cli/", "--id-column", "txn", "--log-level", "warning",
                  env=store.env(), timeout=180)
    assert cli.returncode == 0, cli.stderr
    job, here = parts(store, "out/scores/"), parts(store, "out/cli/")
    assert job.num_rows == 3 * ROWS_PER_FILE and job.column_names == here.column_names
    assert job.equals(here)


def test_bad_rows_over_the_limit_fail_with_the_reason(cluster, installed, keys):
    ns = installed.apps
    apply(cluster, ibj("bad", ns, keys, backoffLimitPerIndex=0,
                       input={"uri": "s3://data/bad/", "idColumn": "txn"}, output={"uri": "s3://data/out/bad/"}))
    done = cluster.wait_for("the bad job to finish", lambda: finished(cluster, ns, "bad"), timeout=240)
    assert done["phase"] == "Failed", json.dumps(done)
    failed = next(c for c in done["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "ShardFailed"
    assert "3 bad rows" in failed["message"] and "--max-failed-rows 0" in failed["message"], failed["message"]
    warnings = [e for e in events(cluster, ns, "bad") if e["type"] == "Warning"]
    assert any(e["reason"] == "ShardFailed" and "bad rows" in e["message"] for e in warnings), warnings


def test_a_scheduled_job_runs_and_deleting_it_deletes_its_jobs(cluster, installed, store, keys):
    ns = installed.apps
    apply(cluster, ibj("nightly", ns, keys, schedule="* * * * *", output={"uri": "s3://data/out/nightly/{date}/"}))
    assert get_json(cluster, "cronjob", "nightly", "-n", ns)["spec"]["schedule"] == "* * * * *"
    done = cluster.wait_for("a scheduled run to finish", lambda: finished(cluster, ns, "nightly"), timeout=200)
    assert done["phase"] == "Succeeded" and "lastScheduleTime" in done, json.dumps(done)
    assert done["job"].startswith("nightly-") and done["rows"]["done"] == 3 * ROWS_PER_FILE
    day = dt.datetime.now(dt.UTC).date().isoformat()
    written = parts(store, f"out/nightly/{day}/")
    assert written.num_rows == 3 * ROWS_PER_FILE
    cluster.kubectl("delete", "ibj", "nightly", "-n", ns, "--wait=true", "--timeout=60s")

    def gone() -> bool:
        jobs = get_json(cluster, "jobs", "-n", ns, "-l", "app.kubernetes.io/instance=nightly")["items"]
        crons = get_json(cluster, "cronjobs", "-n", ns, "-l", "app.kubernetes.io/instance=nightly")["items"]
        return not jobs and not crons

    cluster.wait_for("the CronJob and its Jobs deleted with the InferenceBatchJob", gone, timeout=90)
