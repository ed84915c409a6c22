"""``spinenet report`` from detections listed per image: ``spinenet evaluate``'s ``results.json`` and ``spinenet
detect``'s ``detections.json``, beside the msame / ais_bench / ``spinenet infer`` folders of :mod:`report`.

A listed source serves :class:`~spinenet.deploy.host_postprocess.DetectionSource`'s interface — ``read(name)``
gives the seed's five outputs for image ``name`` (``00000``), ``path``, ``notes``, ``names()``, ``run.tool``,
``run.timing()`` — plus ``manifest`` (what ``spinenet image2bin``'s manifest gives: each image's file and
original size) and ``label_map``. The outputs carry boxes already in original pixels with ImageInfo = the
original size and scale 1, so the report's loop, drawing, matching and scoring are one code path for every
source, and a ``results.json`` scores exactly as ``spinenet evaluate`` scored it: its boxes came from float32
(``detections_to_coco``), so they survive the float32 outputs unchanged.

Formats, from this project's writers:

* ``results.json`` (:meth:`spinenet.engine.evaluate.CocoEvaluator.write_results`): the COCO results list,
  ``[{"image_id", "category_id", "bbox": [x, y, w, h] original pixels, "score"}]``. Images are named by COCO id
  only, so ``--annotations`` (their file names and sizes) and ``--image_file_pattern`` (the files, found by
  name) are needed.
* ``detections.json`` (:func:`spinenet.deploy.detect.detect_images`): ``{"model", "score_threshold",
  "images": [{"image", "annotated", "size": [h, w], "detections": [{"class_id", "class", "score",
  "box_yxyx"}]}], "skipped"}``. Images are found at their recorded path, else beside the JSON, else by name
  among ``--image_file_pattern`` (never detect's annotated copies, which have the boxes drawn in).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spinenet.deploy.file_patterns import describe, match_files

RESULTS_FORMAT = ("spinenet evaluate's results.json: a list of {\"image_id\", \"category_id\", \"bbox\": [x, y, w, h], "
                  "\"score\"}")
RESULT_KEYS = ("image_id", "category_id", "bbox", "score")
DETECTIONS_JSON = "detections.json"  # spinenet.deploy.detect.DETECTIONS_JSON (not imported: detect loads runtimes)


@dataclass
class ListedImage:
    source: Path
    size: tuple[int, int]  # original (h, w)
    boxes: np.ndarray  # (N, 4) float32 ymin, xmin, ymax, xmax original pixels
    classes: np.ndarray  # (N,) int32
    scores: np.ndarray  # (N,) float32


@dataclass(frozen=True)
class ListedRun:
    tool: str  # "results.json" or "spinenet detect": what the report's messages call the source
    info: dict = field(default_factory=dict)

    def timing(self) -> dict:
        return dict(self.info)


class ListedSource:
    """Per-image detections as a DetectionSource (see the module docstring)."""

    def __init__(self, path: Path, tool: str, images: list[ListedImage], *, skipped: list[tuple[str, str]],
                 notes: list[str], label_map: dict[int, str], info: dict | None = None):
        if not images:
            first = f" (first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
            raise ValueError(f"{path}: no image to report{first}")
        self.path, self.run, self.images = path, ListedRun(tool, info or {}), images
        self.notes, self.label_map = notes, label_map
        self.width = max(1, max(len(i.scores) for i in images))  # one padded length: the outputs stack for scoring
        self.manifest = {"images": [{"index": k, "source": str(i.source), "original_size": list(i.size),
                                     "scale": [1.0, 1.0]} for k, i in enumerate(images)],
                         "skipped": [{"source": s, "reason": r} for s, r in skipped]}

    def names(self) -> set[str]:
        return {f"{k:05d}" for k in range(len(self.images))}

    def read(self, name: str) -> dict[str, np.ndarray] | None:
        """The seed's five outputs of image ``name`` (batch 1), padded as the graph pads (score -1)."""
        k = int(name)
        if not 0 <= k < len(self.images):
            return None
        im, n = self.images[k], len(self.images[k].scores)
        boxes = np.zeros((1, self.width, 4), np.float32)
        classes = np.zeros((1, self.width), np.int32)
        scores = np.full((1, self.width), -1.0, np.float32)
        boxes[0, :n], classes[0, :n], scores[0, :n] = im.boxes, im.classes, im.scores
        info = np.array([[im.size, im.size, (1, 1), (0, 0)]], np.float32)  # (1, 4, 2): seen = original, scale 1
        return {"NumDetections": np.array([n], np.int32), "DetectionBoxes": boxes, "DetectionClasses": classes,
                "DetectionScores": scores, "ImageInfo": info}


