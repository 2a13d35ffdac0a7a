"""The operator and InferenceBatchJobs on the control plane (kwok nodes: the pods never run).

Covers: a one-off InferenceBatchJob gets its Indexed Job and a scheduled one its
CronJob, each made once; once settled, resyncs (every 2 s) write nothing, with no
re-apply of either (the drift check finds the Job as it was applied); the status
says Pending with the shards, and the printer columns show it.
"""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.cluster


def test_jobs_are_made_once_and_settled_resyncs_write_nothing(k, operator, make_ibj):
    k.apply(make_ibj("once", parallelism=2))
    k.apply(make_ibj("sched", parallelism=2, schedule="0 2 * * *"))
    job = k.cluster.wait_for("the Job", lambda: k.get("jobs", "once"), timeout=60)
    assert (job["spec"]["completionMode"], job["spec"]["completions"]) == ("Indexed", 2)
    cron = k.cluster.wait_for("the CronJob", lambda: k.get("cronjobs", "sched"), timeout=60)
    assert cron["spec"]["schedule"] == "0 2 * * *"
    status = k.cluster.wait_for("the status", lambda: (k.get("ibj", "once") or {}).get("status"), timeout=60)
    assert status["shards"]["total"] == 2 and status["phase"] in ("Pending", "Running")
    time.sleep(8)  # four resyncs
    log = operator.log()
    assert log.count("Created Job") == 1 and log.count("Created CronJob") == 1, log
    assert "Updated Job" not in log and "Updated CronJob" not in log, log
    table = k.cluster.kubectl("get", "ibj", "-n", k.namespace).stdout
    assert "PHASE" in table and "PROGRESS" in table and "0/2 shards" in table
