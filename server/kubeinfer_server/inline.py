"""When a batch may run on the event loop itself: the inline policy (pure, no I/O).

A thread hop (and the GIL hand-offs it brings) costs more than a
sub-millisecond model run, so a model whose runs are that cheap takes a
shortcut when nothing else is going on: a lone request runs at once, in its
caller, with no queue, future or thread. That gives the lowest latency at
concurrency 1. Under load the shortcut would starve batching (while the loop
runs the model it cannot take the requests that would join the batch), so the
policy watches for load:

* every ``PROBE_EVERY``-th lone request goes through the queue and runs off
  the loop (a probe);
* a batch that carried company, or found requests waiting when it finished,
  makes the model "loaded": every request queues, and batches run off the
  loop and grow while the loop takes new requests;
* the model is calm again after ``CALM_BATCHES`` batches in a row ran alone
  and found nobody waiting.

Whether a run is cheap is predicted from the measured compute time per row (a
moving average), starting pessimistic. Only a model with one instance runs
inline: with more, the batcher keeps every instance busy off the loop.
"""

from __future__ import annotations

INLINE_BELOW_S = 0.001  # batches predicted to run faster than this may run on the event loop
PROBE_EVERY = 8  # in the inline mode, every n-th lone request runs off the loop to look for load
CALM_BATCHES = 4  # the loaded mode ends after this many batches in a row ran alone with nobody waiting
COST_WEIGHT = 0.2  # weight of the newest batch in the moving average of compute seconds per row


class InlinePolicy:
    """Decides, per lone request, whether it runs on the loop; learns from every batch."""

    def __init__(self, row_cost_s: float = INLINE_BELOW_S) -> None:
        self.row_cost_s = row_cost_s  # moving average of compute seconds per row
        self._calm = CALM_BATCHES  # batches in a row that ran alone with nobody waiting
        self._lone = 0  # lone requests seen in the inline mode

    @property
    def loaded(self) -> bool:
        return self._calm < CALM_BATCHES

    def runs_inline(self, rows: int) -> bool:
        """For a request that finds the model idle and its queue empty: run it on the loop?"""
        if self.loaded or self.row_cost_s * rows >= INLINE_BELOW_S:
            return False
        self._lone += 1
        return self._lone % PROBE_EVERY != 0

    def batch_finished(self, requests: int, waiting: int) -> None:
        """A batch that ran off the loop ended with ``waiting`` requests queued."""
        # Company arrived while it ran, or it carried company: stay loaded.
        # A batch of one with nobody waiting: the load is going.
        self._calm = 0 if waiting or requests > 1 else self._calm + 1

    def observe_cost(self, rows: int, seconds: float) -> None:
        """A batch of ``rows`` took ``seconds`` of compute (wherever it ran)."""
        self.row_cost_s += COST_WEIGHT * (seconds / rows - self.row_cost_s)
