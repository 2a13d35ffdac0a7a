"""The local pod runner: really runs kubeinfer's server and operator pods (dev and test tooling).

See the README, "End to end on the local cluster". Modules: ``api`` (REST), ``net`` (bridge, netns, forwarder),
``volumes`` (atomic-writer volumes), ``containers`` (image mapping, processes,
probes), ``pods`` (one pod's lifecycle and status), ``runner`` (the node and its loop).
"""
