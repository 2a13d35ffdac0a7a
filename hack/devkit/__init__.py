"""Helpers shared by kubeinfer's development tooling, tests, benchmarks and examples.

One copy of each; the other dev packages (localcluster, monitoring, e2ekit)
build on these, never the other way round. Import the module you need: this package
imports nothing itself, so the light modules stay light.

- ``ports``: a free loopback port.
- ``processes``: liveness by pid, death with the parent, process groups, background processes.
- ``waiting``: bounded polling.
- ``direct``: HTTP to our own hosts, never through a proxy, and a 200-or-not probe.
- ``x509``: every development certificate, issued through ``kubeinfer_operator.certs``.
- ``secretvolume``: the kubelet's atomic-writer layout of Secret and ConfigMap volumes.
- ``models``: the sample and test ONNX models (``python -m devkit.models OUTDIR``).
- ``classifier``: an MLP classifier trained with numpy, and its Parquet datasets (optimize's tests).
- ``s3server``: a real S3-compatible store on loopback (SeaweedFS, from ``make s3-build``).
"""
