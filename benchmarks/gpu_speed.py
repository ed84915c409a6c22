"""GPU speed of SpineNet-49S RetinaNet against torchvision's ``retinanet_resnet50_fpn`` (issue 13's done-when
table), in one call. The code is the package next to this file, ``benchmarks/gpu_bench/`` (one concern per
module; its ``__init__`` describes the rows); this file keeps the command line working:

    python benchmarks/gpu_speed.py --output gpu_speed.json        # GPU
    python benchmarks/gpu_speed.py --device cpu --smoke --output /tmp/smoke.json   # plumbing check on a CPU
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from gpu_bench.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
