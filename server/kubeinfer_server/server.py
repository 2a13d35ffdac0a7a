"""Build, then start; stop with grace.

``build_server`` binds the gRPC port and returns an unstarted ``Server``.
``Server.serve`` starts gRPC, REST and metrics at once (health NOT_SERVING),
loads and warms up the models in a thread, then turns SERVING; with the threads
from the CPU limit it then follows that limit (``resize``). On SIGTERM (or
``stop``) health and readiness go false; after ``--shutdown-delay-seconds`` (0
by default; the operator sets a few seconds so endpoints drop the replica
first) gRPC and REST refuse new calls, and every accepted request, queued or
running, is answered within the grace period.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import ssl
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from aiohttp import web
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2

from kubeinfer_server import fetch, metrics, metrics_http, protocol, provenance, resize, rest
from kubeinfer_server.accesslog import AccessLog, RotatingFile
from kubeinfer_server.accounting import Accounting
from kubeinfer_server.core import Repository, ServedModel
from kubeinfer_server.errors import ModelLoadError
from kubeinfer_server.frontend import Frontend
from kubeinfer_server.identity import Identity
from kubeinfer_server.metrics import Metrics
from kubeinfer_server.model import Model
from kubeinfer_server.provenance import Provenance
from kubeinfer_server.servicer import InferenceServicer, register
from kubeinfer_server.settings import ModelSource, ServeSettings
from kubeinfer_server.tls import rest_ssl_context, server_credentials

log = logging.getLogger(__name__)

# How long a thread waiting for the GIL lets the holder run before asking it to let go
# (Python's default is 5 ms). A model thread needs the GIL for a few microseconds at the
# start and end of every batch; with the default, an event loop that stays busy with new
# requests holds a finished batch back for up to 5 ms (bench/RESULTS.md, session 3).
GIL_SWITCH_INTERVAL_S = 0.0005


def freeze_startup_heap() -> int:
    """Collect the loading's garbage, then freeze the rest; returns the objects frozen.

    Once the models are loaded, what is alive (modules, sessions, descriptors) lives as
    long as the process. Frozen out of the garbage collector's sight, a full collection
    walks only what requests create, instead of blocking the event loop for the whole
    startup heap (bench/RESULTS.md, session 4).
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class Server:
    settings: ServeSettings
    grpc_server: grpc.aio.Server
    grpc_port: int
    metrics: Metrics
    health: HealthServicer
    accounting: Accounting
    repository: Repository
    rest_app: web.Application
    rest_ssl: ssl.SSLContext | None = None
    reuse_port: bool = False
    http_port: int = 0
    metrics_port: int = 0
    _rest_runner: web.AppRunner | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def ready(self) -> bool:
        return self.repository.reports_ready

    def stop(self) -> None:
        self._stop.set()

    async def serve(self, on_ready=None, serve_http: bool = True) -> None:
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        await self.grpc_server.start()
        self._rest_runner, self.http_port = await rest.start(
            self.rest_app, self.settings.host, self.settings.http_port, self.rest_ssl, self.reuse_port,
            self.settings.grace_seconds)
        runner = None
        if serve_http:
            runner, self.metrics_port = await metrics_http.start(
                metrics_http.build_app(self.metrics.registry, self.ready), self.settings.host,
                self.settings.metrics_port,
            )
        await self._set_health(NOT_SERVING)
        try:
            self._serve_models(await asyncio.to_thread(self._load_models))
            log.info("Froze %d startup objects out of the garbage collector's sight", freeze_startup_heap())
            self.repository.ready = True
            await self._set_health(SERVING)
            names = ", ".join(self.repository.models)
            if serve_http:
                log.info("Serving %s on gRPC port %d, HTTP port %d, metrics port %d",
                         names, self.grpc_port, self.http_port, self.metrics_port)
            else:
                log.info("Worker ready: %s on gRPC port %d, HTTP port %d", names, self.grpc_port, self.http_port)
            if on_ready is not None:
                on_ready(self)
            following = self._follow_cpu_limit()
            await self._stop.wait()
            if following is not None:
                following.cancel()
            await self._drain()
        finally:
            await self.grpc_server.stop(0)
            await self._stop_rest()
            self.accounting.access_log.close()
            if runner is not None:
                await runner.cleanup()

    def _follow_cpu_limit(self) -> asyncio.Task | None:
        """With the threads from the CPU limit, the task that rebuilds the sessions when it changes
        (an in-place pod resize); None when the threads are fixed or the watch is off."""
        every_s = self.settings.cpu_limit_poll_seconds
        if self.settings.model_options.intra_op_threads or not every_s:
            return None
        watcher = resize.CpuLimitWatcher(self.repository.models.values())
        return asyncio.get_running_loop().create_task(watcher.watch(every_s))

    async def _drain(self) -> None:
        grace, delay = self.settings.grace_seconds, self.settings.shutdown_delay_seconds
        # Not ready and refusing turn on together (no await between) unless a delay
        # keeps answering: a call that sees not-ready after that is never accepted.
        self.repository.draining = True
        self.repository.refusing = not delay
        await self.health.enter_graceful_shutdown()
        if delay:
            # Readiness is already false; clients that have not yet seen this replica leave
            # their endpoints still send new calls for a moment, and they are still answered.
            log.info("Shutting down: not ready, still answering new calls for %.0fs", delay)
            await asyncio.sleep(delay)
            self.repository.refusing = True
        log.info("Draining: refusing new calls, answering accepted ones within %.0fs", grace)
        await asyncio.gather(self.grpc_server.stop(grace), self._stop_rest())
        await self.repository.close()
        log.info("Stopped")

    async def _stop_rest(self) -> None:
        """Stop listening, answer the calls in progress (within the grace period), close."""
        runner, self._rest_runner = self._rest_runner, None
        if runner is not None:
            await runner.cleanup()

    def _load_models(self) -> list[tuple[Model, Provenance]]:
        """Load and warm up every model (in a thread: it takes seconds to minutes), with the
        sha256 of the file loaded and how it was optimized. A model given as a URI (s3://,
        http(s)://, ...) is fetched into a temporary directory first, removed again once its
        sessions hold it."""
        models = []
        with tempfile.TemporaryDirectory(prefix="kubeinfer-models-") as scratch:
            for index, source in enumerate(self.settings.models):
                path = _model_file(source, index, scratch)
                try:
                    model = Model(source.name, path, self.settings.model_options)
                except ModelLoadError as exc:
                    if not fetch.is_remote(source.path):
                        raise
                    raise ModelLoadError(f"model {source.name} from {source.path}: {exc}") from None
                model.warm_up()
                models.append((model, _provenance(source, path)))
        return models

    def _serve_models(self, models: list[tuple[Model, Provenance]]) -> None:
        """Put the loaded models in the repository, on the event loop that reads it."""
        instances = self.settings.batching.instances
        for model, origin in models:
            version = self.settings.model_version
            account = self.accounting.open(model.name, ",".join(model.providers), instances, origin, version)
            self.repository.models[model.name] = ServedModel(model, self.settings.batching, account, origin, version)

    async def _set_health(self, status) -> None:
        await self.health.set("", status)
        await self.health.set(protocol.SERVICE_NAME, status)
        for source in self.settings.models:
            await self.health.set(source.name, status)


