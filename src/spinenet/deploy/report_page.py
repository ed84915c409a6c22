"""The HTML of ``spinenet report``'s page: run summary, metrics, controls, legend and the thumbnail index.

Everything here is markup made on the server with every value through :func:`html.escape`; the detail view (the
pictures with their boxes, drawn as an SVG overlay in the image's own pixel coordinates) is built in the browser
by ``report_static/viewer.js`` from the data files of :mod:`report_assets`. The page works from disk
(``file://``) and needs no network.
"""

from __future__ import annotations

import html
import time
import urllib.parse

# Distinct, readable box colours, picked by class id so a class keeps its colour on every image of the page.
PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4",
           "#469990", "#dcbeff", "#9a6324", "#800000", "#aaffc3", "#808000", "#000075", "#ffd8b1", "#ffe119")

SORTS = (("file", "file order"), ("worst", "worst first (FP + FN)"), ("fn", "most missed (FN)"),
         ("fp", "most false positives"), ("high", "highest score first"), ("low", "lowest top score first"),
         ("dets", "most detections"))
SORTS_UNANNOTATED = ("file", "high", "low", "dets")

STYLE = """body{font-family:sans-serif;margin:0 1.5em 2em;color:#222;line-height:1.35}
h1{margin:.6em 0 .2em}h2{margin:1.2em 0 .4em;border-bottom:1px solid #ddd}.lead{margin:0 0 .6em;color:#444}
table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}
th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#a15c00;margin:.2em 0}small{color:#666;font-weight:normal}details{margin:.4em 0}
summary{cursor:pointer;color:#235}.plots{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}
.plots figure{margin:0}.controls{position:sticky;top:0;z-index:2;background:#fafafaee;border-bottom:1px solid #ccc;
padding:.4em .6em;display:flex;flex-wrap:wrap;gap:.4em 1.4em;align-items:center}
.controls label{white-space:nowrap}#thr-num{width:4.5em}.legend{display:flex;flex-wrap:wrap;gap:.3em 1em;
margin:.5em 0;font-size:90%}.legend span{white-space:nowrap}.legend svg{vertical-align:middle;margin-right:.2em}
.index{display:flex;flex-wrap:wrap;gap:6px;max-height:min(42vh,430px);overflow:auto;border:1px solid #ddd;padding:6px;
background:#f7f7f7}.tile{display:flex;flex-direction:column;align-items:center;width:136px;font-size:11px;
color:#222;text-decoration:none;background:#fff;border:1px solid #ddd;padding:2px;content-visibility:auto;
contain-intrinsic-size:136px 168px}.tile .th{width:128px;height:128px;display:flex;align-items:center;
justify-content:center}.tile img{max-width:128px;max-height:128px}.tile span{max-width:132px;overflow:hidden;
text-overflow:ellipsis;white-space:nowrap}.tile .badge{padding:0 3px;border-radius:3px}
.tile .badge.bad{background:#fdd}.tile .badge.ok{background:#dfd}.tile[hidden]{display:none}
img.px{image-rendering:pixelated}.pager{margin:.6em 0}.pager button{margin-right:.3em}
#detail{display:flex;flex-wrap:wrap;gap:1.2em}.card{border-top:1px solid #ddd;max-width:100%}
.card h3{margin:.4em 0;font-size:100%;overflow-wrap:anywhere;max-width:512px}.counts{margin:.2em 0;font-size:90%;
max-width:512px}.pic{position:relative;max-width:100%;line-height:0}.pic img{width:100%;height:100%;display:block}
.pic svg{position:absolute;left:0;top:0;width:100%;height:100%;overflow:hidden}.pic .box{fill:none}
.pic .label rect{fill-opacity:.9}.pic text{fill:#000;font-family:sans-serif;dominant-baseline:auto}
table.dets,table.gts{font-size:85%}"""


