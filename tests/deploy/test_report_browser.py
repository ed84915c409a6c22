"""The HTML report opened in a real browser: headless Chromium (Debian's package, installed here if missing).

A probe script, appended to a copy of the page, waits for the viewer, walks through its detail pages, drives the
threshold control as a user would (set the value, dispatch 'input') and leaves what it saw in the DOM for
``--dump-dom``. Expected values come from the sources (annotation file, output files), not from the page's data.
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_report import label_map, make_images, run_folder, write_seed_outputs  # noqa: F401 (fixture)

from spinenet.cli import main
from spinenet.data.synthetic import make_synthetic_dataset
from spinenet.deploy.report import write_report

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
CKPT = ROOT / "demo" / "shapes49s_fp16.pt"

# Shared by both probes: the cards of the detail page on show, once their pictures are decoded.
CARDS = r"""
async function cards() {
  return Promise.all([...document.querySelectorAll('#detail .card')].map(async (c) => {
    const img = c.querySelector('.pic img');
    let decoded = false;
    try { await img.decode(); decoded = img.naturalWidth > 0; } catch (e) { decoded = false; }
    const q = (s) => c.querySelectorAll(s).length;
    const [, , W, H] = c.querySelector('.pic svg').getAttribute('viewBox').split(' ').map(Number);
    const outside = [...c.querySelectorAll('svg .label rect')].filter((r) => {
      const [x, y, w, h] = ['x', 'y', 'width', 'height'].map((a) => Number(r.getAttribute(a)));
      return x < -1e-6 || y < -1e-6 || x + w > W + 1e-6 || y + h > H + 1e-6;
    }).length;
    const colours = [...c.querySelectorAll('svg rect.det')].map((r) => [r.querySelector('title').textContent
      .replace(/ \d+\.\d%.*/, ''), r.getAttribute('stroke')]);
    return {k: Number(c.dataset.k), name: c.querySelector('h3').firstChild.textContent.trim(), decoded,
            shown: [img.getBoundingClientRect().width, img.getBoundingClientRect().height],
            natural: [img.naturalWidth, img.naturalHeight], pixelated: getComputedStyle(img).imageRendering,
            dets: q('svg rect.det'), tp: q('svg rect.det.tp'), fp: q('svg rect.det.fp'), gts: q('svg rect.gt'),
            missed: q('svg rect.gt.missed'), labels: [...c.querySelectorAll('svg .label text')].map(t => t.textContent),
            counts: c.querySelector('.counts').textContent, outside, colours,
            rows: [...c.querySelectorAll('table.dets tbody tr')].map(r => [...r.cells].map(x => x.textContent))};
  }));
}
function finish(out) {
  const pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}
