"""``--workers N``: N server processes sharing the gRPC port (SO_REUSEPORT).

Python runs one thread at a time per process, so on a machine with several
cores the per-call gRPC work of one process is the limit for small requests.
The parent starts N workers (each loads its own sessions and batches its own
requests; the kernel spreads connections over them), serves HTTP itself
(``/metrics`` summed over the snapshots the workers write, see
``metrics``, ``/healthz``, ``/readyz`` when every worker is ready) and
on SIGTERM lets each worker drain. If a worker dies, the parent stops the
others and exits non-zero, so Kubernetes restarts the pod rather than serving
at reduced capacity behind a ready probe.

ModelStatistics are per worker: a client sees the counts of the worker its
connection landed on. REST shares ``--http-port`` the same way. With
``--access-log-file``, each worker writes its own file (``worker_log_path``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile

from kubeinfer_server import eventloop, metrics_http
from kubeinfer_server.settings import ServeSettings

log = logging.getLogger(__name__)


def _worker_main(settings: ServeSettings, index: int, ready, log_level: int, metrics_dir: str) -> None:
    logging.basicConfig(level=log_level, format=f"%(asctime)s %(levelname)s %(name)s[w{index}]: %(message)s")
    from kubeinfer_server.metrics import snapshot_path
    from kubeinfer_server.server import run_worker

    if settings.access_log_file:  # one file per worker: rotation needs a single writer
        settings = dataclasses.replace(settings, access_log_file=worker_log_path(settings.access_log_file, index))
    eventloop.runner(settings.event_loop)[1](run_worker(settings, ready.set, snapshot_path(metrics_dir, index)))


def worker_log_path(path: str, index: int) -> str:
    """``access.log`` -> ``access.w0.log``: worker ``index``'s access log file."""
    root, ext = os.path.splitext(path)
    return f"{root}.w{index}{ext}"


class Supervisor:
    def __init__(self, settings: ServeSettings, count: int) -> None:
        if settings.grpc_port == 0 or settings.http_port == 0:
            raise ValueError("--workers needs a fixed --grpc-port and --http-port: the workers share them")
        self.settings = settings
        self.count = count
        self.metrics_dir = tempfile.mkdtemp(prefix="kubeinfer-metrics-")
        self._ctx = multiprocessing.get_context("spawn")
        self.processes: list = []
        self.ready_events: list = []
        self.draining = False
        self._stop = asyncio.Event()

    def ready(self) -> bool:
        return (not self.draining and all(e.is_set() for e in self.ready_events)
                and all(p.is_alive() for p in self.processes))

    def start_workers(self) -> None:
        level = logging.getLogger().getEffectiveLevel()
        for index in range(self.count):
            ready = self._ctx.Event()
            process = self._ctx.Process(target=_worker_main,
                                        args=(self.settings, index, ready, level, self.metrics_dir),
                                        name=f"kubeinfer-worker-{index}")
            process.start()
            self.processes.append(process)
            self.ready_events.append(ready)

    async def run(self) -> int:
        from kubeinfer_server.metrics import workers_registry

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        self.start_workers()
        registry = workers_registry(self.metrics_dir, self._worker_alive)
        runner, port = await metrics_http.start(metrics_http.build_app(registry, self.ready),
                                                self.settings.host, self.settings.metrics_port)
        try:
            code = await self._supervise(port)
        finally:
            await self._stop_workers()
            await runner.cleanup()
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        return code

    def _worker_alive(self, name: str) -> bool:
        """Whether the worker that wrote snapshot ``worker-N`` still runs (its gauges count)."""
        index = int(name.rpartition("-")[2])
        return index < len(self.processes) and self.processes[index].is_alive()

    async def _supervise(self, metrics_port: int) -> int:
        announced = False
        while not self._stop.is_set():
            dead = [p for p in self.processes if not p.is_alive()]
            if dead:
                log.error("Worker %s exited with %s: stopping the others", dead[0].name, dead[0].exitcode)
                return 1
            if not announced and all(e.is_set() for e in self.ready_events):
                announced = True
                names = ", ".join(m.name for m in self.settings.models)
                log.info("Serving %s with %d workers on gRPC port %d, HTTP port %d, metrics port %d",
                         names, self.count, self.settings.grpc_port, self.settings.http_port, metrics_port)
            try:
                await asyncio.wait_for(self._stop.wait(), 0.2)
            except TimeoutError:
                pass
        return 0

    async def _stop_workers(self) -> None:
        self.draining = True
        log.info("Draining: stopping %d workers within %.0fs", self.count, self.settings.grace_seconds)
        for process in self.processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        deadline = (asyncio.get_running_loop().time() + self.settings.shutdown_delay_seconds
                    + self.settings.grace_seconds + 5)
        for process in self.processes:
            while process.is_alive() and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
            if process.is_alive():
                process.kill()
            process.join(5)
        log.info("Stopped")
