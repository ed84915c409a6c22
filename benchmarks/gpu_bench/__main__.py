"""``python -m gpu_bench`` (from benchmarks/) or ``python -m benchmarks.gpu_bench`` (from the repository root)."""

import sys

from .cli import main

sys.exit(main())
