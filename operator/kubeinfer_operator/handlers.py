"""kopf wiring: thin handlers that call ``reconcile`` and translate its errors.

- create/update/resume of an InferenceDeployment: reconcile it;
- every ``resync_seconds``, one operator-wide loop reconciles every watched
  InferenceDeployment again (drift backstop, certificate renewal). Not a kopf
  timer: kopf puts a finalizer on every object that has a timer, and a
  finalizer left behind by an uninstalled operator blocks namespace deletion;
- any event on a child or a server pod: reconcile the parent, so a deleted or
  edited child is put back and the status follows the pods. Bursts of child
  events for one parent coalesce into one pending reconcile.

One lock per InferenceDeployment keeps reconciles of the same object serial.
Each reconcile is counted and timed in the operator's own metrics
(``opmetrics``); a deleted InferenceDeployment's series are dropped.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import kopf

from kubeinfer_operator import kinds, naming, opmetrics
from kubeinfer_operator.kube import ApiError, Kube
from kubeinfer_operator.opmetrics import OperatorMetrics
from kubeinfer_operator.reconcile import InvalidSpec, MissingDependency, reconcile
from kubeinfer_operator.settings import Settings

log = logging.getLogger(__name__)

RETRY_SECONDS = 5
WAIT_SECONDS = 30
MANAGED = {"app.kubernetes.io/managed-by": naming.MANAGED_BY}
# (group, version, plural) of what kopf watches for us: the children and the server pods.
WATCHED_CHILDREN = tuple((k.group, k.version, k.plural) for k in (*kinds.CHILDREN, kinds.POD))


class Reconciler:
    """Runs ``reconcile`` for one parent at a time, with kopf's events and errors."""

    def __init__(self, kube: Kube, settings: Settings, metrics: OperatorMetrics | None = None) -> None:
        self.kube = kube
        self.settings = settings
        self.metrics = metrics or OperatorMetrics()
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()
        self._pending: set[tuple[str, str]] = set()

    def _lock(self, key: tuple[str, str]) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def run(self, body: Mapping[str, Any]) -> None:
        parent = dict(body)

        def emit(kind: str, reason: str, message: str) -> None:
            # kopf types its argument as a Body; any API object as a mapping works.
            kopf.event(parent, type=kind, reason=reason, message=message)  # type: ignore[arg-type]

        meta = parent["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        with self._lock((namespace, name)):
            started, result, expiry = time.monotonic(), opmetrics.ERROR, None
            try:
                expiry = reconcile(self.kube, parent, self.settings, dt.datetime.now(dt.UTC), emit)
                result = opmetrics.OK
            except InvalidSpec:
                result = opmetrics.INVALID_SPEC
                raise
            except MissingDependency:
                result = opmetrics.MISSING_DEPENDENCY
                raise
            finally:
                self.metrics.reconciled(namespace, name, result, time.monotonic() - started, expiry)

    def run_by_name(self, namespace: str, name: str) -> None:
        """Reconcile the current version of a parent, if it still exists."""
        with self._guard:
            self._pending.discard((namespace, name))
        parent = self.kube.get(naming.API_VERSION, naming.KIND, namespace, name)
        if parent is None or parent["metadata"].get("deletionTimestamp"):
            return
        try:
            self.run(parent)
        except (InvalidSpec, MissingDependency):
            pass  # The status and an Event already say so.

    def claim(self, namespace: str, name: str) -> bool:
        """True if no reconcile of this parent is already waiting to start."""
        with self._guard:
            if (namespace, name) in self._pending:
                return False
            self._pending.add((namespace, name))
            return True


async def resync_forever(reconciler: Reconciler) -> None:
    """Every resync interval, reconcile each InferenceDeployment the operator watches."""
    while True:
        await asyncio.sleep(reconciler.settings.resync_seconds)
        for namespace in reconciler.settings.namespaces or ("",):
            try:
                parents = await asyncio.to_thread(
                    reconciler.kube.list, naming.API_VERSION, naming.KIND, namespace, "")
            except ApiError as exc:
                log.warning("Resync could not list InferenceDeployments in %s: %s", namespace or "all namespaces", exc)
                continue
            for parent in parents:
                await _resync_one(reconciler, parent["metadata"]["namespace"], parent["metadata"]["name"])


async def _resync_one(reconciler: Reconciler, namespace: str, name: str) -> None:
    if not reconciler.claim(namespace, name):
        return  # a reconcile of it is already waiting to start
    try:
        await asyncio.to_thread(reconciler.run_by_name, namespace, name)
    except ApiError as exc:
        log.warning("Resync of InferenceDeployment %s/%s failed: %s", namespace, name, exc)


def _parent_of(body: Mapping[str, Any]) -> str | None:
    for ref in body["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == naming.KIND and ref.get("apiVersion", "").startswith(naming.GROUP + "/"):
            return str(ref["name"])
    if body.get("kind") == kinds.POD.kind:
        return (body["metadata"].get("labels") or {}).get("app.kubernetes.io/instance")
    return None


def register(registry: kopf.OperatorRegistry, reconciler: Reconciler) -> None:
    """Registers every handler of the operator into ``registry``."""
    parent = kinds.INFERENCE_DEPLOYMENT
    resource: dict[str, Any] = dict(group=parent.group, version=parent.version, plural=parent.plural, registry=registry)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> Any:
        return kopf.login_via_client(**kwargs)

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

    @kopf.on.event(**resource)
    def parent_event(body: kopf.Body, namespace: str | None, name: str | None, **kwargs: Any) -> None:
        if kwargs.get("type") == "DELETED" and namespace and name:  # no finalizer: an event, not on.delete
            reconciler.metrics.forget(namespace, name)

    @kopf.on.startup(registry=registry)
    async def start_resync(memo: kopf.Memo, **_: Any) -> None:
        memo.resync_task = asyncio.create_task(resync_forever(reconciler))

    @kopf.on.cleanup(registry=registry)
    async def stop_resync(memo: kopf.Memo, **_: Any) -> None:
        task = getattr(memo, "resync_task", None)
        if task is not None:
            task.cancel()

    for group, version, plural in WATCHED_CHILDREN:
        @kopf.on.event(group, version, plural, labels=MANAGED, registry=registry)
        async def child_changed(body: kopf.Body, namespace: str | None, **_: Any) -> None:
            owner = _parent_of(body)
            if owner is None or namespace is None or not reconciler.claim(namespace, owner):
                return
            await asyncio.to_thread(reconciler.run_by_name, namespace, owner)
