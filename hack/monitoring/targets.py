"""Prometheus file_sd targets from the API: the running pods that ask to be scraped, and the kubelet.

Debian's Prometheus is built without Kubernetes service discovery, so this process
does what role-pod discovery and the usual relabelling do: once a second it lists the
pods on the real node and writes one target per running pod annotated
``prometheus.io/scrape: "true"``, at ``podIP:<prometheus.io/port>``, labelled with
the pod's namespace and name; and, given a second file, what role-node discovery
gives: the real node's kubelet at its InternalIP and the port it reports
(``status.daemonEndpoints``; chosen free at each cluster start), labelled with the
node's name (``python -m monitoring.targets KUBECONFIG OUT [KUBELET_OUT]``).
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from localcluster.nodeconfig import NAME as NODE
from localcluster.pki import kubeconfig_opener

INTERVAL_S = 1.0


def targets(pods: list[dict]) -> list[dict]:
    """The file_sd entries for ``pods`` (pure: the tests feed it pod lists)."""
    found = []
    for pod in pods:
        meta, status = pod["metadata"], pod.get("status", {})
        notes = meta.get("annotations") or {}
        if notes.get("prometheus.io/scrape") != "true" or status.get("phase") != "Running" \
                or not status.get("podIP") or meta.get("deletionTimestamp"):
            continue
        found.append({"targets": [f"{status['podIP']}:{notes.get('prometheus.io/port', '80')}"],
                      "labels": {"namespace": meta["namespace"], "pod": meta["name"],
                                 "__metrics_path__": notes.get("prometheus.io/path", "/metrics")}})
    return sorted(found, key=lambda t: t["targets"])


def kubelet_targets(node: dict) -> list[dict]:
    """The file_sd entry of a node's kubelet; none until the node reports its address and port (pure)."""
    status = node.get("status", {})
    port = status.get("daemonEndpoints", {}).get("kubeletEndpoint", {}).get("Port")
    addresses = [a["address"] for a in status.get("addresses", []) if a.get("type") == "InternalIP"]
    if not port or not addresses:
        return []
    return [{"targets": [f"{addresses[0]}:{port}"], "labels": {"node": node["metadata"]["name"]}}]


def write(path: Path, entries: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entries, indent=1))
    os.replace(tmp, path)


def _refresh(opener: urllib.request.OpenerDirector, url: str, out: Path, last: list | None,
             entries_of: Callable[[dict], list[dict]]) -> list | None:
    """Write what ``entries_of`` makes of the answer at ``url`` if it changed; returns the entries now."""
    try:
        with opener.open(url, timeout=10) as response:
            entries = entries_of(json.load(response))
    except (OSError, ValueError, KeyError) as exc:
        print(f"could not read {url}: {exc}", file=sys.stderr, flush=True)
        return last
    if entries != last:
        write(out, entries)
    return entries


def main(argv: list[str]) -> int:
    kubeconfig, out = Path(argv[0]), Path(argv[1])
    kubelet_out = Path(argv[2]) if len(argv) > 2 else None
    server, opener = kubeconfig_opener(kubeconfig)
    pods_url = f"{server}/api/v1/pods?" + urllib.parse.urlencode({"fieldSelector": f"spec.nodeName={NODE}"})
    node_url = f"{server}/api/v1/nodes/{NODE}"
    last_pods = last_kubelet = None
    while True:
        last_pods = _refresh(opener, pods_url, out, last_pods, lambda body: targets(body["items"]))
        if kubelet_out is not None:
            last_kubelet = _refresh(opener, node_url, kubelet_out, last_kubelet, kubelet_targets)
        time.sleep(INTERVAL_S)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
