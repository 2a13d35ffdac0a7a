"""How far the model fetch of each fetching pod has come, from the fetch step's own log.

The init container has no other channel to the operator while it runs: it holds
no service-account token, and its termination message comes only at exit. It
logs ``Fetched 12.0 of 48.0 MiB (25%) of URI`` every few seconds
(``kubeinfer_server.fetch.progress_line``; this parser is held to it by a
contract test), so the operator reads the last line of that log
(``pods/log``, one line) while the step runs, and only then.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from kubeinfer_operator import conditions
from kubeinfer_operator.builders.podparts import FETCH_CONTAINER
from kubeinfer_operator.kube import ApiError, Kube

log = logging.getLogger(__name__)

RECHECK_SECONDS = 5.0  # the fetch step logs its progress every 5 s
_OF_TOTAL = re.compile(r"Fetched (\d+\.\d) of (\d+\.\d) MiB \((\d+)%\)")
_SO_FAR = re.compile(r"Fetched (\d+\.\d) MiB of ")


def parse(line: str) -> str | None:
    """``12.0 of 48.0 MiB (25%)``, or ``12.0 MiB so far`` when the store did not say the size; None for
    any other line."""
    if found := _OF_TOTAL.search(line):
        return f"{found[1]} of {found[2]} MiB ({found[3]}%)"
    if found := _SO_FAR.search(line):
        return f"{found[1]} MiB so far"
    return None


def fetching(pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The pods whose fetch step is running now."""
    return [pod for pod in pods if conditions.fetch_running(pod)]


def of_pods(kube: Kube, pods: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Pod name -> its fetch's progress, for the pods fetching now that have logged some."""
    found = {}
    for pod in fetching(pods):
        meta = pod["metadata"]
        try:
            line = kube.log_tail(meta["namespace"], meta["name"], FETCH_CONTAINER)
        except ApiError as exc:  # not started yet, or the node cannot be reached: no figure this time
            log.debug("No fetch log from pod %s/%s: %s", meta["namespace"], meta["name"], exc)
            continue
        if (progress := parse(line)) is not None:
            found[meta["name"]] = progress
    return found
