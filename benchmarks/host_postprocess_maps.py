"""Raw head maps through the host post-processing route, per output format: size on disk, read + post-process
time, and how the detections compare with those of the float32 BIN maps.

One random image through a raw-maps export of SpineNet-49S (random weights, head re-initialised so that
detections pass the score threshold, as tests/deploy/conftest.py does), its maps written as msame BIN, msame
TXT and fp16 BIN (what ATC ``--output_type=FP16`` writes), then read back with ``DetectionSource`` and
post-processed by the eager reference. Prints one row per format.

    python benchmarks/host_postprocess_maps.py --image_size 640 --num_classes 91
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image_size", type=int, default=640)
    p.add_argument("--num_classes", type=int, default=91)
    p.add_argument("--workdir", default=None, help="keep the export and the maps here (default: a temporary folder)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        run(Path(args.workdir or tmp), args.image_size, args.num_classes)
    return 0


def run(work: Path, size: int, num_classes: int) -> None:
    from spinenet.convert.parity import compare_detections
    from spinenet.deploy.export import ExportWrapper, export_onnx
    from spinenet.deploy.host_postprocess import DetectionSource, detections_from_raw, read_model_info
    from spinenet.deploy.msame_format import write_output
    from spinenet.deploy.runtimes import OnnxRuntimeSession
    from spinenet.registry import create_model

    make_informative = _load(ROOT / "tests" / "deploy" / "conftest.py").make_informative
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = create_model("retinanet_spinenet49s", num_classes=num_classes).eval()
    calib = torch.randint(0, 256, (1, size, size, 3), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    model = make_informative(model, ExportWrapper(model, image_size=(size, size)).preprocess(calib))
    raw = export_onnx(model, work / "raw.onnx", image_size=(size, size), postprocess="none", conv_algorithm="direct")
    image = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    maps = OnnxRuntimeSession(raw).run(image)
    ref = detections_from_raw(maps, read_model_info(raw))
    print(f"SpineNet-49S {size}x{size}, {num_classes} classes: {int(ref['NumDetections'][0])} detection(s) from "
          "the fp32 maps")
    print(f"{'format':8} {'MiB':>9} {'read+pp s':>10} {'matched':>8} {'max box diff px':>16} {'max score diff':>15}")
    for fmt in ("BIN", "TXT", "FP16"):
        folder = work / fmt / "20220606_222003"
        folder.mkdir(parents=True, exist_ok=True)
        for k, a in enumerate(maps.values()):
            if fmt == "FP16":
                a.astype(np.float16).tofile(folder / f"00000_output_{k}.bin")
            else:
                write_output(folder, "00000", k, a, fmt)
        mib = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
        start = time.perf_counter()
        got = DetectionSource(folder, raw).read("00000")
        seconds = time.perf_counter() - start
        (d,) = compare_detections({k: torch.from_numpy(v) for k, v in _dets(got).items()}, _dets(ref),
                                  box_tol=0.01, score_tol=1e-3)
        print(f"{fmt:8} {mib:9.3f} {seconds:10.2f} {d.matched:4d}/{d.num_ref:<3d} {d.max_box_diff:16.5f} "
              f"{d.max_score_diff:15.2e}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


def _load(path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("deploy_conftest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dets(d: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"detection_boxes": d["DetectionBoxes"], "detection_scores": d["DetectionScores"],
            "detection_classes": d["DetectionClasses"]}


if __name__ == "__main__":
    sys.exit(main())