def _read_json(path: Path, flag: str, what: str):
    if not path.is_file():
        raise FileNotFoundError(f"{flag} {path} does not exist: pass {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{flag} {path}: not a valid JSON file, truncated or damaged ({e}); pass {what}") from e


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def results_source(results: str | os.PathLike, annotations: str | os.PathLike | None,
                   image_file_pattern: str | list[str] | None) -> ListedSource:
    """``--from_results``: the images of ``annotations`` found by file name in ``image_file_pattern``, each with its
    detections from ``results`` (none is an image without detections, as ``spinenet evaluate`` scored it)."""
    path = Path(results)
    if annotations is None:
        raise ValueError(f"--from_results {path} needs --annotations: results.json names its images by COCO id, and "
                         "the annotation file those ids come from gives their file names and sizes")
    if not image_file_pattern:
        raise ValueError(f"--from_results {path} needs --image_file_pattern: the image files of --annotations "
                         f"{annotations} (found by file name)")
    data = _read_json(path, "--from_results", RESULTS_FORMAT)
    if not isinstance(data, list):
        hint = " (metrics.json or an annotation file?)" if isinstance(data, dict) else ""
        raise ValueError(f"--from_results {path} holds a JSON {type(data).__name__}{hint}, not a list of detections; "
                         f"pass {RESULTS_FORMAT}")
    for k, r in enumerate(data):
        missing = [key for key in RESULT_KEYS if not isinstance(r, dict) or key not in r]
        if missing:
            raise ValueError(f"--from_results {path}: entry {k} lacks {missing}; expected {RESULTS_FORMAT}")
        if not (isinstance(r["bbox"], list) and len(r["bbox"]) == 4 and all(map(_number, r["bbox"]))
                and _number(r["score"]) and isinstance(r["category_id"], int) and isinstance(r["image_id"], int)):
            raise ValueError(f"--from_results {path}: entry {k} is {json.dumps(r)[:120]}; expected integer ids, "
                             "a bbox of 4 numbers and a numeric score")
    from spinenet.data.coco import load_coco_json

    doc = load_coco_json(annotations)  # one-line errors naming the file
    by_id = {int(i["id"]): i for i in doc["images"]}
    unknown = sorted({int(r["image_id"]) for r in data} - set(by_id))
    if unknown:
        raise ValueError(f"--from_results {path}: {len(unknown)} image id(s) are not in --annotations {annotations} "
                         f"(first: {unknown[0]}): are these results of that annotation file?")
    per_image: dict[int, list[dict]] = {}
    for r in data:
        per_image.setdefault(int(r["image_id"]), []).append(r)
    ids_by_name = {os.path.basename(str(i["file_name"])): int(i["id"]) for i in doc["images"]}
    images, skipped = [], []
    for file in match_files(image_file_pattern):
        image_id = ids_by_name.get(os.path.basename(file))
        if image_id is None:
            skipped.append((file, f"not in --annotations {annotations}"))
            continue
        rs = per_image.get(image_id, [])
        x, y, w, h = (np.array([r["bbox"][j] for r in rs], np.float64).reshape(-1) for j in range(4))
        boxes = np.stack([y, x, y + h, x + w], axis=1).astype(np.float32) if rs else np.zeros((0, 4), np.float32)
        images.append(ListedImage(Path(file), (int(by_id[image_id]["height"]), int(by_id[image_id]["width"])), boxes,
                                  np.array([r["category_id"] for r in rs], np.int32).reshape(-1),
                                  np.array([r["score"] for r in rs], np.float32).reshape(-1)))
    if not images:
        raise ValueError(f"no file of --image_file_pattern {describe(image_file_pattern)} is named in --annotations "
                         f"{annotations}: are these the images of --from_results {path}?")
    found = {ids_by_name[os.path.basename(str(i.source))] for i in images}
    notes = []
    lost = sum(len(v) for k, v in per_image.items() if k not in found)
    if lost:
        notes.append(f"{lost} detection(s) of --from_results {path} are on images not found in "
                     f"--image_file_pattern {describe(image_file_pattern)}: not reported")
    labels = {int(c["id"]): str(c["name"]) for c in doc["categories"]}
    return ListedSource(path, "results.json", images, skipped=skipped, notes=notes, label_map=labels,
                        info={"results": str(path), "detections": len(data)})


def detect_source(folder: str | os.PathLike, image_file_pattern: str | list[str] | None = None) -> ListedSource:
    """``--from_detect``: a ``spinenet detect --output`` folder (or its detections.json), on the original images."""
    folder = Path(folder)
    path = folder / DETECTIONS_JSON if folder.is_dir() else folder
    what = "a spinenet detect --output folder (it holds detections.json)"
    data = _read_json(path, "--from_detect", what)
    try:
        entries = data["images"]
        parsed = [(str(e["image"]), tuple(int(v) for v in e["size"]),
                   [(int(d["class_id"]), str(d.get("class", "")), float(d["score"]),
                     tuple(float(v) for v in d["box_yxyx"])) for d in e["detections"]]) for e in entries]
        if any(len(s) != 2 or len(b) != 4 for _, s, ds in parsed for b in [*(d[3] for d in ds), (0,) * 4]):
            raise ValueError("size must be [h, w] and box_yxyx 4 numbers")
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"--from_detect {path}: not spinenet detect's detections.json ({type(e).__name__}: {e}); "
                         f"pass {what}") from e
    by_name = {os.path.basename(p): Path(p) for p in match_files(image_file_pattern)} if image_file_pattern else {}
    images, skipped, labels = [], [], {}
    drawn = {(path.parent / str(e.get("annotated", ""))).resolve() for e in entries}  # detect's copies, boxes drawn
    for image, size, dets in parsed:
        candidates = [Path(image), path.parent / image]
        found = next((c for c in candidates if c.is_file() and c.resolve() not in drawn),
                     by_name.get(os.path.basename(image)))
        if found is None:
            skipped.append((image, "image not found (pass --image_file_pattern to find it by name)"))
            continue
        labels.update({c: n for c, n, _, _ in dets if n and n != f"id {c}"})  # detect's name for unnamed ids
        images.append(ListedImage(found, size, np.array([d[3] for d in dets], np.float32).reshape(-1, 4),
                                  np.array([d[0] for d in dets], np.int32), np.array([d[2] for d in dets], np.float32)))
    threshold = data.get("score_threshold")
    notes = [f"spinenet detect kept only detections with score >= {threshold} (its --score_threshold): the page "
             "and any mAP hold those only; run detect with --score_threshold 0.05 for a complete mAP"]
    skipped += [(str(s.get("image")), str(s.get("reason"))) for s in data.get("skipped", []) if isinstance(s, dict)]
    return ListedSource(path, "spinenet detect", images, skipped=skipped, notes=notes, label_map=labels,
                        info={"model": data.get("model"), "score_threshold": threshold})
