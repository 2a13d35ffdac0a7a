"""python -m e2ekit up|down [--dir .cluster]: Prometheus, the adapter, the model store."""

import sys

from .stack import main

sys.exit(main())