def class_colour(class_id: int) -> str:
    """The colour of a class's boxes (and PR curve) everywhere on the page."""
    return PALETTE[class_id % len(PALETTE)]


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: object) -> str:
    """A value for the short summary: floats to 4 significant digits (``213.3``, not ``213.30894069166672``)."""
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def table(header: list[str], rows: list[list[object]], cls: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>\n" for row in rows)
    return f'<table class="{esc(cls)}"><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>\n'


def summary_section(result, pattern: str, timing: dict, seconds: float, threshold: float) -> str:
    """The run summary: a short rounded table, then every value (and the run's timing JSON) in a <details>."""
    m = result.metrics
    lead = f"{result.num_images} image(s), {result.num_detections} detection(s) with score &gt; 0"
    if m is not None:
        lead += f"; COCO AP {m['AP']:.3f}, AP50 {m['AP50']:.3f} over {m['num_images']} annotated image(s)"
    rows = [["output folder", result.run_folder], ["images reported", result.num_images],
            ["detections (score > 0)", result.num_detections],
            [f"detections drawn at the display threshold {threshold:.2f}", result.num_drawn]]
    rows += [[title, len(items)] for title, items in (("images without usable outputs", result.missing),
                                                      ("files skipped", result.skipped)) if items]
    for key in ("model", "backend", "precision", "device"):
        if key in timing:
            rows.append([f"infer: {key}", fmt(timing[key])])
    rows.append(["report written", time.strftime("%Y-%m-%d %H:%M:%S") + f" in {seconds:.1f} s"])
    full = [["output folder", result.run_folder], ["image file pattern", pattern],
            ["images reported", result.num_images], ["detections (score > 0)", result.num_detections],
            ["detections drawn", result.num_drawn], ["images without usable outputs", len(result.missing)],
            ["files skipped", len(result.skipped)], ["report seconds", f"{seconds:.3f}"]]
    full += [[f"infer: {k}", f"{v:.6g}" if isinstance(v, float) else v] for k, v in timing.items()]
    parts = [f'<p class="lead">{lead}</p>', "<h2>Run summary</h2>", table(["item", "value"], rows, "summary"),
             "<details><summary>all run details</summary>", table(["item", "value"], full, "summary-full"),
             "</details>"]
    for title, items in (("Images without usable outputs", result.missing), ("Skipped files", result.skipped)):
        if items:
            parts.append(f"<h3>{title}</h3>\n" + table(["file", "reason"], [list(i) for i in items]))
    parts += [f'<p class="note">{esc(n)}</p>' for n in result.notes]
    return "\n".join(parts) + "\n"


def metrics_section(analysis) -> str:
    """The numbers and plots of :class:`~spinenet.deploy.report_analysis.ReportAnalysis`: the 12 COCO numbers ("n/a"
    where COCO has no object of that size), per-class AP as a table and bars, precision-recall curves at IoU 0.5
    and 0.75, the TP/FP score histogram and the confusion matrix (plots from :mod:`report_plots`)."""
    from spinenet.deploy import report_plots as plots

    parts = []
    coco = analysis.coco
    if coco is not None:
        rows = analysis.metrics_rows()
        scored = sum(i.image_id is not None for i in analysis.images)
        parts.append(f'<h2 id="metrics">COCO metrics ({scored} image(s))</h2>')
        parts.append('<table class="metrics"><thead><tr>' + "".join(
            f'<th title="{esc(label)}">{esc(key)}</th>' for key, label, _ in rows) + "</tr></thead><tbody><tr>"
            + "".join(f'<td class="num">{esc(v)}</td>' for _, _, v in rows) + "</tr></tbody></table>")
        parts.append(f"<p><small>{analysis.num_detections} detection(s) scored (every score &gt; 0, whatever the "
                     "display threshold); n/a: no ground-truth object of that size.</small></p>")
        if analysis.unmatched:
            parts.append(f"<p>{len(analysis.unmatched)} reported image(s) are not in the annotations and were not "
                         f"scored: {esc(', '.join(analysis.unmatched[:50]))}"
                         + (" ..." if len(analysis.unmatched) > 50 else "") + "</p>")
        per_class = table(["class", "AP", "AP50", "AP75", "GT boxes", "detections"],
                          [list(r) for r in analysis.per_class_rows()], "per-class")
        parts.append('<h3>Per class</h3><div class="plots">' + per_class
                     + f"<figure>{plots.per_class_ap_svg(coco.per_class)}</figure></div>")
        figures = [plots.pr_curve_svg(coco, iou, analysis.class_names, colour=class_colour) for iou in (0.5, 0.75)]
        figures.append(plots.score_histogram_svg(analysis.histogram, analysis.score_threshold))
        if analysis.confusion is not None:
            figures.append(plots.confusion_matrix_svg(analysis.confusion))
        parts.append('<h3>Curves</h3><div class="plots">' + "".join(f"<figure>{f}</figure>" for f in figures)
                     + "</div>")
    elif analysis.num_detections:
        parts.append('<h2 id="metrics">Scores</h2><div class="plots"><figure>'
                     + plots.score_histogram_svg(analysis.histogram, analysis.score_threshold) + "</figure></div>")
    return "\n".join(parts) + "\n"


def legend(classes: dict[int, str], annotated: bool) -> str:
    """Class colours (by id, as in the pictures) and, with annotations, what each line style means."""
    def swatch(colour: str, dash: str = "", mark: str = "") -> str:
        d = f' stroke-dasharray="{dash}"' if dash else ""
        return (f'<svg width="26" height="14" aria-hidden="true"><rect x="2" y="2" width="22" height="10" fill="none" '
                f'stroke="{colour}" stroke-width="2"{d}/>{mark}</svg>')

    parts = [f"<span>{swatch(PALETTE[c % len(PALETTE)])}{esc(name)}</span>" for c, name in sorted(classes.items())]
    if annotated:
        parts += [f"<span>{swatch('#555')}detection: name score% &#10003; true / &#10007; false positive "
                  "(IoU 0.5)</span>",
                  f"<span>{swatch('#555', '6 4')}ground truth (dashed)</span>",
                  f"<span>{swatch('#d00', '6 4')}missed ground truth (labelled &ldquo;missed&rdquo;)</span>",
                  f"<span>{swatch('#555', '2 3')}crowd region</span>"]
    return '<div class="legend">' + "".join(parts) + "</div>\n"


def controls(classes: dict[int, str], annotated: bool, threshold: float, min_score: float) -> str:
    sorts = [s for s in SORTS if annotated or s[0] in SORTS_UNANNOTATED]
    options = "".join(f'<option value="{v}">{esc(t)}</option>' for v, t in sorts)
    cls = '<option value="-1">all classes</option>' + "".join(
        f'<option value="{c}">{esc(n)}</option>' for c, n in sorted(classes.items()))
    errors = ('<label><input type="checkbox" id="errors"> only images with errors</label>' if annotated else
              '<input type="checkbox" id="errors" hidden>')
    per = "".join(f'<option value="{n}"{" selected" if n == 20 else ""}>{n}</option>' for n in (10, 20, 50, 100))
    return (f'<div class="controls" id="controls"><label>display threshold <input type="range" id="thr-range" '
            f'min="{min_score:g}" max="1" step="0.01" value="{threshold:g}"> <input type="number" id="thr-num" '
            f'min="{min_score:g}" max="1" step="0.01" value="{threshold:.2f}"></label>'
            f'<label>sort <select id="sort">{options}</select></label>'
            f'<label>class <select id="cls">{cls}</select></label>{errors}'
            f'<label>per page <select id="per">{per}</select></label><span id="shown"></span></div>\n')


def pager() -> str:
    return ('<nav class="pager"><button data-go="first">&laquo; first</button><button data-go="prev">&lsaquo; '
            'previous</button><span class="where"></span> <button data-go="next">next &rsaquo;</button>'
            '<button data-go="last">last &raquo;</button></nav>\n')


def write_page(f, *, title: str, summary: str, metrics: str, classes: dict[int, str],
               annotated: bool, threshold: float, min_score: float, dir_name: str) -> None:
    """The page into text file ``f``; ``summary`` and ``metrics`` are ready (escaped) HTML fragments."""
    dir_url = urllib.parse.quote(dir_name)
    f.write('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>spinenet report: {esc(title)}</title><style>{STYLE}</style></head><body>\n"
            f"<h1>spinenet deployment report</h1>\n{summary}{metrics}"
            '<h2 id="images">Images</h2>\n<p>Pick an image in the index (thumbnails; badge: true / false positives and '
            "missed objects at the display threshold) or page through the detail view below it. The threshold "
            "only changes what is drawn and counted here; the mAP above uses every detection.</p>\n")
    f.write(controls(classes, annotated, threshold, min_score) + legend(classes, annotated))
    f.write('<div class="index" id="index"></div>\n' + pager() + '<div id="detail"></div>\n' + pager())
    f.write("<noscript><p>The detail view needs JavaScript.</p></noscript>\n"
            f'<script src="{esc(dir_url)}/index.js"></script>\n<script src="{esc(dir_url)}/viewer.js"></script>\n'
            "</body></html>\n")

