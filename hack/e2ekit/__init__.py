"""The e2e layer on top of the local cluster, and the clients that use it.

``stack``: ``up``/``down`` of Prometheus and prometheus-adapter (``monitoring``) and the
model store (``modelstore``), on a cluster that ``localcluster`` brought up with its real
node; ``python -m e2ekit up|down`` (make e2e-up, e2e-down, cluster-down). ``clients``: what
the e2e tests, the cluster demo and the e2e benchmark do against it (kubectl reads,
Secrets on disk, ready endpoints, tritonclient over mTLS, a load client, Prometheus
queries). See the README, "End to end on the local cluster".
"""
