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
from spinenet.io_checks import atomic_write, ensure_writable_dir

DETECTIONS_JSON = "detections.json"
JPEG_SUFFIXES = (".jpg", ".jpeg")


def annotated_paths(images: list[str], output: Path) -> dict[str, Path]:
    """Where each image's annotated copy goes; refuses (ValueError) any plan that would write over a file.

    Each copy keeps the image's path relative to the images' common folder, so ``a/x.jpg`` and ``b/x.jpg`` go to
    ``<output>/a/x.jpg`` and ``<output>/b/x.jpg``; a non-JPEG image gets ``.jpg`` appended (``a/x.png`` ->
    ``<output>/a/x.png.jpg``), so ``a/x.jpg`` and ``a/x.png`` stay apart too. Nothing is overwritten but the
    copies a previous ``spinenet detect`` listed in ``<output>/detections.json``: never an input image (say,
    ``--output`` = the images' folder), never a file of the user's.
    """
    resolved = {p: Path(p).resolve() for p in images}
    inputs = set(resolved.values())
    base = Path(os.path.commonpath([r.parent for r in resolved.values()])) if resolved else Path()
    out = output.resolve()
    ours = _previous_outputs(output)
    targets: dict[str, Path] = {}
    claimed: dict[Path, str] = {}
    for image, real in resolved.items():
        rel = real.relative_to(base)
        if rel.suffix.lower() not in JPEG_SUFFIXES:
            rel = rel.with_name(rel.name + ".jpg")
        target = out / rel
        if target in inputs:
            raise ValueError(f"--output {output}: the annotated copy of {image} would replace the input image "
                             f"{target}; choose another --output folder")
        if target in claimed:
            raise ValueError(f"--output {output}: {claimed[target]} and {image} would both be drawn to {target}; "
                             "rename one of them")
        if target.exists() and target not in ours:
            raise ValueError(f"--output {output}: the annotated copy of {image} would replace {target}, which "
                             "spinenet detect did not write; choose another --output folder or remove that file")
        claimed[target] = image
        targets[image] = output / rel
    return targets


def _previous_outputs(output: Path) -> set[Path]:
    """The annotated copies listed in ``<output>/detections.json`` (which a rerun may replace)."""
    path = output / DETECTIONS_JSON
    if not path.exists():
        return set()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {(output / r["annotated"]).resolve() for r in data["images"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"--output {output}: {path} is not a spinenet detect result and would be replaced; "
                         "choose another --output folder or remove that file") from e


def detect_images(images: list[str], output: str | os.PathLike, *, checkpoint: str | None = None,
                  model: str | None = None, device: str = "cpu", score_threshold: float = 0.3,
                  max_detections: int = 100, label_map: dict[int, str] | None = None,
                  progress: bool = True) -> dict:
    """Detect on each image; writes annotated copies (see :func:`annotated_paths`) and ``detections.json``."""
    from tqdm import tqdm

    if (checkpoint is None) == (model is None):
        raise ValueError("give exactly one of --checkpoint (a spinenet .pt) or --model (an exported .onnx)")
    out = Path(output)
    images = list(dict.fromkeys(images))  # the same name twice is one image
    targets = annotated_paths(images, out)  # before any work: a refused plan costs nothing
    ensure_writable_dir(out, "--output")
    session = open_session(checkpoint or model, "torch" if checkpoint else "onnxruntime", device)
    if label_map is None and checkpoint:
        from spinenet.engine.checkpoint import read_checkpoint

        label_map = {int(k): v for k, v in read_checkpoint(checkpoint)["label_map"].items()}
    label_map = label_map or {}
    _, h, w, _ = session.input_shape
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
        target = targets[path]
        target.parent.mkdir(parents=True, exist_ok=True)
        annotated = draw_detections(pixels, dets)
        atomic_write(target, lambda f, im=annotated: im.save(f, format="JPEG", quality=92), binary=True)
        results.append({"image": str(path), "annotated": target.relative_to(out).as_posix(),  # beside this JSON
                        "size": list(pixels.shape[:2]),
                        "detections": [{"class_id": d.class_id, "class": d.name, "score": round(d.score, 5),
                                        "box_yxyx": [round(v, 2) for v in d.box]} for d in dets]})
    summary = {"model": str(checkpoint or model), "score_threshold": score_threshold, "images": results,
               "skipped": skipped}
    atomic_write(out / DETECTIONS_JSON, lambda f: json.dump(summary, f, indent=1))
    for r in results:
        print(f"{r['image']}: {len(r['detections'])} detection(s) -> {out / r['annotated']}")
    if skipped:
        print(f"skipped {len(skipped)}: " + "; ".join(f"{s['image']} ({s['reason']})" for s in skipped))
    print(f"detections: {out / 'detections.json'}")
    return summary
