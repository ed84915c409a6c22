"""``spinenet detect IMAGE...``: boxes for people who just want boxes — annotated images and one JSON.

Runs a spinenet checkpoint (PyTorch) or an exported ONNX model (ONNX Runtime) through the same path as the
deployment chain: decode (EXIF applied), letterbox into the model input, run, map boxes back to original pixels.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from spinenet.deploy.image2bin import letterbox, load_rgb
from spinenet.deploy.report import Detection, boxes_to_original, class_name, draw_detections
from spinenet.deploy.runtimes import open_session


def detect_images(images: list[str], output: str | os.PathLike, *, checkpoint: str | None = None,
                  model: str | None = None, device: str = "cpu", score_threshold: float = 0.3,
                  max_detections: int = 100, label_map: dict[int, str] | None = None,
                  progress: bool = True) -> dict:
    """Detect on each image; writes ``<output>/<name>.jpg`` (annotated) and ``<output>/detections.json``."""
    from tqdm import tqdm

    if (checkpoint is None) == (model is None):
        raise ValueError("give exactly one of --checkpoint (a spinenet .pt) or --model (an exported .onnx)")
    session = open_session(checkpoint or model, "torch" if checkpoint else "onnxruntime", device)
    if label_map is None and checkpoint:
        from spinenet.engine.checkpoint import read_checkpoint

        label_map = {int(k): v for k, v in read_checkpoint(checkpoint)["label_map"].items()}
    label_map = label_map or {}
    _, h, w, _ = session.input_shape
    out = Path(output)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--output {out}: cannot create the folder ({e})") from e
    results, skipped = [], []
    for path in tqdm(images, desc="detect", unit="img", disable=not progress or len(images) < 5):
        try:
            pixels = load_rgb(path)
        except ValueError as e:
            skipped.append({"image": str(path), "reason": str(e)})
            continue
        padded, scale, _ = letterbox(pixels, (h, w))
        batch = np.repeat(padded[None], session.input_shape[0], axis=0)  # a static batch: fill it with the image
        outs = session.run(batch)
        scores = outs["DetectionScores"][0]
        keep = np.nonzero(scores >= score_threshold)[0][:max_detections]
        boxes = boxes_to_original(outs["DetectionBoxes"][0][keep], np.array(scale), pixels.shape[:2])
        dets = [Detection(int(c), class_name(label_map, int(c)), float(s), tuple(float(v) for v in b))
                for c, s, b in zip(outs["DetectionClasses"][0][keep], scores[keep], boxes, strict=True)]
        name = Path(path).stem
        draw_detections(pixels, dets).save(out / f"{name}.jpg", quality=92)
        results.append({"image": str(path), "annotated": str(out / f"{name}.jpg"),
                        "size": list(pixels.shape[:2]),
                        "detections": [{"class_id": d.class_id, "class": d.name, "score": round(d.score, 5),
                                        "box_yxyx": [round(v, 2) for v in d.box]} for d in dets]})
    summary = {"model": str(checkpoint or model), "score_threshold": score_threshold, "images": results,
               "skipped": skipped}
    tmp = out / "detections.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, out / "detections.json")
    for r in results:
        print(f"{r['image']}: {len(r['detections'])} detection(s) -> {r['annotated']}")
    if skipped:
        print(f"skipped {len(skipped)}: " + "; ".join(f"{s['image']} ({s['reason']})" for s in skipped))
    print(f"detections: {out / 'detections.json'}")
    return summary
