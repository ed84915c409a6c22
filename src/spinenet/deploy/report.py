"""``spinenet report``: an msame or ais_bench output folder -> an HTML page and its folder (+ COCO mAP).

The seed's ``test_spinenet_om_data.py`` (deployment-contract.md §1.7) matched image i of the glob to
``{i:05d}_output_<k>``, divided the boxes by ImageInfo **row 1** (the constant model input size, so boxes were
only right for 640x640 images) and wrote bare ``<img>`` tags. Here boxes go back to original pixels through the
scale (ImageInfo row 2, times the letterbox scale of ``spinenet image2bin`` when the graph saw a letterboxed
bin), are clipped to the image, and the page has a run summary, the mAP, a thumbnail index and a detail view with
boxes drawn in the browser at a readable size (:mod:`report_page`, :mod:`report_assets`); with annotations each
detection is marked true / false positive and each missed object shown (:mod:`report_analysis`).

Matching without a manifest follows ``spinenet image2bin``'s numbering: indices count the *readable* images of
the sorted glob (a non-image file takes no index); with the seed's image2bin every file had to be an image, so
both numberings agree there.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from spinenet.data.label_map import read_label_map
from spinenet.deploy.file_patterns import describe, match_files
from spinenet.deploy.host_postprocess import DetectionSource
from spinenet.deploy.image2bin import load_rgb, read_manifest
from spinenet.deploy.report_analysis import ReportAnalyzer, scored_boxes
from spinenet.deploy.report_assets import PageData, ReportFolder
from spinenet.deploy.report_page import PALETTE, metrics_section, summary_section, write_page
from spinenet.deploy.run_state import check_run_complete
from spinenet.io_checks import atomic_write, ensure_writable_dir, strict_json

LIST_LIMIT = 20  # names listed on stdout per category before "... and N more"


@dataclass
class Detection:
    class_id: int
    name: str
    score: float
    box: tuple[float, float, float, float]  # ymin, xmin, ymax, xmax in original-image pixels, clipped


@dataclass
class ImageEntry:
    """One image to report: its output name (``00000``), source file and, from a manifest, size and scale."""

    index: int | None  # None until decoded (glob mode): unreadable files take no index, as in image2bin
    source: Path
    original_size: tuple[int, int] | None = None
    bin_scale: tuple[float, float] | None = None  # manifest scale (resized / original), y then x

    @property
    def output_name(self) -> str:
        return f"{self.index:05d}"


@dataclass
class ReportResult:
    html_path: Path
    run_folder: Path
    num_images: int = 0
    num_detections: int = 0  # valid detections (score > 0) in the outputs
    num_drawn: int = 0
    missing: list[tuple[str, str]] = field(default_factory=list)  # (image, reason): outputs absent or broken
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason): not an image, unreadable
    unmatched: list[str] = field(default_factory=list)  # reported images absent from --annotations
    notes: list[str] = field(default_factory=list)
    detections: dict[str, list[Detection]] = field(default_factory=dict)  # source path -> the drawn detections
    metrics: dict | None = None
    metrics_path: Path | None = None

    def summary(self) -> str:
        lines = [f"report of {self.run_folder}: {self.num_images} image(s), {self.num_detections} detection(s), "
                 f"{self.num_drawn} drawn"]
        for title, items in (("image(s) without usable outputs", self.missing), ("file(s) skipped", self.skipped)):
            if items:
                lines.append(f"{len(items)} {title}:")
                lines += [f"  {a}: {b}" for a, b in items[:LIST_LIMIT]]
                lines += [f"  ... and {len(items) - LIST_LIMIT} more"] if len(items) > LIST_LIMIT else []
        if self.unmatched:
            more = " ..." if len(self.unmatched) > LIST_LIMIT else ""
            lines.append(f"{len(self.unmatched)} image(s) not in the annotations (not scored): "
                         + ", ".join(self.unmatched[:LIST_LIMIT]) + more)
        lines += [f"note: {n}" for n in self.notes]
        if self.metrics is not None:
            lines.append(f"COCO AP {self.metrics['AP']:.4f}  AP50 {self.metrics['AP50']:.4f}  "
                         f"AP75 {self.metrics['AP75']:.4f} over {self.metrics['num_images']} image(s); "
                         f"metrics: {self.metrics_path}")
        lines.append(f"wrote {self.html_path}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Matching images to outputs, and boxes back to original pixels


def collect_images(image_file_pattern: str | list[str] | None, manifest: dict | None) -> tuple[list[ImageEntry],
                                                                                            list[tuple[str, str]]]:
    """The images to report (index None: numbered when decoded, see module doc) and the files skipped so far."""
    paths = match_files(image_file_pattern) if image_file_pattern else []  # image2bin's rule: sorted together
    if manifest is None:
        if not paths:
            raise FileNotFoundError(f"no files match --image_file_pattern {describe(image_file_pattern)}")
        return [ImageEntry(None, Path(p)) for p in paths], []
    by_name = {os.path.basename(p): p for p in paths}
    entries = []
    for m in manifest["images"]:
        source = Path(m["source"])
        if not source.is_file() and source.name in by_name:  # images moved since image2bin: find them by name
            source = Path(by_name[source.name])
        entries.append(ImageEntry(int(m["index"]), source, tuple(int(v) for v in m["original_size"]),
                                  tuple(float(v) for v in m["scale"])))
    return entries, [(s["source"], s["reason"]) for s in manifest.get("skipped", [])]


def letterbox_scale(original: tuple[int, int], target: tuple[float, float]) -> tuple[float, float]:
    """``spinenet image2bin``'s per-axis scale (resized / original) for ``original`` letterboxed into ``target``."""
    h, w = original
    s = min(target[0] / h, target[1] / w)
    return round(h * s) / h, round(w * s) / w