def _provenance(source: ModelSource, path: str) -> Provenance:
    """The loaded file's sha256 and optimization method; a file that loaded but cannot be read
    again (gone in between) is a ModelLoadError naming the model."""
    try:
        origin = provenance.of_file(path)
    except OSError as exc:
        raise ModelLoadError(f"model {source.name}: cannot read {path}: {exc.strerror or exc}") from None
    log.info("Model %s: sha256 %s, optimization %s", source.name, origin.sha256, origin.optimization_method)
    return origin


def _model_file(source: ModelSource, index: int, scratch: str) -> str:
    """The local path of ``source``'s model: as given, or fetched into ``scratch`` (the same
    URIs as ``kubeinfer-server fetch``); a failed fetch is a ModelLoadError naming the model."""
    if not fetch.is_remote(source.path):
        return source.path.removeprefix("file://")
    local = os.path.join(scratch, f"{index}.onnx")
    try:
        fetch.fetch(source.path, local)
    except fetch.FetchError as exc:
        raise ModelLoadError(f"model {source.name}: {exc}") from None
    return local


def build_server(settings: ServeSettings, reuse_port: bool = False) -> Server:
    options = [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ]
    if settings.max_connection_age_seconds:
        options += [
            ("grpc.max_connection_age_ms", int(settings.max_connection_age_seconds * 1000)),
            ("grpc.max_connection_age_grace_ms", int(max(settings.grace_seconds, 1) * 1000)),
        ]
    grpc_server = grpc.aio.server(options=options)
    metrics = Metrics()
    accounting = Accounting(metrics, _access_log(settings))
    identity = Identity(settings.allowed_clients,
                        verifies_clients=settings.tls is not None and settings.tls.client_ca is not None)
    repository = Repository()
    frontend = Frontend(repository, accounting, identity)
    servicer = InferenceServicer(frontend, whole_server_statistics=not reuse_port)
    rest_app = rest.RestApp(frontend, servicer.extensions).build(settings.max_message_bytes)
    rest_tls = rest_ssl_context(settings.tls) if settings.tls is not None else None
    server = Server(settings, grpc_server, 0, metrics, HealthServicer(), accounting, repository, rest_app,
                    rest_tls, reuse_port)
    register(servicer, grpc_server)
    health_pb2_grpc.add_HealthServicer_to_server(server.health, grpc_server)
    _enable_reflection(grpc_server)
    address = f"{settings.host}:{settings.grpc_port}"
    if settings.tls is not None:
        server.grpc_port = grpc_server.add_secure_port(address, server_credentials(settings.tls))
    else:
        server.grpc_port = grpc_server.add_insecure_port(address)
    if server.grpc_port == 0:
        raise OSError(f"could not bind gRPC port {address}")
    return server


