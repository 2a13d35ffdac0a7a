"""The local pod runner: really runs kubeinfer's server and operator pods (dev and test tooling).

See docs/e2e.md. Modules: ``api`` (REST), ``net`` (bridge, netns, forwarder),
``volumes`` (atomic-writer volumes), ``containers`` (image mapping, processes,
probes), ``pods`` (one pod's lifecycle and status), ``runner`` (the node and its loop).
"""