def effective_scale(image_info: np.ndarray, original: tuple[int, int],
                    bin_scale: tuple[float, float] | None) -> tuple[np.ndarray, str | None]:
    """(2,) y, x scale from original pixels to network pixels, and a note when it had to be inferred.

    ImageInfo row 0 is the size of the image the graph saw. If that is the original, row 2 is the whole
    scale (the seed's chain, where the bin held raw pixels). Otherwise the graph saw a letterboxed bin
    (``spinenet image2bin``; our exported graph then reports row 2 = 1), and the bin's own scale from the
    manifest (or, without one, image2bin's rule) multiplies row 2.
    """
    seen, row2 = image_info[0], image_info[2].astype(np.float64)
    if not np.all(row2 > 0):
        raise ValueError(f"ImageInfo row 2 (scale) is {row2.tolist()}, expected positive values")
    if np.allclose(seen, original, atol=0.5):
        return row2, None
    note = None
    if bin_scale is None:
        bin_scale = letterbox_scale(original, (float(seen[0]), float(seen[1])))
        note = (f"input size {list(original)} differs from ImageInfo's {seen.astype(int).tolist()}: assumed a "
                "spinenet image2bin letterbox (pass --manifest to be exact)")
    return row2 * np.asarray(bin_scale, np.float64), note


def boxes_to_original(boxes: np.ndarray, scale: np.ndarray, original: tuple[int, int]) -> np.ndarray:
    """(N, 4) yxyx network pixels -> original pixels: divide by the scale (row 2, not row 1), clip to the image."""
    out = boxes.astype(np.float64) / np.tile(scale, 2)
    h, w = original
    return np.clip(out, 0, [h, w, h, w])


# ----------------------------------------------------------------------------------------------------------
# Drawing and HTML


def class_name(label_map: dict[int, str], class_id: int) -> str:
    return label_map.get(class_id, f"id {class_id}")


def drawable_box(box: tuple[float, ...]) -> tuple[float, float, float, float]:
    """``box`` (ymin, xmin, ymax, xmax) with each pair in order, for drawing.

    The reference's decoder (+1 convention: ``ymax = ymin + h - 1``) gives ymax < ymin when a predicted height
    is under one pixel, and keeps such boxes: its evaluator passes them to COCO as they are (negative height),
    and its drawing (TF Object Detection API ``draw_bounding_box_on_image``) draws lines through the four
    corners, which never fails. PIL's ``rectangle`` refuses an inverted box, so the corners are put in order
    here; the detection itself is kept unchanged in tables, JSON and scoring, as in the reference.
    """
    y0, x0, y1, x1 = box
    return min(y0, y1), min(x0, x1), max(y0, y1), max(x0, x1)