def _access_log(settings: ServeSettings) -> AccessLog:
    file = None
    if settings.access_log_file:
        file = RotatingFile(settings.access_log_file, settings.access_log_max_bytes, settings.access_log_backups)
    return AccessLog(settings.access_log_sample_rate, file=file, to_stderr=settings.access_log_stderr)


def _enable_reflection(grpc_server: grpc.aio.Server) -> None:
    # Reflection answers from the private pool; add health and reflection's own files to it.
    for module in (health_pb2, reflection_pb2):
        try:
            protocol.POOL.FindFileByName(module.DESCRIPTOR.name)
        except KeyError:
            file = descriptor_pb2.FileDescriptorProto()
            module.DESCRIPTOR.CopyToProto(file)
            protocol.POOL.Add(file)
    names = (protocol.SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, grpc_server, pool=protocol.POOL)


async def run(settings: ServeSettings) -> None:
    server = build_server(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.stop)
    await server.serve()


async def run_worker(settings: ServeSettings, on_ready, snapshot: Path) -> None:
    """One of ``--workers`` processes: gRPC on the shared port, no HTTP; the parent serves
    /metrics from the snapshot this worker keeps writing to ``snapshot``."""
    server = build_server(settings, reuse_port=True)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, server.stop)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # the parent decides when to stop
    publisher = asyncio.ensure_future(metrics.publish_snapshots(server.metrics, snapshot))
    try:
        await server.serve(on_ready=lambda _: on_ready(), serve_http=False)
    finally:
        publisher.cancel()
        try:
            metrics.write_snapshot(server.metrics.snapshot(), snapshot)  # the final counts
        except OSError as exc:
            log.warning("Could not write the last metrics snapshot %s: %s", snapshot, exc)
