"""Where requests and batches are counted: the metrics, Triton's statistics, the access log.

Two observers, each the one place for its kind of event:

* ``ModelAccount.batch_ran`` and ``ModelAccount.dispatched``: the serving
  core reports each batch (compute time, size) and the queue wait of each
  request that leaves the queue;
* ``Accounting.finished``: a transport reports each answered inference call
  (the ``Call``, its status code, latency and the rows of the batch it ran
  in), ``Accounting.answered`` each metadata call (the access log only).
"""

from __future__ import annotations

from collections.abc import Sequence

from kubeinfer_server.accesslog import AccessLog, Call
from kubeinfer_server.execution import Ran
from kubeinfer_server.metrics import Metrics, ModelMetrics
from kubeinfer_server.provenance import Provenance
from kubeinfer_server.stats import ModelStats

UNKNOWN_MODEL = "unknown"  # the metrics' model label of a request for a model not served here


class ModelAccount:
    """One model's live metric values and statistics."""

    def __init__(self, live: ModelMetrics) -> None:
        self.live = live
        self.stats = ModelStats()

    def dispatched(self, waits_s: Sequence[float]) -> None:
        """Requests left the queue for a batch after waiting ``waits_s``."""
        queue_stats, observe = self.stats.queue, self.live.queue_seconds.observe
        for waited in waits_s:
            queue_stats.add(waited)
            observe(waited)

    def batch_ran(self, ran: Ran, requests: int) -> None:
        """A batch of ``requests`` requests ran."""
        self.stats.record_batch(ran.rows, requests, ran.timings)
        self.live.compute_seconds.observe(ran.compute_s)
        self.live.batch_rows.observe(ran.rows)


class Accounting:
    """Every model's account, and the observer of answered requests."""

    def __init__(self, metrics: Metrics, access_log: AccessLog) -> None:
        self.metrics = metrics
        self.access_log = access_log
        self.models: dict[str, ModelAccount] = {}

    def open(self, model: str, providers: str, instances: int, provenance: Provenance, revision: str) -> ModelAccount:
        account = ModelAccount(self.metrics.model(model, providers, instances, provenance.sha256,
                                                  provenance.optimization_method, revision))
        self.models[model] = account
        return account

    def finished(self, call: Call, code: str, seconds: float, batch_rows: int) -> None:
        """An inference call was answered with ``code`` after ``seconds``."""
        account = self.models.get(call.model)
        if account is not None:
            account.live.request_seconds.observe(seconds)
            (account.stats.success if code == "OK" else account.stats.fail).add(seconds)
        self.metrics.count_request(call.model if account is not None else UNKNOWN_MODEL, code, call.client)
        self.access_log.record(call, code, seconds, batch_rows)

    def answered(self, call: Call, code: str, seconds: float) -> None:
        """A metadata call was answered: logged, not counted as a request."""
        self.access_log.record(call, code, seconds, 0)