def draw_detections(pixels: np.ndarray, detections: list[Detection]) -> Image.Image:
    """The image with one coloured box and a "name: 87%" label per detection (highest score drawn last)."""
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    side = max(image.size)
    width = max(1, round(side / 320))  # lines stay visible on large images and thin on tiny ones
    try:
        font = ImageFont.load_default(size=max(10, round(side / 50)))
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        font = ImageFont.load_default()
    for det in reversed(detections):
        colour = PALETTE[det.class_id % len(PALETTE)]
        y0, x0, y1, x1 = drawable_box(det.box)
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=width)
        label = f"{det.name}: {det.score:.0%}"
        l, t, r, b = draw.textbbox((0, 0), label, font=font)
        ty = y0 - (b - t) - 2 * width if y0 - (b - t) - 2 * width >= 0 else y0  # above the box if it fits
        draw.rectangle((x0, ty, x0 + (r - l) + 2 * width, ty + (b - t) + 2 * width), fill=colour)
        draw.text((x0 + width - l, ty + width - t), label, fill="black", font=font)
    return image


def _check_writable(folder: Path) -> None:
    ensure_writable_dir(folder, "the HTML report's folder")


# ----------------------------------------------------------------------------------------------------------
# The report


def write_report(output: str | os.PathLike, label_map_file: str | os.PathLike, output_html: str | os.PathLike,
                 image_file_pattern: str | list[str] | None = None, *, manifest: str | os.PathLike | None = None,
                 annotations: str | os.PathLike | None = None, max_boxes_to_draw: int = 10,
                 min_score_threshold: float = 0.05, display_threshold: float = 0.3,
                 use_normalized_coordinates: bool = False, label_map_format: str = "csv", verbose: bool = True,
                 allow_partial: bool = False, model: str | os.PathLike | None = None, source=None) -> ReportResult:
    """Render the msame outputs under ``output`` on their images into ``output_html``; see the module docstring.

    The page goes with a folder ``<html stem>_files/`` (pictures, thumbnails, data; :mod:`report_assets`), both
    written only once complete. The page holds every detection with score >= ``min_score_threshold`` and shows
    those >= its display threshold control (``display_threshold`` at first), at most ``max_boxes_to_draw`` boxes
    per image. ``use_normalized_coordinates``: boxes are [0, 1] fractions of the original image (the seed's flag).
    With ``annotations`` (COCO instances JSON) the outputs are scored with :class:`CocoEvaluator` (every
    detection), each detection is marked true / false positive at IoU 0.5 (:func:`report_analysis.match_image`),
    the 12-number summary is printed (``verbose``) and ``<html stem>_metrics.json`` is written beside the page.
    A run folder that ``spinenet infer`` did not finish is refused, or with ``allow_partial`` reported with a
    warning (:mod:`spinenet.deploy.run_state`). ``output`` may be an msame, ais_bench or ``spinenet infer``
    folder; ``model`` (the exported .onnx) is needed when its outputs are raw head maps, which are then
    post-processed here (:mod:`host_postprocess`). ``source`` (:mod:`report_sources`: ``spinenet evaluate``'s
    results.json, ``spinenet detect``'s output) replaces ``output`` and the images; without ``label_map_file`` its
    own class names are used.
    """
    started = time.perf_counter()
    if label_map_format != "csv":
        raise ValueError(f"--label_map_format {label_map_format!r} is not supported; the only format is 'csv' "
                         "(lines 'id:name')")
    if max_boxes_to_draw < 0:
        raise ValueError(f"--max_boxes_to_draw must be >= 0, got {max_boxes_to_draw}")
    if not 0 <= display_threshold <= 1:
        raise ValueError(f"--display_threshold must be within [0, 1], got {display_threshold}")
    html_path = Path(output_html)
    _check_writable(html_path.parent)  # before the (possibly long) work, not after it
    label_map = read_label_map(label_map_file) if label_map_file is not None else dict(source.label_map)
    outputs_in = source if source is not None else DetectionSource(output, model)
    run_folder = outputs_in.path
    partial_note = check_run_complete(run_folder, allow_partial)  # an interrupted `spinenet infer`: refuse or warn
    manifest_data = source.manifest if source is not None else read_manifest(manifest) if manifest else None
    if manifest_data is None and not image_file_pattern:
        raise ValueError("--image_file_pattern is required without --manifest")
    entries, skipped = collect_images(None if source is not None else image_file_pattern, manifest_data)
    result = ReportResult(html_path, run_folder, skipped=skipped,
                          notes=[*outputs_in.notes, *([partial_note] if partial_note else [])])
    evaluator, ids_by_name = None, {}
    if annotations:
        from spinenet.data.checks import check_by_file_name
        from spinenet.engine.evaluate import CocoEvaluator

        evaluator = CocoEvaluator(annotations)  # checked by spinenet.data.coco.load_coco_json: one-line errors
        ids_by_name = {os.path.basename(img["file_name"]): img["id"] for img in evaluator.coco_gt.dataset["images"]}
        result.notes += check_by_file_name(annotations, evaluator.coco_gt.dataset, {e.source.name for e in entries},
                                           label_map, f"--label_map_file {label_map_file}",
                                           f"--manifest {manifest}" if manifest else repr(image_file_pattern))
    threshold = max(display_threshold, min_score_threshold)  # nothing below the data's floor can be shown
    options = _DrawOptions(label_map, max_boxes_to_draw, min_score_threshold, threshold, use_normalized_coordinates)
    # Matches, COCO numbers and plots over every detection (score > 0), whatever the display threshold.
    analyzer = ReportAnalyzer(evaluator, label_map, score_threshold=threshold)
    used: set[str] = set()
    from tqdm import tqdm

    # Pictures and data go to a staging folder as they are made: memory stays flat, a failure leaves nothing.
    with ReportFolder(html_path) as folder:
        data = PageData(folder)
        next_index = 0
        for entry in tqdm(entries, desc="report", unit="img", disable=not verbose or len(entries) < 20):
            try:
                pixels = load_rgb(entry.source)
            except ValueError as e:
                result.skipped.append((str(entry.source), str(e).split(": ", 1)[-1]))
                continue
            if entry.index is None:
                entry.index, next_index = next_index, next_index + 1
            used.add(entry.output_name)
            try:
                image = _report_image(outputs_in, entry, pixels, options, result)
            except (FileNotFoundError, ValueError) as e:
                result.missing.append((str(entry.source), str(e)))
                continue
            image_id = ids_by_name.get(entry.source.name) if evaluator is not None else None
            if evaluator is not None and image_id is None:
                result.unmatched.append(entry.source.name)
            analysed = analyzer.process(entry.source.name, image.scored, image_id)
            gts = analysed.gts if analysed.match is not None else None
            try:
                has_thumb = folder.add_picture(len(data.index), pixels)
                data.add(entry.source.name, entry.output_name, image.size, image.dets, gts, analysed.match,
                         len(image.scored), image.notes, has_thumb)
            except OSError as e:
                raise _write_error(html_path, e) from e
        if result.num_images == 0:
            source = f"--manifest {manifest}" if manifest else f"--image_file_pattern {describe(image_file_pattern)}"
            first = f" (first: {(result.missing or result.skipped)[0][1]})" if result.missing or result.skipped else ""
            raise ValueError(f"nothing to report from {run_folder} and {source}: {len(result.missing)} image(s) "
                             f"without usable outputs, {len(result.skipped)} file(s) skipped{first}")
        extra = outputs_in.names() - used
        if extra:
            names = ", ".join(sorted(extra)[:5]) + (" ..." if len(extra) > 5 else "")
            result.notes.append(f"{len(extra)} output set(s) in the folder have no image ({names}): does the image "
                                "pattern match the one given to image2bin?")
        analysis = analyzer.finish(verbose)
        if evaluator is not None:
            if analysis.coco is not None:
                result.metrics = analysis.metrics
            else:
                result.notes.append(f"no reported image is named in {annotations}: mAP not computed")
        classes = {c: class_name(label_map, c) for c in sorted(data.classes)}
        data.finish({"threshold": threshold, "minScore": min_score_threshold, "maxBoxes": max_boxes_to_draw,
                     "annotated": evaluator is not None, "classes": classes, "palette": list(PALETTE)})
        pattern = describe(image_file_pattern) if image_file_pattern else "(from the manifest)"
        summary = summary_section(result, pattern, outputs_in.run.timing(), time.perf_counter() - started, threshold)
        metrics = metrics_section(analysis)
        try:
            folder.commit(lambda f: write_page(
                f, title=run_folder.name, summary=summary, metrics=metrics, classes=classes,
                annotated=evaluator is not None, threshold=threshold, min_score=min_score_threshold,
                dir_name=folder.dir_name))
            if result.metrics is not None:
                result.metrics_path = html_path.with_name(f"{html_path.stem}_metrics.json")
                atomic_write(result.metrics_path, lambda f: json.dump(strict_json(
                    {**result.metrics, "annotations": str(annotations), "run_folder": str(run_folder),
                     "unmatched_images": result.unmatched, "analysis": analysis.to_json()}), f, indent=1,
                    allow_nan=False))
        except OSError as e:
            raise _write_error(html_path, e) from e
    return result


