"""The report's plots as inline SVG strings: no network and no plotting library at view time or build time.

Hand-written rather than matplotlib: the four plots are axes, lines, bars and rectangles, and building them as
text takes milliseconds (80 classes included) where importing matplotlib alone takes about a second. Each
``<svg>`` carries ``class="plot <kind>"`` and ``data-*`` attributes so the page's script and the browser test can
find it; it scales with its container (``viewBox``); hovering a line, bar or cell shows its ``<title>``. Every
class name (from user label maps) is escaped.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence

from spinenet.deploy.report_analysis import Confusion, ScoreHistogram, format_value
from spinenet.deploy.report_coco import ClassAP, CocoSummary

FONT = 'font-family="sans-serif" font-size="11"'
TP_COLOUR, FP_COLOUR, ALL_COLOUR = "#2e9e44", "#d6404b", "#7f8c99"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _n(v: float) -> str:
    """A coordinate with one decimal and no trailing zeros (keeps the SVG small)."""
    return f"{v:.1f}".rstrip("0").rstrip(".")


def _open(kind: str, width: float, height: float, title: str, **data: object) -> list[str]:
    attrs = "".join(f' data-{k.replace("_", "-")}="{_e(v)}"' for k, v in data.items())
    return [f'<svg class="plot {kind}"{attrs} xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_n(width)} '
            f'{_n(height)}" width="{_n(width)}" height="{_n(height)}" style="max-width:100%;height:auto" '
            f'role="img" aria-label="{_e(title)}" {FONT}>',
            f"<title>{_e(title)}</title>",
            f'<text x="{_n(width / 2)}" y="14" text-anchor="middle" font-size="13" font-weight="bold">{_e(title)}'
            "</text>"]


def _axes(x0: float, y0: float, w: float, h: float, xlabel: str, ylabel: str, xticks: Sequence[tuple[float, str]],
          yticks: Sequence[tuple[float, str]]) -> list[str]:
    """Frame, ticks (fractions of the axis, label) and axis titles of a plot area at (x0, y0) of size w x h."""
    out = [f'<rect x="{_n(x0)}" y="{_n(y0)}" width="{_n(w)}" height="{_n(h)}" fill="none" stroke="#888"/>']
    for f, label in xticks:
        x = x0 + f * w
        out.append(f'<line x1="{_n(x)}" y1="{_n(y0 + h)}" x2="{_n(x)}" y2="{_n(y0 + h + 4)}" stroke="#888"/>'
                   f'<text x="{_n(x)}" y="{_n(y0 + h + 15)}" text-anchor="middle">{_e(label)}</text>')
    for f, label in yticks:
        y = y0 + h - f * h
        out.append(f'<line x1="{_n(x0 - 4)}" y1="{_n(y)}" x2="{_n(x0 + w)}" y2="{_n(y)}" stroke="#eee"/>'
                   f'<text x="{_n(x0 - 6)}" y="{_n(y + 4)}" text-anchor="end">{_e(label)}</text>')
    out.append(f'<text x="{_n(x0 + w / 2)}" y="{_n(y0 + h + 30)}" text-anchor="middle">{_e(xlabel)}</text>')
    out.append(f'<text transform="translate({_n(x0 - 34)} {_n(y0 + h / 2)}) rotate(-90)" '
               f'text-anchor="middle">{_e(ylabel)}</text>')
    return out


def hue_colour(class_id: int) -> str:
    """A distinct colour per class id (golden-angle hues) for when the page passes none of its own."""
    return f"hsl({class_id * 137.508 % 360:.0f},70%,42%)"


TICKS = [(k / 5, f"{k / 5:.1f}") for k in range(6)]


def pr_curve_svg(summary: CocoSummary, iou: float, class_names: dict[int, str] | None = None,
                 colour: Callable[[int], str] | None = None, width: int = 420, height: int = 340) -> str:
    """Precision against recall at ``iou`` (0.5 or 0.75): every class thin in its colour (``colour(class_id)``:
    pass the page's box colours), their mean thick black.

    COCO's interpolated precision at area "all", maxDets 100; the mean's average over recall is AP50 / AP75.
    """
    colour = colour or hue_colour
    names = class_names or {}
    aps = {c.class_id: (c.ap50 if iou == 0.5 else c.ap75) for c in summary.per_class}
    x0, y0, w, h = 48, 26, width - 62, height - 70
    overall = summary.pr_all.get(iou)
    mean_ap = sum(overall) / len(overall) if overall else None
    out = _open("pr-curve", width, height, f"Precision-recall at IoU {iou:g} (AP {format_value(mean_ap)})",
                iou=f"{iou:g}", classes=len(summary.pr.get(iou, {})))
    out += _axes(x0, y0, w, h, "recall", "precision", TICKS, TICKS)
    recall = summary.recall

    def line(precision: Sequence[float]) -> str:
        return " ".join(f"{_n(x0 + r * w)},{_n(y0 + h - p * h)}" for r, p in zip(recall, precision, strict=True))

    for cid, precision in summary.pr.get(iou, {}).items():
        name = names.get(cid, f"id {cid}")
        out.append(f'<polyline class="pr-class" data-class-id="{cid}" points="{line(precision)}" fill="none" '
                   f'stroke="{colour(cid)}" stroke-width="1" opacity="0.6"><title>{_e(name)}: AP '
                   f"{format_value(aps.get(cid))}</title></polyline>")
    if overall is not None:
        out.append(f'<polyline class="pr-all" points="{line(overall)}" fill="none" stroke="#000" stroke-width="2.5">'
                   f"<title>mean over classes: AP {format_value(mean_ap)}</title></polyline>")
    else:
        out.append(f'<text x="{_n(x0 + w / 2)}" y="{_n(y0 + h / 2)}" text-anchor="middle">no ground truth</text>')
    out.append("</svg>")
    return "\n".join(out)


def per_class_ap_svg(per_class: Sequence[ClassAP], width: int = 520, row: int = 16, drop_empty: bool = True) -> str:
    """Horizontal bars, best class first: AP@[.5:.95] solid, AP50 as a lighter bar behind it; "n/a" without GT.

    ``drop_empty`` leaves out classes with neither ground truth nor detections (the title says how many).
    """
    shown = [c for c in per_class if not drop_empty or c.num_gt or c.num_det]
    order = sorted(shown, key=lambda c: (c.ap is None, -(c.ap or 0.0), c.class_id))
    hidden = len(per_class) - len(shown)
    label_w = min(200, 12 + 6.5 * max((len(c.name) for c in order), default=4))
    x0, y0 = label_w, 44
    w = width - x0 - 52
    height = y0 + row * len(order) + 36
    title = "AP per class" + (f" ({hidden} without boxes or detections not shown)" if hidden else "")
    out = _open("per-class-ap", width, height, title, classes=len(order))
    out.append(f'<rect x="{_n(x0)}" y="28" width="10" height="10" fill="{ALL_COLOUR}" opacity="0.35"/>'
               f'<text x="{_n(x0 + 14)}" y="37">AP50</text><rect x="{_n(x0 + 60)}" y="28" width="10" height="10" '
               f'fill="#4363d8"/><text x="{_n(x0 + 74)}" y="37">AP@[.5:.95]</text>')
    for f, label in TICKS:
        x = x0 + f * w
        out.append(f'<line x1="{_n(x)}" y1="{y0}" x2="{_n(x)}" y2="{_n(y0 + row * len(order))}" stroke="#eee"/>'
                   f'<text x="{_n(x)}" y="{_n(y0 + row * len(order) + 14)}" text-anchor="middle">{label}</text>')
    for i, c in enumerate(order):
        y = y0 + i * row
        tip = (f"{c.name}: AP {format_value(c.ap)}, AP50 {format_value(c.ap50)}, AP75 {format_value(c.ap75)}; "
               f"{c.num_gt} GT, {c.num_det} detections")
        out.append(f'<g class="ap-bar" data-class-id="{c.class_id}"><title>{_e(tip)}</title>'
                   f'<text x="{_n(x0 - 6)}" y="{_n(y + row * 0.72)}" text-anchor="end">{_e(_short(c.name))}</text>')
        if c.ap50 is not None:
            out.append(f'<rect x="{_n(x0)}" y="{_n(y + 2)}" width="{_n(c.ap50 * w)}" height="{row - 4}" '
                       f'fill="{ALL_COLOUR}" opacity="0.35"/>')
        if c.ap is not None:
            out.append(f'<rect x="{_n(x0)}" y="{_n(y + 4)}" width="{_n(c.ap * w)}" height="{row - 8}" '
                       'fill="#4363d8"/>')
        value_x = x0 + (c.ap50 or 0.0) * w + 4
        out.append(f'<text x="{_n(value_x)}" y="{_n(y + row * 0.72)}">{format_value(c.ap)}</text></g>')
    out.append(f'<text x="{_n(x0 + w / 2)}" y="{_n(height - 6)}" text-anchor="middle">average precision</text>')
    out.append("</svg>")
    return "\n".join(out)


def _short(name: str, limit: int = 28) -> str:
    return name if len(name) <= limit else name[:limit - 1] + "…"


def score_histogram_svg(hist: ScoreHistogram, threshold: float | None = None, width: int = 420,
                        height: int = 300) -> str:
    """Detections per score bin: true positives (green) stacked under false positives (red) with annotations,
    all detections (grey) without; ``threshold`` is drawn as a dashed line (``class="threshold"``)."""
    x0, y0, w, h = 52, 40, width - 66, height - 84
    series = ([("tp", "true positive", TP_COLOUR, hist.tp), ("fp", "false positive", FP_COLOUR, hist.fp)]
              if hist.tp is not None and hist.fp is not None else [("all", "detections", ALL_COLOUR, hist.all)])
    totals = [sum(s[3][i] for s in series) for i in range(len(hist.all))]
    top = nice_axis_top(max(totals, default=0))
    out = _open("score-histogram", width, height, "Detection scores", bins=len(hist.all),
                series=",".join(s[0] for s in series))
    ticks = [(k / 4, f"{round(top * k / 4):d}") for k in range(5)]
    out += _axes(x0, y0, w, h, "score", "detections", TICKS, ticks)
    for k, (_, label, colour, _) in enumerate(series):
        out.append(f'<rect x="{_n(x0 + k * 110)}" y="22" width="10" height="10" fill="{colour}"/>'
                   f'<text x="{_n(x0 + 14 + k * 110)}" y="31">{label}</text>')
    bw = w / max(1, len(hist.all))
    for i in range(len(hist.all)):
        base = 0
        for key, label, colour, counts in series:
            n = counts[i]
            if n:
                y = y0 + h - (base + n) / top * h
                out.append(f'<rect class="bar-{key}" x="{_n(x0 + i * bw + 0.5)}" y="{_n(y)}" width="{_n(bw - 1)}" '
                           f'height="{_n(n / top * h)}" fill="{colour}"><title>{label}: {n} with score '
                           f"{hist.edges[i]:.2f}-{hist.edges[i + 1]:.2f}</title></rect>")
            base += n
    if threshold is not None:
        x = x0 + min(max(threshold, 0.0), 1.0) * w
        out.append(f'<line class="threshold" data-threshold="{threshold:g}" x1="{_n(x)}" y1="{y0}" x2="{_n(x)}" '
                   f'y2="{_n(y0 + h)}" stroke="#000" stroke-dasharray="4 3"><title>display threshold '
                   f"{threshold:g}</title></line>")
    out.append("</svg>")
    return "\n".join(out)


def nice_axis_top(value: int) -> int:
    """The axis top: the smallest 4 x {1, 2, 5} x 10^k at or above ``value`` (four whole ticks)."""
    scale = 1
    while True:
        for m in (1, 2, 5):
            if 4 * m * scale >= value:
                return 4 * m * scale
        scale *= 10


def confusion_matrix_svg(confusion: Confusion, cell: int | None = None, drop_empty: bool = True) -> str:
    """Ground-truth classes (rows, then "background") against detected classes (columns, then "missed"), shaded by
    the share of the row; counts written in the cells when they fit. ``drop_empty`` leaves out classes with
    neither a ground-truth box nor a detection (most of COCO's 80 on a small set)."""
    k = len(confusion.class_ids)
    m = confusion.matrix
    keep = [i for i in range(k) if not drop_empty or sum(m[i]) or sum(r[i] for r in m)]
    rows, cols = [*keep, k], [*keep, k]
    row_names = [*(confusion.names[i] for i in keep), "background"]
    col_names = [*(confusion.names[i] for i in keep), "missed"]
    cell = cell or max(12, min(34, 640 // len(rows)))
    label_w = min(180, 14 + 6.5 * max(len(_short(n, 24)) for n in row_names))
    x0, y0 = label_w, 34 + min(150, 10 + 6.5 * max(len(_short(n, 24)) for n in col_names))
    width, height = max(x0 + cell * len(cols) + 12, 400), y0 + cell * len(rows) + 34
    out = _open("confusion-matrix", width, height,
                f"Confusion matrix (score >= {confusion.score_threshold:g}, IoU >= {confusion.iou_threshold:g})",
                classes=len(keep), score_threshold=f"{confusion.score_threshold:g}")
    out.append(f'<rect x="{_n(x0)}" y="{_n(y0)}" width="{cell * len(cols)}" height="{cell * len(rows)}" '
               'fill="#fafafa" stroke="#ccc"/>')
    for j, name in enumerate(col_names):
        cx = x0 + (j + 0.5) * cell
        out.append(f'<text transform="translate({_n(cx + 4)} {_n(y0 - 4)}) rotate(-60)">{_e(_short(name, 24))}'
                   "</text>")
    for i, name in enumerate(row_names):
        out.append(f'<text x="{_n(x0 - 5)}" y="{_n(y0 + (i + 0.5) * cell + 4)}" text-anchor="end">'
                   f"{_e(_short(name, 24))}</text>")
    for i, r in enumerate(rows):
        total = sum(m[r][c] for c in cols)
        for j, c in enumerate(cols):
            n = m[r][c]
            if not n:
                continue
            share = n / total
            hue = "46,140,80" if r == c and r < k else "214,64,75"
            cx, cy = x0 + j * cell, y0 + i * cell
            text = (f'<text x="{_n(cx + cell / 2)}" y="{_n(cy + cell / 2 + 4)}" text-anchor="middle" '
                    f'font-size="{min(11, cell // 2)}">{n}</text>' if cell >= 18 else "")
            out.append(f'<g class="cell" data-row="{i}" data-col="{j}" data-count="{n}"><title>{_e(row_names[i])} '
                       f'-&gt; {_e(col_names[j])}: {n} ({share:.0%} of the row)</title><rect x="{_n(cx)}" '
                       f'y="{_n(cy)}" width="{cell}" height="{cell}" fill="rgba({hue},{0.15 + 0.85 * share:.2f})"/>'
                       f"{text}</g>")
    out.append(f'<text x="{_n(width / 2)}" y="{_n(height - 8)}" text-anchor="middle">'
               "columns: detected class; rows: ground truth</text>")
    out.append("</svg>")
    return "\n".join(out)
