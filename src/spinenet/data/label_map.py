"""Label maps in the reference's ``id:name`` CSV format (``datasets/coco_label_map.csv``, spec §8)."""

from __future__ import annotations

import os
from importlib import resources


def parse_label_map(text: str, source: str = "<label map>") -> dict[int, str]:
    """Parse ``id:name`` lines (blank lines and ``#`` comments ignored); errors name the line."""
    out: dict[int, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, name = line.partition(":")
        if not sep or not key.strip().isdigit() or not name.strip():
            raise ValueError(f"{source}:{lineno}: expected 'id:name' with an integer id, got {raw!r}")
        cid = int(key)
        if cid in out:
            raise ValueError(f"{source}:{lineno}: id {cid} appears twice ({out[cid]!r} and {name.strip()!r})")
        out[cid] = name.strip()
    if not out:
        raise ValueError(f"{source}: no 'id:name' lines found")
    return out


def read_label_map(path: str | os.PathLike) -> dict[int, str]:
    with open(path, encoding="utf-8") as f:
        return parse_label_map(f.read(), str(path))


def coco_label_map() -> dict[int, str]:
    """The 80 COCO categories under their original ids 1..90."""
    res = resources.files("spinenet") / "data" / "coco_label_map.csv"
    return parse_label_map(res.read_text(encoding="utf-8"), "coco_label_map.csv")