def _write_error(html_path: Path, e: OSError) -> ValueError:
    return ValueError(f"cannot write the HTML report into folder {html_path.parent}: {e.strerror or e} (nothing "
                      "was left half-written; free space or choose another --output_html)")


@dataclass
class _DrawOptions:
    label_map: dict[int, str]
    max_boxes_to_draw: int
    min_score_threshold: float
    display_threshold: float
    use_normalized_coordinates: bool


@dataclass
class _Image:
    """One image's part of the page: original size, its detections for the page and for scoring, notes."""

    size: tuple[int, int]
    dets: list[Detection]  # score >= --min_score_threshold, best first, boxes clipped to the image (the page)
    scored: list[Detection]  # every valid one (score > 0), in the same order, boxes as the evaluator sees them
    notes: list[str]


def _report_image(source: DetectionSource, entry: ImageEntry, pixels: np.ndarray, opt: _DrawOptions,
                  result: ReportResult) -> _Image:
    """One image's detections, for the page and for scoring.

    Raises FileNotFoundError / ValueError (the caller counts the image as missing) when its outputs are absent
    or unusable.
    """
    outputs = source.read(entry.output_name)
    if outputs is None:
        pattern = "_output_<k>.txt|bin" if source.run.tool == "msame" else "_<k>.bin|npy|txt"
        raise FileNotFoundError(f"no {entry.output_name}{pattern} in {source.path}")
    if outputs["NumDetections"].shape[0] != 1:
        raise ValueError(f"{entry.output_name}: outputs hold a batch of {outputs['NumDetections'].shape[0]}; "
                         "one image per input file expected")
    original = entry.original_size or tuple(pixels.shape[:2])
    notes = []
    if tuple(pixels.shape[:2]) != original:
        notes.append(f"the image is {pixels.shape[1]}x{pixels.shape[0]} but the manifest says "
                     f"{original[1]}x{original[0]}; boxes follow the manifest")
    boxes, classes = outputs["DetectionBoxes"][0], outputs["DetectionClasses"][0]  # (100, 4) yxyx, (100,)
    scores, info = outputs["DetectionScores"][0], outputs["ImageInfo"][0]  # (100,), (4, 2)
    if opt.use_normalized_coordinates:  # fractions of the original image: scale = 1 / size
        scale = 1.0 / np.asarray(original, np.float64)
    else:
        try:
            scale, note = effective_scale(info, original, entry.bin_scale)
        except ValueError as e:
            raise ValueError(f"{entry.output_name}_output_4: {e}") from e
        notes += [note] if note else []
    # NumDetections is not used, as in the seed: padding slots hold score -1, and the evaluator keeps score > 0.
    valid = np.flatnonzero(scores > 0)
    valid = valid[np.argsort(-scores[valid], kind="stable")]  # best first: the page keeps a prefix
    unclipped = scored_boxes(boxes[valid], scale)  # as `spinenet evaluate` scores them: not clipped
    names = [class_name(opt.label_map, int(c)) for c in classes[valid]]
    scored = [Detection(int(c), n, float(s), tuple(b))
              for c, n, s, b in zip(classes[valid], names, scores[valid], unclipped.tolist(), strict=True)]
    keep = int(np.sum(scores[valid] >= opt.min_score_threshold))
    clipped = boxes_to_original(boxes[valid[:keep]], scale, original)
    dets = [Detection(d.class_id, d.name, d.score, tuple(float(v) for v in b))
            for d, b in zip(scored[:keep], clipped, strict=True)]
    result.detections[str(entry.source)] = dets
    result.num_images += 1
    result.num_detections += len(scored)
    result.num_drawn += min(opt.max_boxes_to_draw, sum(d.score >= opt.display_threshold for d in dets))
    return _Image(original, dets, scored, notes)
