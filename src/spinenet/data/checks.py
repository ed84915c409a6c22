"""Checks that an evaluation is about what the user thinks it is, shared by ``evaluate``, ``train`` and ``report``.

An evaluation over no images prints AP 0.0, and one over a few of them prints a number about those few; a model
whose class ids mean other things than the annotations' scores the wrong pairs. None of these raise on their own
anywhere downstream, so they are checked here, once, before the work.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger("spinenet")

__all__ = ["check_by_file_name", "check_images_found", "label_map_difference", "warn"]

MAX_SHOWN = 8  # differing label-map entries listed before "..."


def warn(message: str) -> None:
    """A one-line warning on stderr (through logging, so tests and callers can capture it)."""
    logger.warning("warning: %s", message)


def check_images_found(ann_file: str | os.PathLike, annotated: int, found: int, where: str) -> str | None:
    """Raise when none of the ``annotated`` images was ``found``; return a warning line when only some were.

    ``where`` names the folder or the image source the images were looked for in (it goes into the message).
    """
    if annotated == 0:
        raise ValueError(f"{ann_file} lists no images ('images' is empty): nothing to evaluate; pass the "
                         "annotation file of the images to score")
    if found == 0:
        raise ValueError(f"none of the {annotated} images listed in {ann_file} was found in {where}: is that the "
                         "folder (or pattern) of these annotations?")
    if found < annotated:
        return (f"only {found} of the {annotated} images listed in {ann_file} were found in {where}; "
                f"only those {found} are used")
    return None


def label_map_difference(model: dict[int, str], data: dict[int, str], model_name: str,
                         data_name: str) -> str | None:
    """A warning line showing both sides where two id -> name maps disagree (None if they agree).

    An empty ``model`` map (a converted checkpoint that carries none) is no disagreement: there is nothing to
    compare. Names are compared exactly; ids only one side has are listed as such.
    """
    if not model or not data or model == data:
        return None
    diffs = []
    for cid in sorted(set(model) | set(data)):
        a, b = model.get(cid), data.get(cid)
        if a != b:
            diffs.append(f"id {cid}: {a!r} vs {b!r}" if a is not None and b is not None
                         else f"id {cid}: {a!r} only in {model_name}" if b is None
                         else f"id {cid}: {b!r} only in {data_name}")
    shown = "; ".join(diffs[:MAX_SHOWN]) + (f"; ... ({len(diffs)} differences)" if len(diffs) > MAX_SHOWN else "")
    return (f"the label map of {model_name} ({len(model)} classes) differs from {data_name} ({len(data)} "
            f"categories): {shown}. Class ids are scored as the annotations name them.")


def check_by_file_name(ann_file: str | os.PathLike, doc: dict, names: set[str], label_map: dict[int, str],
                       label_map_name: str, where: str) -> list[str]:
    """``spinenet report --annotations``'s checks before scoring: the annotated images are matched by base file
    name against ``names`` (the images reported, found through ``where``). None matched: an error; some: a
    warning line with the count; a ``label_map`` naming classes otherwise than the categories: a warning line."""
    images = doc["images"]
    found = sum(os.path.basename(str(img["file_name"])) in names for img in images)
    categories = {int(c["id"]): str(c["name"]) for c in doc["categories"]}
    notes = [check_images_found(ann_file, len(images), found, where),
             label_map_difference(label_map, categories, label_map_name, f"the categories of {ann_file}")]
    return [n for n in notes if n]
