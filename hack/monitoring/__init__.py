"""Prometheus and prometheus-adapter for the local cluster: the queue-depth autoscaling loop.

``start(workdir, kubeconfig, bins)`` runs Debian's ``/usr/bin/prometheus`` on
127.0.0.1 (scraping, every second, the real node's pods that ``monitoring.targets``
lists in a file_sd target file, at addresses in its pod subnet, and every 5 s the node's
kubelet, ``/metrics/cadvisor`` and ``/metrics/resource`` over HTTPS with the API server's
kubelet-client certificate: the containers' usage for spec.rightSizing) and the adapter built by
``make cluster-build-adapter`` on 127.0.0.1, registers it as
``v1beta1``/``v1beta2.custom.metrics.k8s.io`` (ExternalName Service ``localhost``,
controlplane.md 6.3) and waits until the APIServices are Available. ``stop`` deletes
the APIServices first, then stops the three processes. pid files and logs live in ``workdir``.
"""

from .stack import ADAPTER_RULES, MissingComponent, running, start, stop

__all__ = ["ADAPTER_RULES", "MissingComponent", "running", "start", "stop"]
