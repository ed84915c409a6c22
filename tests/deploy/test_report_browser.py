"""The HTML report opened in a real browser: headless Chromium (Debian's package, installed here if missing)
must decode every embedded image and show each image's detection rows."""

import json
import os
import shutil
import subprocess

import pytest
from test_report import label_map, make_images, run_folder, write_seed_outputs  # noqa: F401 (fixture)

from spinenet.deploy.report import write_report

pytestmark = pytest.mark.slow

# Runs in the page after load and leaves its findings in the DOM for --dump-dom.
PROBE = """<script>window.addEventListener('load', () => {
  const sections = [...document.querySelectorAll('section.image')].map(s => ({
    id: s.id,
    decoded: [...s.querySelectorAll('img')].map(i => i.complete && i.naturalWidth > 0),
    rows: [...s.querySelectorAll('table.dets tbody tr')].map(r => [...r.cells].map(c => c.textContent)),
  }));
  const pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(sections);
  document.body.appendChild(pre);
});</script>"""


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


def test_every_image_and_its_boxes_render(chromium, tmp_path, label_map):  # noqa: F811
    pattern = make_images(tmp_path / "images", ["a.jpg", "b.jpg", "c.jpg"])
    write_seed_outputs(run_folder(tmp_path), "00000", [((20, 40, 60, 100), 1, 0.9), ((0, 0, 40, 40), 2, 0.6)])
    write_seed_outputs(run_folder(tmp_path), "00001", [((100, 200, 300, 600), 2, 0.3)])
    write_seed_outputs(run_folder(tmp_path), "00002", [])
    write_report(tmp_path / "out", label_map, tmp_path / "r.html", pattern, verbose=False)
    page = (tmp_path / "r.html").read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>") if "</body>" in page else page + PROBE)
    r = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
                        probe.as_uri()], capture_output=True, text=True, timeout=180)
    dom = r.stdout
    assert '<pre id="probe">' in dom, r.stderr[-2000:]
    sections = json.loads(dom.split('<pre id="probe">', 1)[1].split("</pre>", 1)[0].replace("&quot;", '"'))
    assert [s["id"] for s in sections] == ["img-0", "img-1", "img-2"]
    assert all(s["decoded"] == [True] for s in sections)  # every embedded JPEG decoded by the browser
    # boxes in original pixels (scale 2): (20,40,60,100) -> (10,20,30,50)
    assert sections[0]["rows"] == [["person", "90.0%", "10.0", "20.0", "30.0", "50.0"],
                                   ["car", "60.0%", "0.0", "0.0", "20.0", "20.0"]]
    assert sections[1]["rows"] == [["car", "30.0%", "50.0", "100.0", "150.0", "300.0"]]
    assert sections[2]["rows"] == []