"""

PROBE_SMALL = "<script>" + CARDS + """
window.addEventListener('load', async () => {
  const out = {errors: []};
  try {
    await window.spinenetReport.rendered();
    out.cards = await cards();
    out.pwned = window.pwned === 1;
    out.injected = document.querySelectorAll('#detail img:not(.pic img), #detail script').length;
  } catch (e) { out.errors.push(String(e.stack || e)); }
  finish(out);
});</script>"""

PROBE_FULL = "<script>" + CARDS + """
window.addEventListener('load', async () => {
  const out = {pages: [], errors: []};
  const R = window.spinenetReport;
  const go = async (where) => { document.querySelector('.pager [data-go=' + where + ']').click(); await R.rendered(); };
  const setThreshold = async (v) => {
    const num = document.getElementById('thr-num');
    num.value = v;
    num.dispatchEvent(new Event('input', {bubbles: true}));
    await R.rendered();
  };
  const drawn = () => document.querySelectorAll('#detail svg rect.det').length;
  try {
    await R.rendered();
    out.threshold = Number(document.getElementById('thr-num').value);
    for (let p = 0, n = R.pages(); p < n; p++) {
      out.pages.push(await cards());
      if (p < n - 1) await go('next');
    }
    await go('first');
    out.first = out.pages[0].map(c => c.name);
    out.at = {'0.30': drawn()};
    await setThreshold('0.9');
    out.at['0.90'] = drawn();
    out.badges09 = [...document.querySelectorAll('#index .tile .badge')].slice(0, 20).map(b => b.textContent);
    await setThreshold('0.3');
    out.at['0.30 again'] = drawn();
    out.tiles = [...document.querySelectorAll('#index .tile')].map(t => t.querySelector('span[title]').textContent);
    out.plots = {pr: [...document.querySelectorAll('svg.plot.pr-curve')].map(s => s.dataset.iou),
                 prLines: document.querySelectorAll('svg.plot.pr-curve polyline').length,
                 perClass: document.querySelectorAll('svg.plot.per-class-ap').length,
                 perClassRows: [...document.querySelectorAll('table.per-class tbody tr')]
                   .map(r => r.cells[0].textContent),
                 histogram: document.querySelectorAll('svg.plot.score-histogram').length,
                 confusion: document.querySelectorAll('svg.plot.confusion-matrix').length,
                 coco: [...document.querySelectorAll('table.metrics td')].map(td => td.textContent)};
  } catch (e) { out.errors.push(String(e.stack || e)); }
  finish(out);
});</script>"""

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


@pytest.fixture(scope="module")
def chromium():
    path = shutil.which("chromium")
    if path is None:  # the test set-up installs Debian's chromium itself (CI runs as root)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=900, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium", "fonts-dejavu-core"], check=True,
                       timeout=1800, env=env, capture_output=True)
        path = shutil.which("chromium")
    assert path, "Debian's chromium package did not install"
    return path


def run_probe(chromium, html: Path, probe: str, tmp: Path) -> dict:
    """Open a copy of ``html`` (beside it, so its folder resolves) with ``probe`` appended; return its findings."""
    copy = html.with_name(f"probe_{html.name}")  # same folder: its links to <stem>_files/ still resolve
    copy.write_text(html.read_text().replace("</body>", probe + "</body>"))
    # Virtual time only runs while the page is idle, so a large budget costs nothing once the probe is done.
    for _ in range(2):  # a second try when a loaded machine cut the first short
        r = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'profile'}",
                            "--virtual-time-budget=600000", "--dump-dom", copy.as_uri()],
                           capture_output=True, text=True, timeout=180)
        if '<pre id="probe">' in r.stdout:
            break
    assert '<pre id="probe">' in r.stdout, r.stderr[-2000:]
    text = r.stdout.split('<pre id="probe">', 1)[1].split("</pre>", 1)[0]
    out = json.loads(text.replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))
    assert out["errors"] == [], out["errors"]
    return out


def test_every_image_and_its_boxes_render(chromium, tmp_path, label_map):  # noqa: F811
    labels = tmp_path / "hostile.csv"  # a class name that would run script if it ever became markup
    labels.write_text("1:person\n2:<img src=x onerror=window.pwned=1>\n")
    pattern = make_images(tmp_path / "images", ["a.jpg", "b.jpg", "c.jpg"])
    write_seed_outputs(run_folder(tmp_path), "00000", [((20, 40, 60, 100), 1, 0.9), ((0, 0, 40, 40), 2, 0.6)])
    write_seed_outputs(run_folder(tmp_path), "00001", [((100, 200, 300, 600), 2, 0.3)])
    write_seed_outputs(run_folder(tmp_path), "00002", [])
    write_report(tmp_path / "out", labels, tmp_path / "r.html", pattern, verbose=False)
    out = run_probe(chromium, tmp_path / "r.html", PROBE_SMALL, tmp_path)
    cards = out["cards"]
    assert [c["name"] for c in cards] == ["a.jpg", "b.jpg", "c.jpg"]
    assert all(c["decoded"] for c in cards)  # every picture decoded by the browser
    # boxes in original pixels (scale 2): (20,40,60,100) -> (10,20,30,50); the hostile name is shown as text
    car = "<img src=x onerror=window.pwned=1>"
    assert [r[:6] for r in cards[0]["rows"]] == [["person", "90.0%", "10.0", "20.0", "30.0", "50.0"],
                                                 [car, "60.0%", "0.0", "0.0", "20.0", "20.0"]]
    assert [r[:6] for r in cards[1]["rows"]] == [[car, "30.0%", "50.0", "100.0", "150.0", "300.0"]]
    assert cards[2]["rows"] == [] and [c["dets"] for c in cards] == [2, 1, 0]
    assert cards[0]["labels"] == ["person 90%", f"{car} 60%"]
    assert not out["pwned"] and out["injected"] == 0
    # 320x160 shown at the readable size: longest side 512 css px (shrunk from nothing: enlarged by a whole
    # factor only when at most half of it), and labels kept inside the image
    assert cards[0]["shown"] == [320, 160] and cards[0]["pixelated"] == "auto"


# ------------------------------------------------------------------------------------------------------------
# The 200 held-out synthetic images (tools/demo.py's set) through the deployment chain, with annotations


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    """export -> image2bin -> infer (TXT) -> report --annotations on the 200 held-out images; returns paths."""
    assert CKPT.exists(), "the demo detector (demo/shapes49s_fp16.pt) is part of the repository"
    root = tmp_path_factory.mktemp("demo200")
    make_synthetic_dataset(root / "data", num_train=0, num_val=200, image_size=128, seed=0, size_range=(0.15, 0.6),
                           progress=False)  # tools/demo.py's HELD_OUT: the recorded run's held-out set
    data = root / "data"
    steps = [["export", "--checkpoint", str(CKPT), "--output", str(root / "model.onnx"), "--input_image_size",
              "128,128"],
             ["image2bin", "--image_file_pattern", str(data / "val" / "*.jpg"), "--output_dir", str(root / "bins"),
              "--image_size", "128", "--quiet"],
             ["infer", "--model", str(root / "model.onnx"), "--input", str(root / "bins"), "--output",
              str(root / "out"), "--outfmt", "TXT", "--quiet"],
             ["report", "--output", str(root / "out"), "--label_map_file", str(data / "labels.csv"), "--output_html",
              str(root / "report.html"), "--manifest", str(root / "bins" / "manifest.json"), "--annotations",
              str(data / "annotations" / "instances_val.json"), "--max_boxes_to_draw", "100", "--no_progress"]]
    for args in steps:
        assert main(args) == 0, args
    return root


def expected(root: Path) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """From the sources: GT boxes per image (annotation file) and each image's scores (the TXT outputs)."""
    ann = json.loads((root / "data" / "annotations" / "instances_val.json").read_text())
    names = {img["id"]: os.path.basename(img["file_name"]) for img in ann["images"]}
    gts = dict.fromkeys(names.values(), 0)
    for a in ann["annotations"]:
        gts[names[a["image_id"]]] += 1
    manifest = json.loads((root / "bins" / "manifest.json").read_text())
    run = next((root / "out").iterdir())
    scores = {Path(m["source"]).name: np.loadtxt(run / f"{int(m['index']):05d}_output_3.txt").reshape(-1)
              for m in manifest["images"]}
    return gts, scores


