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
    """Read a UTF-8 label map (a leading byte-order mark, as Windows editors write, is accepted)."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); the label "
                         "map must be UTF-8: re-save it as UTF-8, e.g. `iconv -f latin1 -t utf-8`") from e
    return parse_label_map(text, str(path))


def coco_label_map() -> dict[int, str]:
    """The 80 COCO categories under their original ids 1..90."""
    res = resources.files("spinenet") / "data" / "coco_label_map.csv"
    return parse_label_map(res.read_text(encoding="utf-8"), "coco_label_map.csv")
