"""What every transport does with a call, in one place: check the caller, run, account.

The gRPC servicer and the REST app decode their wire format and encode their
answers; between the two they hand the call to ``Frontend``, which checks the
caller's identity, looks the model up, runs the request through the serving
core, and reports the outcome once (``Accounting``: metrics, statistics, the
access log). Outcomes are status code names (``errors.code_of``); each
transport maps them to its own status.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TypeVar

from kubeinfer_server import errors
from kubeinfer_server.accesslog import Call, RequestIds
from kubeinfer_server.accounting import Accounting
from kubeinfer_server.core import InferRequest, InferResult, Repository, ServedModel
from kubeinfer_server.identity import Identity

log = logging.getLogger(__name__)

OK = "OK"
T = TypeVar("T")


class Frontend:
    def __init__(self, repository: Repository, accounting: Accounting, identity: Identity) -> None:
        self.repository = repository
        self.accounting = accounting
        self.identity = identity
        self.request_ids = RequestIds()

    async def infer(self, call: Call, decode: Callable[[], InferRequest],
                    encode: Callable[[ServedModel, InferResult], T], time_remaining: Callable[[], float | None],
                    ) -> tuple[T | None, str, str]:
        """Answer one inference call: (the encoded answer or None, the code name, the message).

        ``call`` already names the model and version the client asked for; ``decode``
        turns the wire request into an ``InferRequest`` (raising ``InvalidInput``),
        ``encode`` the result into the wire answer. A cancelled call (the client left,
        or its deadline passed) is accounted and the cancellation propagates.
        """
        start = time.monotonic()
        batch_rows, answer = 0, None
        try:
            self.identity.check(call.client)
            served = self.model(call)
            request = decode()
            remaining = time_remaining()
            request.deadline = start + remaining if remaining is not None else None
            result = await served.infer(request)
            batch_rows = result.batch_rows
            answer = encode(served, result)
            code, message = OK, ""
        except asyncio.CancelledError:
            remaining = time_remaining()
            code = "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
            self.accounting.finished(call, code, time.monotonic() - start, batch_rows)
            raise
        except Exception as exc:
            code, message = errors.code_of(exc)
            if code == errors.INTERNAL:
                log.exception("Failed request %r for model %r", call.id, call.model)
        self.accounting.finished(call, code, time.monotonic() - start, batch_rows)
        return answer, code, message

    def describe(self, call: Call, look: Callable[[], T]) -> tuple[T | None, str, str]:
        """Answer one metadata call with ``look()`` (which may raise a ``ServingError``)."""
        start = time.monotonic()
        answer = None
        try:
            self.identity.check(call.client)
            answer = look()
            code, message = OK, ""
        except Exception as exc:
            code, message = errors.code_of(exc)
            if code == errors.INTERNAL:
                log.exception("Failed %s call", call.method)
        self.accounting.answered(call, code, time.monotonic() - start)
        return answer, code, message

    def model(self, call: Call) -> ServedModel:
        """The model a metadata call names (``call.model``, ``call.version``), for ``describe``."""
        served = self.repository.get(call.model, call.version)
        call.version = served.version
        return served
