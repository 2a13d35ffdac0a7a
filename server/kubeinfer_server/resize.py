"""Following the CPU limit: new sessions when an in-place pod resize changes it.

Kubernetes can resize a running pod in place (the pod's ``resize``
subresource): the container's cgroup CPU quota changes and nothing restarts.
When the intra-op threads come from the CPU limit (``--intra-op-threads 0``),
``CpuLimitWatcher`` reads the limit again every ``--cpu-limit-poll-seconds``
(``cpulimit``, the one reader) and, when it changed, gives each model new
sessions with that many threads, one model at a time, so that at most one
model's sessions are held twice:

1. the new sessions are built and warmed up on a thread, off the event loop,
   while the old ones go on serving;
2. on the loop, between two batches, the model serves from them
   (``ServedModel.swap_sessions``: one attribute, which a batch reads once when
   it starts; a running batch finishes on the old sessions, the next one runs
   on the new);
3. once every batch that was running then has finished, the old sessions are
   released, on a thread.

A rebuild that fails leaves the model on its old sessions, with a warning, and
is tried again when the limit changes again. With ``--workers`` every process
runs a watcher of its own: they share the container's cgroup, so each sees the
change and rebuilds its own sessions. Instances and batch sizes stay as they are.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from kubeinfer_server.core import ServedModel
from kubeinfer_server.cpulimit import cgroup_cpu_limit

log = logging.getLogger(__name__)


class CpuLimitWatcher:
    """Rebuilds the models' sessions whenever the CPU limit (``read_limit``) changes."""

    def __init__(self, models: Iterable[ServedModel], read_limit: Callable[[], int] = cgroup_cpu_limit) -> None:
        self._models = list(models)
        self._read_limit = read_limit
        self._seen: int | None = None  # the limit at the last look

    async def watch(self, every_s: float) -> None:
        """Look every ``every_s`` seconds, until cancelled."""
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.check()
            except Exception:  # a bug here must not stop the serving: the sessions serving now are good
                log.exception("Could not follow the CPU limit; trying again in %gs", every_s)

    async def check(self) -> None:
        """Read the limit; if it changed since the last look, resize every model not at it."""
        limit = self._read_limit()
        if limit == self._seen:
            return
        self._seen = limit
        for served in self._models:
            if served.model.threads != limit:
                await resize(served, limit)


async def resize(served: ServedModel, threads: int) -> bool:
    """Serve ``served`` from new sessions with ``threads`` intra-op threads; False if they could not
    be built (the old ones serve on)."""
    model = served.model
    try:
        sessions = await asyncio.to_thread(model.build_sessions, threads)
    except Exception as exc:  # whatever ONNX Runtime raised: the sessions serving now are still good
        log.warning("Kept model %s on %d intra-op threads: new sessions for the CPU limit %d failed: %s",
                    model.name, model.threads, threads, exc)
        return False
    before = await served.swap_sessions(sessions)
    log.info("Rebuilt model %s's sessions for the new CPU limit: %d -> %d intra-op threads",
             model.name, before, model.threads)
    return True
