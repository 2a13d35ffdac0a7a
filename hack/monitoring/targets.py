"""Prometheus file_sd targets from the API: the running pods that ask to be scraped.

Debian's Prometheus is built without Kubernetes service discovery, so this process
does what role-pod discovery and the usual relabelling do: once a second it lists the
pods on the real node and writes one target per running pod annotated
``prometheus.io/scrape: "true"``, at ``podIP:<prometheus.io/port>``, labelled with
the pod's namespace and name (``python -m monitoring.targets KUBECONFIG OUT``).
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.parse
import urllib.request
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


def write(path: Path, entries: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entries, indent=1))
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    kubeconfig, out = Path(argv[0]), Path(argv[1])
    server, opener = kubeconfig_opener(kubeconfig)
    url = f"{server}/api/v1/pods?" + urllib.parse.urlencode({"fieldSelector": f"spec.nodeName={NODE}"})
    last = None
    while True:
        try:
            with opener.open(url, timeout=10) as response:
                entries = targets(json.load(response)["items"])
            if entries != last:
                write(out, entries)
                last = entries
        except (OSError, ValueError) as exc:
            print(f"could not list pods: {exc}", file=sys.stderr, flush=True)
        time.sleep(INTERVAL_S)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
