"""The files beside ``spinenet report``'s page: ``<stem>_files/`` with the pictures, thumbnails and data scripts.

Why files beside the page and not one self-contained page: 5,000 embedded JPEGs made a ~55 MB page that a browser
parses before it shows anything. Here the page itself holds only the tables, the plots and one thumbnail tag per
image (``loading="lazy"``), and the detail view fetches the data of the images it shows on demand.

Why ``<script src>`` data files and not JSON: a page opened from disk (``file://``) may not ``fetch()`` a JSON file
in Chromium, but it may load scripts. Every data file is plain JSON wrapped in a function call, written by
:func:`js_json`, which escapes ``<``, ``>`` and ``&`` so that no label or file name can close a ``<script>`` or
start markup; the viewer puts text into the page only through ``textContent``.

Atomicity: everything is written into a staging folder beside the page (``.<stem>_files.XXXX.tmp``) and renamed into
place at the end, together with the page (:meth:`ReportFolder.commit`); a failed or interrupted run leaves the
previous report (if any) as it was and no half-written folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from spinenet.io_checks import atomic_write, current_umask

CHUNK = 50  # images per detail data file: a detail page of 20 loads one to a few small files
THUMB_SIDE = 160  # longest side of an index thumbnail (shown in 128 css px tiles: sharp on 1.25x screens)
STORED_SIDE = 1280  # longest side of a stored picture; larger originals are shrunk (the page shows at most 512)
DISPLAY_SIDE = 512  # longest side, in css px, at which the detail view shows a picture
STATIC = ("viewer.js",)  # package files copied into the folder (spinenet/deploy/report_static)


def js_json(value: object) -> str:
    """JSON that is also safe inside an HTML ``<script>``: ``<``, ``>``, ``&`` and non-ASCII as ``\\uXXXX``."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def display_size(height: int, width: int) -> tuple[int, int, bool]:
    """(height, width) in css px at which the detail view shows an image, and whether that enlarges it.

    Small images are enlarged by a whole factor (crisp, even pixels with ``image-rendering: pixelated``) up to
    :data:`DISPLAY_SIDE`; images over it are shrunk to it; those between are shown as they are.
    """
    side = max(height, width, 1)
    if side > DISPLAY_SIDE:
        s = DISPLAY_SIDE / side
        return max(1, round(height * s)), max(1, round(width * s)), False
    factor = DISPLAY_SIDE // side if side * 2 <= DISPLAY_SIDE else 1
    return height * factor, width * factor, factor > 1


def picture_name(k: int) -> str:
    return f"img/{k:05d}.jpg"


def thumb_name(k: int) -> str:
    return f"thumb/{k:05d}.jpg"


class ReportFolder:
    """The staging folder of one report; use as a context manager (an exception removes it), then :meth:`commit`."""

    def __init__(self, html_path: Path):
        self.html_path = html_path
        self.final = html_path.with_name(f"{html_path.stem}_files")
        if self.final.exists() and not self.final.is_dir():
            raise ValueError(f"cannot write the HTML report: {self.final} is a file, where the report's folder of "
                             "pictures and data goes; remove it or choose another --output_html")
        self.staging = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.", suffix=".tmp", dir=html_path.parent))
        for sub in ("img", "thumb", "data"):
            (self.staging / sub).mkdir()

    def __enter__(self) -> ReportFolder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)  # after a commit it is gone already

    @property
    def dir_name(self) -> str:
        return self.final.name

    def add_picture(self, k: int, pixels: np.ndarray) -> bool:
        """Store image ``k`` (JPEG) and, when it is large, its thumbnail; returns whether a thumbnail was made."""
        image = Image.fromarray(pixels)
        if max(image.size) > STORED_SIDE:
            image.thumbnail((STORED_SIDE, STORED_SIDE))
        # Small pictures are enlarged on the page, so their JPEG artefacts would be too: keep them finer.
        image.save(self.staging / picture_name(k), format="JPEG", quality=95 if max(image.size) <= 256 else 88)
        if max(image.size) <= THUMB_SIDE * 3 // 2:
            return False  # the picture itself serves as the thumbnail
        image.thumbnail((THUMB_SIDE, THUMB_SIDE))
        image.save(self.staging / thumb_name(k), format="JPEG", quality=80)
        return True

    def write_script(self, name: str, call: str, *args: object) -> None:
        """``data/<name>``: the JavaScript ``call(args...);`` with each argument as :func:`js_json`."""
        text = f"{call}({','.join(js_json(a) for a in args)});\n"
        (self.staging / name).write_text(text, encoding="ascii")

    def commit(self, write_page) -> None:
        """Write the page with ``write_page(file)`` and put the folder and the page in place.

        Order: the page goes to a temporary file first; only once it is complete is the folder renamed into
        place (the previous folder set aside and then removed), and then the page renamed over the old one.
        """
        for name in STATIC:
            data = resources.files("spinenet.deploy").joinpath("report_static", name).read_bytes()
            (self.staging / name).write_bytes(data)
        os.chmod(self.staging, 0o777 & ~current_umask())  # mkdtemp's folder is private (0700)

        def write(f) -> None:
            write_page(f)
            f.flush()
            old = None
            if self.final.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.old.", dir=self.html_path.parent))
                os.replace(self.final, old / "files")
            try:
                os.replace(self.staging, self.final)
            except BaseException:
                if old is not None:  # put the previous report's folder back
                    os.replace(old / "files", self.final)
                raise
            finally:
                if old is not None:
                    shutil.rmtree(old, ignore_errors=True)

        atomic_write(self.html_path, write)


