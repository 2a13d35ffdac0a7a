"""python -m e2ekit up|down [--dir .cluster]: the pod runner, Prometheus, the adapter, the model store."""

import sys

from .stack import main

sys.exit(main())
