"""Makes the sample ONNX models of the examples and the benchmarks: mlp, cnn and linear.

Usage: ``python examples/make_models.py OUTDIR`` writes OUTDIR/mlp.onnx, OUTDIR/cnn.onnx and
OUTDIR/linear.onnx (seeded: the same bytes every run). The models are defined in the dev
package ``devkit.models`` (``make venv`` installs it), which the benchmarks, the demos and the
tests import; ``python -m devkit.models OUTDIR`` is the same command.
"""

import sys

from devkit.models import main

if __name__ == "__main__":
    sys.exit(main())
