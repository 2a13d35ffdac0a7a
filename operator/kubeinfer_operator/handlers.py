"""kopf wiring: thin handlers that call a kind's reconcile and translate its errors.

Two controllers, each a ``Controller`` (its kind, its pods' app label, its
children, its reconcile): InferenceDeployment (``reconcile``) and
InferenceBatchJob (``batchreconcile``). For each:

- create/update/resume of an object: reconcile it;
- every ``resync_seconds``, one operator-wide loop reconciles every watched
  object again (drift backstop, certificate renewal). Not a kopf
  timer: kopf puts a finalizer on every object that has a timer, and a
  finalizer left behind by an uninstalled operator blocks namespace deletion;
- any event on a child or one of its pods: reconcile the parent, so a deleted or
  edited child is put back and the status follows the pods. Bursts of child
  events for one parent coalesce into one pending reconcile;
- a reconcile that asks to be run again (``Outcome.recheck_seconds``: something
  moves that no object shows, such as a model fetch's progress) is run again
  then, by a loop that looks every ``RECHECK_TICK_SECONDS``.

One lock per object keeps reconciles of the same object serial.
Each InferenceDeployment reconcile is counted and timed in the operator's own metrics
(``opmetrics``); a deleted InferenceDeployment's series are dropped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from kubeinfer_operator import kinds, naming, opmetrics
from kubeinfer_operator.batchreconcile import reconcile_batch
from kubeinfer_operator.kube import ApiError, Kube
from kubeinfer_operator.opmetrics import OperatorMetrics
from kubeinfer_operator.reconcile import Emit, InvalidSpec, MissingDependency, Outcome, reconcile
from kubeinfer_operator.settings import Settings

log = logging.getLogger(__name__)

RETRY_SECONDS = 5
WAIT_SECONDS = 30
RECHECK_TICK_SECONDS = 1.0
MANAGED = {"app.kubernetes.io/managed-by": naming.MANAGED_BY}


@dataclasses.dataclass(frozen=True)
class Controller:
    """One kind the operator reconciles: what it watches and how one object is reconciled."""

    kind: kinds.Kind
    app: str  # app.kubernetes.io/name of its pods (and of the Jobs a CronJob makes)
    children: tuple[kinds.Kind, ...]
    reconcile: Callable[[Kube, Mapping[str, Any], Settings, dt.datetime, Emit], Outcome]
    counted: bool = False  # its reconciles are counted and timed in the operator's metrics

    @property
    def watched(self) -> tuple[tuple[str, str, str], ...]:
        """(group, version, plural) of what kopf watches for it: its children and their pods."""
        return tuple((k.group, k.version, k.plural) for k in (*self.children, kinds.POD))

    def parent_of(self, body: Mapping[str, Any]) -> str | None:
        """The name of the object of this kind that a child or pod belongs to, or None."""
        for ref in body["metadata"].get("ownerReferences") or []:
            if ref.get("kind") == self.kind.kind and ref.get("apiVersion", "").startswith(naming.GROUP + "/"):
                return str(ref["name"])
        labels = body["metadata"].get("labels") or {}
        if labels.get("app.kubernetes.io/name") == self.app:
            return labels.get("app.kubernetes.io/instance")
        return None


SERVING = Controller(kinds.INFERENCE_DEPLOYMENT, naming.SERVER_APP, kinds.CHILDREN, reconcile, counted=True)
BATCH = Controller(kinds.INFERENCE_BATCH_JOB, naming.BATCH_APP, kinds.BATCH_CHILDREN, reconcile_batch)


class Reconciler:
    """Runs a controller's reconcile for one parent at a time, with kopf's events and errors."""

    def __init__(self, kube: Kube, settings: Settings, metrics: OperatorMetrics | None = None,
                 controller: Controller = SERVING) -> None:
        self.kube = kube
        self.settings = settings
        self.metrics = metrics or OperatorMetrics()
        self.controller = controller
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()
        self._pending: set[tuple[str, str]] = set()
        self._recheck_at: dict[tuple[str, str], float] = {}  # monotonic time a reconcile asked to run again

    def _lock(self, key: tuple[str, str]) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def run(self, body: Mapping[str, Any]) -> None:
        """Reconcile the parent ``body`` names, as the API server holds it now: a body from a watch event may
        carry a status from before this operator's last write, and a rollout's progress lives there."""
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        with self._lock((namespace, name)):
            kind = self.controller.kind
            parent = self.kube.get(kind.api_version, kind.kind, namespace, name)
            if parent is None or parent["metadata"].get("deletionTimestamp"):
                return

            def emit(type_: str, reason: str, message: str) -> None:
                try:
                    self.kube.post_event(parent, type_, reason, message)
                except ApiError as exc:  # an Event is worth a retry of nothing: the status says it too
                    log.warning("Could not post the Event %s about %s/%s: %s", reason, namespace, name, exc)

            started, result, outcome = time.monotonic(), opmetrics.ERROR, Outcome()
            try:
                outcome = self.controller.reconcile(self.kube, parent, self.settings, dt.datetime.now(dt.UTC), emit)
                result = opmetrics.OK
                self._ask_again(namespace, name, outcome.recheck_seconds)
            except InvalidSpec:
                result = opmetrics.INVALID_SPEC
                raise
            except MissingDependency:
                result = opmetrics.MISSING_DEPENDENCY
                raise
            finally:
                if self.controller.counted:
                    self.metrics.reconciled(namespace, name, result, time.monotonic() - started,
                                            outcome.certificate_expiry)

    def _ask_again(self, namespace: str, name: str, seconds: float | None) -> None:
        with self._guard:
            if seconds is None:
                self._recheck_at.pop((namespace, name), None)
            else:
                self._recheck_at[(namespace, name)] = time.monotonic() + seconds

    def due(self) -> list[tuple[str, str]]:
        """The parents whose reconcile asked to run again by now (each handed out once)."""
        now = time.monotonic()
        with self._guard:
            keys = [key for key, at in self._recheck_at.items() if at <= now]
            for key in keys:
                del self._recheck_at[key]
        return keys

    def run_by_name(self, namespace: str, name: str) -> None:
        """Reconcile the current version of a parent, if it still exists."""
        with self._guard:
            self._pending.discard((namespace, name))
        try:
            self.run({"metadata": {"namespace": namespace, "name": name}})
        except (InvalidSpec, MissingDependency):
            pass  # The status and an Event already say so.

    def claim(self, namespace: str, name: str) -> bool:
        """True if no reconcile of this parent is already waiting to start."""
        with self._guard:
            if (namespace, name) in self._pending:
                return False
            self._pending.add((namespace, name))
            return True


async def resync_forever(reconcilers: tuple[Reconciler, ...]) -> None:
    """Every resync interval, reconcile each object of every kind the operator watches."""
    settings = reconcilers[0].settings
    while True:
        await asyncio.sleep(settings.resync_seconds)
        for reconciler in reconcilers:
            await _resync_kind(reconciler)


async def recheck_forever(reconcilers: tuple[Reconciler, ...]) -> None:
    """Run again, when it is due, each reconcile that asked for it."""
    while True:
        await asyncio.sleep(RECHECK_TICK_SECONDS)
        for reconciler in reconcilers:
            for namespace, name in reconciler.due():
                await _resync_one(reconciler, namespace, name)


async def _resync_kind(reconciler: Reconciler) -> None:
    kind = reconciler.controller.kind
    for namespace in reconciler.settings.namespaces or ("",):
        try:
            parents = await asyncio.to_thread(reconciler.kube.list, kind.api_version, kind.kind, namespace, "")
        except ApiError as exc:
            log.warning("Resync could not list %s in %s: %s", kind.plural, namespace or "all namespaces", exc)
            continue
        for parent in parents:
            await _resync_one(reconciler, parent["metadata"]["namespace"], parent["metadata"]["name"])


async def _resync_one(reconciler: Reconciler, namespace: str, name: str) -> None:
    if not reconciler.claim(namespace, name):
        return  # a reconcile of it is already waiting to start
    try:
        await asyncio.to_thread(reconciler.run_by_name, namespace, name)
    except ApiError as exc:
        log.warning("Resync of %s %s/%s failed: %s", reconciler.controller.kind.kind, namespace, name, exc)
    except Exception:  # a bug in one reconcile must not end the loop for every object
        log.exception("Resync of %s %s/%s failed", reconciler.controller.kind.kind, namespace, name)


def register(registry: kopf.OperatorRegistry, *reconcilers: Reconciler) -> None:
    """Registers every handler of the operator into ``registry``: the shared ones, then each kind's."""

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> Any:
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    async def start_loops(memo: kopf.Memo, **_: Any) -> None:
        memo.loops = [asyncio.create_task(resync_forever(reconcilers)),
                      asyncio.create_task(recheck_forever(reconcilers))]

    @kopf.on.cleanup(registry=registry)
    async def stop_loops(memo: kopf.Memo, **_: Any) -> None:
        for task in getattr(memo, "loops", ()):
            task.cancel()

    for reconciler in reconcilers:
        _register_kind(registry, reconciler)


