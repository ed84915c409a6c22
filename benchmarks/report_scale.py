"""``spinenet report`` at scale: a 5,000-image page, its generation time and its first view in headless Chromium.

    python benchmarks/report_scale.py [--images 5000] [--work /tmp/spinenet_report_scale] [--runs 3] [--full]

Inputs (made once under ``--work``, reused afterwards; not timed): ``spinenet synth``'s generator writes N
held-out images of 128 px (10 % of them odd sizes) with their COCO annotations; the detections are
**synthetic, derived from the ground truth**, not from a model: each object is found with probability 0.9 as a
box jittered by up to 10 % of its size (score 0.4-1.0; 5 % of them with a wrong class), and each image gets 0-3
false positives (random boxes, score 0.05-0.6) and 0-20 low-score clutter boxes (score 0.01-0.1) — with
``--full``, clutter up to all 100 output slots, the worst case a real graph gives — written as an msame folder
(five BIN outputs per image, ImageInfo of the raw image as the seed's graph writes it).

Timed: ``write_report`` with ``--annotations`` (reading 5 outputs per image, decoding every image, COCO
evaluation, per-image matching, plots, writing pictures, thumbnails and data) — target <= 120 s on this CPU.
Then the first view: Chromium opens the page from disk (``--dump-dom``, real time, no virtual time), with a
probe that records, at the load event (which waits for the index data, the first detail page's data and its
pictures), ``performance.now()`` and how many detail cards are drawn with decoded pictures; the Chromium
process's wall time (browser start to exit) is reported beside it — target <= 3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

GENERATION_TARGET_S, FIRST_VIEW_TARGET_S = 120.0, 3.0

PROBE = """<script>window.addEventListener('load', () => {
  const nav = performance.getEntriesByType('navigation')[0];
  const cards = [...document.querySelectorAll('#detail .card')];
  const out = {now: performance.now(), dcl: nav.domContentLoadedEventEnd, load: nav.loadEventStart,
               cards: cards.length,
               decoded: cards.filter(c => c.querySelector('.pic img').naturalWidth > 0).length,
               boxes: document.querySelectorAll('#detail svg rect.det').length,
               tiles: document.querySelectorAll('#index .tile').length,
               thumbs: [...document.querySelectorAll('#index .tile img')].filter(i => i.naturalWidth > 0).length};
  const pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});</script>"""


def make_inputs(work: Path, num_images: int, seed: int = 1, full: bool = False) -> tuple[Path, Path, Path]:
    """Images + annotations (spinenet synth's generator) and a synthetic msame folder; returns (images dir,
    annotation file, run folder). Reused when already there."""
    from spinenet.data.synthetic import make_synthetic_dataset
    from spinenet.deploy.msame_format import write_output

    data, run = work / "data", work / "out" / "20261205_120000"
    ann_file = data / "annotations" / "instances_val.json"
    done = work / "inputs.done"
    if done.exists() and json.loads(done.read_text()) == {"images": num_images, "seed": seed, "full": full}:
        return data / "val", ann_file, run
    shutil.rmtree(work, ignore_errors=True)
    t0 = time.perf_counter()
    make_synthetic_dataset(data, num_train=0, num_val=num_images, image_size=128, seed=seed, size_range=(0.15, 0.6),
                           progress=False)
    ann = json.loads(ann_file.read_text())
    by_image = {img["id"]: [] for img in ann["images"]}
    for a in ann["annotations"]:
        by_image[a["image_id"]].append(a)
    class_ids = sorted(c["id"] for c in ann["categories"])
    rng = np.random.default_rng(seed)
    run.mkdir(parents=True)
    for i, img in enumerate(sorted(ann["images"], key=lambda m: m["file_name"])):
        h, w = img["height"], img["width"]
        rows = []  # (ymin, xmin, ymax, xmax, class, score)
        for a in by_image[img["id"]]:
            if rng.random() > 0.9:
                continue  # missed
            x, y, bw, bh = a["bbox"]
            jx, jy = rng.uniform(-0.1, 0.1, 2) * (bw, bh)
            sx, sy = 1 + rng.uniform(-0.1, 0.1, 2)
            cls = a["category_id"] if rng.random() > 0.05 else int(rng.choice(class_ids))
            rows.append((y + jy, x + jx, y + jy + bh * sy, x + jx + bw * sx, cls, rng.uniform(0.4, 1.0)))
        fps = int(rng.integers(0, 4))
        clutter = 100 - len(rows) - fps if full else int(rng.integers(0, 21))
        for lo, hi, n in ((0.05, 0.6, fps), (0.01, 0.1, clutter)):
            for _ in range(n):
                y0, x0 = rng.uniform(0, h * 0.8), rng.uniform(0, w * 0.8)
                rows.append((y0, x0, y0 + rng.uniform(4, h * 0.4), x0 + rng.uniform(4, w * 0.4),
                             int(rng.choice(class_ids)), rng.uniform(lo, hi)))
        rows.sort(key=lambda r: -r[5])
        boxes = np.zeros((1, 100, 4), np.float32)
        classes = np.zeros((1, 100), np.int32)
        scores = np.full((1, 100), -1.0, np.float32)
        for j, r in enumerate(rows[:100]):
            boxes[0, j], classes[0, j], scores[0, j] = np.clip(r[:4], 0, [h, w, h, w]), r[4], r[5]
        info = np.array([[[h, w], [128, 128], [1, 1], [0, 0]]], np.float32)  # the graph saw the raw image
        arrays = [np.array([min(len(rows), 100)], np.int32), boxes, classes, scores, info]
        for k, a in enumerate(arrays):
            write_output(run, f"{i:05d}", k, a, "BIN")
    done.write_text(json.dumps({"images": num_images, "seed": seed, "full": full}))
    print(f"inputs: {num_images} images + synthetic detections in {time.perf_counter() - t0:.0f} s (not timed)")
    return data / "val", ann_file, run


def first_view(chromium: str, html: Path, profile: Path) -> dict:
    """Open a copy of the page with the probe; the probe's findings and the browser process's wall time."""
    copy = html.with_name(f"probe_{html.name}")
    copy.write_text(html.read_text().replace("</body>", PROBE + "</body>"))
    shutil.rmtree(profile, ignore_errors=True)
    t0 = time.perf_counter()
    r = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        "--window-size=1400,1000", f"--user-data-dir={profile}", "--dump-dom", copy.as_uri()],
                       capture_output=True, text=True, timeout=120)
    wall = time.perf_counter() - t0
    if '<pre id="probe">' not in r.stdout:
        raise SystemExit(f"the probe did not report:\n{r.stderr[-2000:]}")
    out = json.loads(r.stdout.split('<pre id="probe">', 1)[1].split("</pre>", 1)[0].replace("&quot;", '"'))
    return {**out, "wall": wall}


def folder_size(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--work", default="/tmp/spinenet_report_scale")
    parser.add_argument("--runs", type=int, default=3, help="first-view measurements (median reported)")
    parser.add_argument("--full", action="store_true", help="100 detections per image (clutter fills the slots)")
    args = parser.parse_args()
    from spinenet.deploy.benchmark import lscpu_fields
    from spinenet.deploy.report import write_report

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("needs Debian's chromium (apt-get install chromium)")
    work = Path(args.work)
    images, ann_file, run = make_inputs(work, args.images, full=args.full)
    labels = work / "labels.csv"
    cats = json.loads(ann_file.read_text())["categories"]
    labels.write_text("".join(f"{c['id']}:{c['name']}\n" for c in cats))
    html = work / "page" / "report.html"
    shutil.rmtree(html.parent, ignore_errors=True)
    html.parent.mkdir(parents=True)
    t0 = time.perf_counter()
    result = write_report(run, labels, html, str(images / "*.jpg"), annotations=ann_file, verbose=False)
    generation = time.perf_counter() - t0
    n_files, n_bytes = folder_size(html.with_name("report_files"))
    views = [first_view(chromium, html, work / "profile") for _ in range(args.runs)]
    load = statistics.median(v["load"] for v in views) / 1000
    wall = statistics.median(v["wall"] for v in views)
    cpu = lscpu_fields()
    print(f"CPU: {cpu.get('Model name', '?')}, {os.cpu_count()} cores; python {sys.version.split()[0]}")
    print(f"page: {result.num_images} images, {result.num_detections} detections, AP {result.metrics['AP']:.3f}; "
          f"report.html {html.stat().st_size / 1e6:.2f} MB, report_files/ {n_files} files, {n_bytes / 1e6:.1f} MB")
    print(f"first view (median of {len(views)}): {views[0]['cards']} detail cards, {views[0]['decoded']} pictures "
          f"decoded, {views[0]['boxes']} boxes; index: {views[0]['tiles']} tiles made (batches as it scrolls), "
          f"{views[0]['thumbs']} thumbnails in view loaded, at the load event")
    rows = [("page generation (write_report)", generation, GENERATION_TARGET_S),
            ("first view: load event (performance.now)", load, FIRST_VIEW_TARGET_S),
            ("first view: DOMContentLoaded", statistics.median(v["dcl"] for v in views) / 1000, FIRST_VIEW_TARGET_S),
            ("first view: chromium start to exit (wall)", wall, FIRST_VIEW_TARGET_S)]
    print(f"\n| {'measure':<44} | {'seconds':>8} | {'target':>7} | {'of target':>9} |")
    print(f"|{'-' * 46}|{'-' * 10}|{'-' * 9}|{'-' * 11}|")
    for name, value, target in rows:
        print(f"| {name:<44} | {value:8.2f} | {target:7.0f} | {value / target:9.0%} |")
    return 0 if generation <= GENERATION_TARGET_S and wall <= FIRST_VIEW_TARGET_S else 1


if __name__ == "__main__":
    raise SystemExit(main())
