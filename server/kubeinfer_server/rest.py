"""The Open Inference Protocol v2 over REST (aiohttp, on the gRPC server's event loop).

The routes of the OIP v2 HTTP API, and Triton's extensions that tritonclient
and perf_analyzer call (model configuration, statistics, repository index).
Every call goes through the same ``frontend.Frontend`` as gRPC: the same
batcher, metrics, access log and allow-list. Errors are JSON ``{"error":
message}`` with the HTTP status of their code (``HTTP_STATUS``).

Health endpoints answer without a client certificate (the kubelet's probes
have none); everything else needs one when the server verifies clients.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from kubeinfer_server import metadata, restcodec
from kubeinfer_server.accesslog import Call
from kubeinfer_server.errors import InvalidInput, Unauthenticated, code_of
from kubeinfer_server.frontend import Frontend

HTTP_STATUS = {
    "OK": 200,
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
MODEL = "/v2/models/{model}"
VERSIONED = "/v2/models/{model}/versions/{version}"


def json_response(value: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(value), status=status, content_type=restcodec.JSON_TYPE)


def error_response(code: str, message: str) -> web.Response:
    return json_response({"error": message}, HTTP_STATUS.get(code, 500))


def peer_of(request: web.Request) -> str:
    """The client's address in gRPC's form (``ipv4:127.0.0.1:50312``, ``ipv6:[::1]:50312``)."""
    transport = request.transport
    peername = transport.get_extra_info("peername") if transport is not None else None
    if not peername:
        return "unknown"
    host, port = peername[0], peername[1]
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


def peer_certificate(request: web.Request) -> dict | None:
    transport = request.transport
    return transport.get_extra_info("peercert") if transport is not None else None


class RestApp:
    """The routes, each a thin handler over ``Frontend``."""

    def __init__(self, frontend: Frontend, extensions: tuple[str, ...]) -> None:
        self.frontend = frontend
        self.repository = frontend.repository
        self.extensions = extensions

    def build(self, max_body_bytes: int) -> web.Application:
        app = web.Application(client_max_size=max_body_bytes)
        get, post = app.router.add_get, app.router.add_post
        get("/v2/health/live", self.live, allow_head=False)
        get("/v2/health/ready", self.ready, allow_head=False)
        get("/v2", self.server_metadata, allow_head=False)
        post("/v2/repository/index", self.repository_index)
        get("/v2/models/stats", self.statistics, allow_head=False)
        for prefix in (MODEL, VERSIONED):
            get(prefix, self.model_metadata, allow_head=False)
            get(f"{prefix}/ready", self.model_ready, allow_head=False)
            get(f"{prefix}/config", self.model_config, allow_head=False)
            get(f"{prefix}/stats", self.statistics, allow_head=False)
            post(f"{prefix}/infer", self.infer)
        return app

    # --- health (not logged, no certificate needed) ------------------------------
    async def live(self, request: web.Request) -> web.Response:
        return json_response({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        ready = self.repository.reports_ready
        return json_response({"ready": ready}, 200 if ready else 503)

    async def model_ready(self, request: web.Request) -> web.Response:
        """Not logged (clients poll it), but it names the served models: a caller the server
        cannot identify gets 401 where client certificates are verified."""
        name, version = request.match_info["model"], request.match_info.get("version", "")
        identity = self.frontend.identity
        try:
            identity.check_certificate(identity.of_peercert(peer_certificate(request)))
        except Unauthenticated as exc:
            return error_response(*code_of(exc))
        if name not in self.repository.models:
            return error_response("NOT_FOUND", f"model '{name}' is not served here")
        ready = self.repository.reports_ready and version in ("", self.repository.models[name].version)
        return json_response({"name": name, "ready": ready}, 200 if ready else 503)

    # --- metadata (logged; refused to callers the allow-list refuses) -----------
    async def server_metadata(self, request: web.Request) -> web.Response:
        return self._describe(request, lambda call: metadata.server_metadata(self.extensions))

    async def model_metadata(self, request: web.Request) -> web.Response:
        return self._describe(request, lambda call: metadata.model_metadata(self.frontend.model(call)))

    async def model_config(self, request: web.Request) -> web.Response:
        return self._describe(request, lambda call: metadata.model_config(self.frontend.model(call)))

    async def statistics(self, request: web.Request) -> web.Response:
        def look(call: Call) -> dict:
            models = [self.frontend.model(call)] if call.model else list(self.repository.models.values())
            return metadata.model_statistics(models)

        return self._describe(request, look)

    async def repository_index(self, request: web.Request) -> web.Response:
        return self._describe(request, lambda call: metadata.repository_index(self.repository))

    def _describe(self, request: web.Request, look: Callable[[Call], Any]) -> web.Response:
        call = self._call(request)
        answer, code, message = self.frontend.describe(call, lambda: look(call))
        return error_response(code, message) if answer is None else json_response(answer)

    # --- inference ----------------------------------------------------------------
    async def infer(self, request: web.Request) -> web.Response:
        call = self._call(request)
        body = await request.read()
        parsed, refused, timeout = restcodec.RestInfer({}, memoryview(b"")), None, None
        try:
            parsed = restcodec.parse_body(body, request.headers.get(restcodec.HEADER_LENGTH))
            call.id = parsed.id or call.id
            timeout = parsed.timeout_s()
        except InvalidInput as exc:  # answered below, through the frontend, so that it is accounted
            refused = exc
        deadline = None if timeout is None else time.monotonic() + timeout

        def decode():
            if refused is not None:
                raise refused
            return restcodec.decode_request(parsed, call.model, call.version)

        def remaining() -> float | None:
            return None if deadline is None else deadline - time.monotonic()

        answer, code, message = await self.frontend.infer(
            call, decode,
            lambda served, result: restcodec.encode_response(parsed, call.id, served.name, served.version, result),
            remaining)
        if answer is None:
            return error_response(code, message)
        body, json_length = answer
        if json_length is None:
            return web.Response(body=body, content_type=restcodec.JSON_TYPE)
        return web.Response(body=body, content_type=restcodec.BINARY_TYPE,
                            headers={restcodec.HEADER_LENGTH: str(json_length)})

    def _call(self, request: web.Request) -> Call:
        match = request.match_info
        resource = match.route.resource
        route = resource.canonical if resource is not None else request.path
        return Call("http", f"{request.method} {route}", peer_of(request),
                    self.frontend.identity.of_peercert(peer_certificate(request)),
                    self.frontend.request_ids.next(), match.get("model", ""), match.get("version", ""))


async def start(app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext | None,
                reuse_port: bool, shutdown_timeout: float) -> tuple[web.AppRunner, int]:
    """Serve ``app``; returns the runner (``cleanup`` drains within ``shutdown_timeout``) and the port."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_port=reuse_port or None)
    await site.start()
    return runner, runner.addresses[0][1]