def test_200_held_out_images_with_annotations(chromium, demo_report, tmp_path):
    html = demo_report / "report.html"
    out = run_probe(chromium, html, PROBE_FULL, tmp_path)
    gts, scores = expected(demo_report)
    t = out["threshold"]
    assert t == 0.3  # --display_threshold's default
    above = {n: int(np.sum(np.round(s, 6) >= t)) for n, s in scores.items()}
    cards = [c for page in out["pages"] for c in page]
    # every image shown once, in file order, its picture decoded at its own size, and shown at a readable size:
    # enlarged (longest side 256..512 css px, aspect kept) with crisp pixels
    assert [c["name"] for c in cards] == sorted(gts) and len(cards) == 200 and len(out["pages"]) == 10
    for c in cards:
        with Image.open(demo_report / "data" / "val" / c["name"]) as im:
            assert c["decoded"] and c["natural"] == list(im.size), c
        (w, h), (nw, nh) = c["shown"], c["natural"]
        assert 256 <= max(w, h) <= 512 and abs(w / h - nw / nh) < 0.02 and c["pixelated"] == "pixelated", c
    assert sum(c["shown"] == [512, 512] for c in cards) > 150  # most are 128x128, shown 4x
    # every GT box and every detection above the threshold drawn
    assert {c["name"]: c["gts"] for c in cards} == gts
    assert {c["name"]: c["dets"] for c in cards} == above
    assert sum(above.values()) > 500 and all(c["dets"] == c["tp"] + c["fp"] for c in cards)
    # the counts line: each drawn detection a TP or FP, each GT found (TP) or missed (FN)
    for c in cards:
        tp, fp, fn = (int(v) for v in re.match(r"TP (\d+) · FP (\d+) · FN (\d+)", c["counts"]).groups())
        assert (tp, fp, tp + fn, fn) == (c["tp"], c["fp"], gts[c["name"]], c["missed"]), c
    assert sum(c["fp"] for c in cards) > 0 and sum(c["missed"] for c in cards) > 0  # errors are there to see
    # labels inside their picture; one colour per class on every picture, a different one for each class
    assert all(c["outside"] == 0 for c in cards)
    colours = {}
    for c in cards:
        for name, colour in c["colours"]:
            colours.setdefault(name, set()).add(colour)
    assert sorted(colours) == ["circle", "cross", "square", "star", "triangle"]
    assert all(len(v) == 1 for v in colours.values()) and len(set.union(*colours.values())) == 5
    # the threshold control changes what is shown: page 1 at 0.9, then back at 0.3
    first = out["first"]
    assert out["at"]["0.30"] == sum(above[n] for n in first) == out["at"]["0.30 again"]
    assert out["at"]["0.90"] == sum(int(np.sum(np.round(scores[n], 6) >= 0.9)) for n in first) < out["at"]["0.30"]
    assert out["tiles"] == sorted(gts)
    # the plots: PR curves at IoU 0.5 and 0.75, per-class AP bars and table, histogram, confusion matrix
    plots = out["plots"]
    assert plots["pr"] == ["0.5", "0.75"] and plots["prLines"] >= 12
    assert plots["perClass"] == 1 and sorted(plots["perClassRows"]) == ["circle", "cross", "square", "star",
                                                                        "triangle"]
    assert plots["histogram"] == 1 and plots["confusion"] == 1
    assert len(plots["coco"]) == 12 and "n/a" in plots["coco"]  # no large objects in 128 px images
    screenshots(chromium, html, tmp_path)


def screenshots(chromium, html: Path, tmp: Path) -> None:
    """The whole first screenful and more (summary, metrics, plots, controls, index, the first detail cards), in
    file order and worst images first (the page reads a starting view from the URL's fragment)."""
    for name, fragment in (("report.png", ""), ("report_worst.png", "#sort=worst&errors=1")):
        path = tmp / name
        subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'profile'}", "--window-size=1400,4600",
                        "--virtual-time-budget=10000", f"--screenshot={path}", html.as_uri() + fragment],
                       capture_output=True, timeout=120, check=True)
        assert path.stat().st_size > 100_000, name
        if os.environ.get("SPINENET_SCREENSHOT_DIR"):
            dest = Path(os.environ["SPINENET_SCREENSHOT_DIR"])
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, dest / name)
