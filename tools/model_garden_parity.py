"""Parity of `spinenet convert --from model-garden` against TensorFlow Model Garden, end to end.

1. builds Model Garden's SpineNet RetinaNet with tf-models-official (in a TensorFlow environment given by
   --tf_python), redraws its weights so outputs are informative, saves a checkpoint and records raw per-level
   maps and final detections (tools/model_garden_fixture.py);
2. converts the checkpoint with this project's converter (no TensorFlow involved);
3. runs the converted model on the same input and compares raw class/box maps and the top-100 detections.

    python tools/model_garden_parity.py --model_id 49S --tf_python /path/to/tf-venv/bin/python
    python tools/model_garden_parity.py --family mobile --model_id 49XS --rtol 2.5e-4 --tf_python ...

(``--family mobile``: SpineNet-Mobile through tools/model_garden_mobile_fixture.py, at the YAML's input size
unless --image_size is given.)

Set up the TensorFlow side once with `python -m venv .venv-tf && .venv-tf/bin/pip install tf-models-official==2.20.0`.
Exits non-zero when max |Δ| of the raw maps exceeds --atol or the detections differ away from near-ties.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", default="spinenet", choices=["spinenet", "mobile"])
    p.add_argument("--model_id", default="49S", choices=["49S", "49", "96", "143", "190", "49XS"])
    p.add_argument("--image_size", type=int, default=None, help="default 640 (mobile: the YAML's)")
    p.add_argument("--tf_python", default=".venv-tf/bin/python", help="Python of an environment with TensorFlow")
    p.add_argument("--workdir", default=None, help="where the TF checkpoint and recording go "
                   "(default runs/model_garden_parity/<model_id>_<size>)")
    p.add_argument("--reuse", action="store_true", help="reuse an existing recording in --workdir")
    p.add_argument("--atol", type=float, default=1e-3, help="max allowed |Δ| of raw class/box maps")
    p.add_argument("--rtol", type=float, default=None, help="also: max allowed |Δ| of a raw map relative to its max")
    args = p.parse_args()
    mobile = args.family == "mobile"
    if args.image_size is None and not mobile:
        args.image_size = 640
    if args.image_size is None:
        from mobile_variants import MOBILE_YAMLS

        args.image_size = MOBILE_YAMLS[args.model_id]["input_size"]

    name = f"{'mobile' if mobile else ''}{args.model_id}_{args.image_size}"
    work = Path(args.workdir or f"runs/model_garden_parity/{name}")
    if not (args.reuse and (work / "reference.npz").exists()):
        tool = "model_garden_mobile_fixture.py" if mobile else "model_garden_fixture.py"
        cmd = [args.tf_python, str(HERE / tool), "--model_id", args.model_id,
               "--image_size", str(args.image_size), "--output", str(work)]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)

    from spinenet.convert.model_garden import convert_model_garden
    from spinenet.convert.parity import check_against_reference
    from spinenet.engine.checkpoint import load_model

    size = args.image_size
    result = convert_model_garden(work / "ckpt", work / "model.pt", model_id=None if mobile else args.model_id,
                                  params_override={"retinanet_parser": {"output_size": [size, size]}})
    print(result.summary())
    model, _ = load_model(work / "model.pt")
    report = check_against_reference(model, dict(np.load(work / "reference.npz")))
    print(report.table())
    ok = report.max_map_diff <= args.atol and report.detections_agree
    if args.rtol is not None:
        ok &= report.max_relative_map_diff <= args.rtol
    print(f"{'SpineNet-Mobile' if mobile else 'SpineNet'}-{args.model_id} @ {size}: {result.num_params:,} parameters "
          f"(Model Garden: {_tf_params(work):,}); max|Δ| raw maps {report.max_map_diff:.2e} "
          f"(relative {report.max_relative_map_diff:.2e}), detections agree: {report.detections_agree} "
          f"-> {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


def _tf_params(work: Path) -> int:
    """Model Garden's own count: trainable weights of the model it built (the fixture's variables.json)."""
    import json

    return json.loads((work / "variables.json").read_text())["metadata"]["trainable_params"]["total"]


if __name__ == "__main__":
    sys.exit(main())
