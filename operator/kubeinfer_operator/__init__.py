"""kubeinfer operator: reconciles InferenceDeployments into model-server workloads.

Layers, innermost first (an import-linter contract keeps them so):
``settings``, ``defaults``, ``spec``, ``naming``, ``kinds``, ``certs``, ``certificate_plan``,
``builders``, ``drift`` and ``conditions`` are pure (no kopf, no Kubernetes
client, no I/O); ``kube`` is the one module that talks to the API server (and
the only one that imports the Kubernetes client); ``reconcile`` composes them;
``handlers`` wires ``reconcile`` into kopf; ``cli`` runs it.
"""