class PageData:
    """The viewer's data (see the comment at the top of ``viewer.js``), written chunk by chunk as images come.

    ``dets`` of an image: :class:`~spinenet.deploy.report.Detection` in descending score order, boxes in original
    pixels; ``gts``: ``((x0, y0, x1, y1), class_id, iscrowd)`` or None (image not annotated); ``match``: the
    :class:`~spinenet.deploy.report_analysis.ImageMatch` of every valid detection (of which ``dets`` is the
    first part) to ``gts``.
    """

    def __init__(self, folder: ReportFolder):
        self.folder = folder
        self.index: list[list] = []
        self.records: list[dict] = []
        self.classes: set[int] = set()

    def add(self, name: str, output_name: str, size: tuple[int, int], dets: list, gts: list | None, match,
            num_valid: int, notes: list[str], has_thumb: bool) -> None:
        k = len(self.index)
        h, w = size
        dh, dw, enlarged = display_size(h, w)
        det_rows, flat = [], []
        for j, d in enumerate(dets):
            flag, gt, iou = -1, -1, 0.0
            if match is not None:
                gt, iou = match.det_gt[j], match.det_iou[j]
                flag = 2 if match.det_ignored[j] else int(match.det_tp[j])
            s = round(d.score, 6)  # the page compares these with its threshold, as stored
            det_rows.append([d.class_id, s, *(round(v, 2) for v in d.box), gt, flag, round(iou, 4)])
            flat += [d.class_id, s, flag]
            self.classes.add(d.class_id)
        gt_rows = None
        if gts is not None:  # matched by a detection below --min_score_threshold: missed at any shown threshold
            gt_rows = [[c, round(y0, 2), round(x0, 2), round(y1, 2), round(x1, 2), int(crowd),
                        by if by < len(dets) else -1]
                       for ((x0, y0, x1, y1), c, crowd), by in zip(gts, match.gt_matched_by, strict=True)]
            self.classes.update(g[1] for g in gts)
        num_gt = -1 if gts is None else sum(1 for g in gts if not g[2])
        self.index.append([num_gt, sorted({g[1] for g in gts or ()}), flat, name, w, h, int(has_thumb)])
        self.records.append({"k": k, "name": name, "out": output_name, "w": w, "h": h, "dw": dw, "dh": dh,
                             "px": int(enlarged), "src": picture_name(k), "notes": notes, "n": num_valid,
                             "dets": det_rows, "gts": gt_rows})
        if len(self.records) == CHUNK:
            self._flush()

    def _flush(self) -> None:
        if self.records:
            n = self.records[0]["k"] // CHUNK
            self.folder.write_script(f"data/{n:04d}.js", "SPINENET_REPORT_CHUNK", n, self.records)
            self.records = []

    def finish(self, settings: dict) -> None:
        """The last chunk and ``index.js`` (``settings``: threshold, class names, ... for the viewer)."""
        self._flush()
        data = {**settings, "dir": self.folder.dir_name, "chunk": CHUNK, "images": self.index}
        (self.folder.staging / "index.js").write_text(f"window.SPINENET_REPORT = {js_json(data)};\n", encoding="ascii")