def _register_kind(registry: kopf.OperatorRegistry, reconciler: Reconciler) -> None:
    controller = reconciler.controller
    parent = controller.kind
    resource: dict[str, Any] = dict(group=parent.group, version=parent.version, plural=parent.plural, registry=registry)

    @kopf.on.create(**resource)
    @kopf.on.update(**resource)
    @kopf.on.resume(**resource)
    def apply(body: kopf.Body, **_: Any) -> None:
        try:
            reconciler.run(body)
        except InvalidSpec as exc:
            raise kopf.PermanentError(str(exc)) from exc
        except MissingDependency as exc:
            raise kopf.TemporaryError(str(exc), delay=WAIT_SECONDS) from exc
        except ApiError as exc:
            raise kopf.TemporaryError(f"API server refused a request: {exc}", delay=RETRY_SECONDS) from exc

    if controller.counted:
        @kopf.on.event(**resource)
        def parent_event(body: kopf.Body, namespace: str | None, name: str | None, **kwargs: Any) -> None:
            if kwargs.get("type") == "DELETED" and namespace and name:  # no finalizer: an event, not on.delete
                reconciler.metrics.forget(namespace, name)

    for group, version, plural in controller.watched:
        @kopf.on.event(group, version, plural, labels=MANAGED, registry=registry,
                       id=f"{parent.plural}-{plural}")
        async def child_changed(body: kopf.Body, namespace: str | None, **_: Any) -> None:
            owner = controller.parent_of(body)
            if owner is None or namespace is None or not reconciler.claim(namespace, owner):
                return
            await asyncio.to_thread(reconciler.run_by_name, namespace, owner)
