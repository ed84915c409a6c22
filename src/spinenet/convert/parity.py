"""Compare a converted model against outputs recorded from the TensorFlow reference.

Used by the parity tools (which run TensorFlow) and by the CI tests (which replay a committed recording), so
both judge with the same rules:

* raw maps: max |Δ| per level, absolute and relative to the map's max |value|;
* detections: as matched sets. A reference detection must have a partner of the same class with every box
  coordinate within ``box_tol`` px and score within ``score_tol`` — except where its score is within
  ``tie_tol`` of the cut-off (the 100th score), where the two sides may legitimately keep different boxes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class MapDiff:
    level: int
    cls_max_abs: float
    cls_scale: float
    box_max_abs: float
    box_scale: float


@dataclass
class DetectionDiff:
    image: int
    num_ref: int
    num_ours: int
    matched: int
    unmatched_ref: int  # away from ties: a real disagreement
    unmatched_ours: int
    near_tie_skipped: int
    max_box_diff: float
    max_score_diff: float


@dataclass
class ParityReport:
    maps: list[MapDiff] = field(default_factory=list)
    detections: list[DetectionDiff] = field(default_factory=list)

    @property
    def max_map_diff(self) -> float:
        return max(max(m.cls_max_abs, m.box_max_abs) for m in self.maps)

    @property
    def max_relative_map_diff(self) -> float:
        return max(max(m.cls_max_abs / m.cls_scale, m.box_max_abs / m.box_scale) for m in self.maps)

    @property
    def detections_agree(self) -> bool:
        return all(d.unmatched_ref == 0 and d.unmatched_ours == 0 for d in self.detections)

    def table(self) -> str:
        lines = ["level  max|Δcls|   (max|cls|)  max|Δbox|   (max|box|)"]
        for m in self.maps:
            lines.append(f"P{m.level}     {m.cls_max_abs:.3e}  ({m.cls_scale:7.3f})   {m.box_max_abs:.3e}  "
                         f"({m.box_scale:7.3f})")
        lines.append("image  ref  ours  matched  unmatched(ref/ours)  near-tie  max|Δbox|px  max|Δscore|")
        for d in self.detections:
            lines.append(f"{d.image:5d}  {d.num_ref:3d}  {d.num_ours:4d}  {d.matched:7d}  "
                         f"{d.unmatched_ref:9d}/{d.unmatched_ours:<9d}  {d.near_tie_skipped:8d}  "
                         f"{d.max_box_diff:11.4f}  {d.max_score_diff:.2e}")
        return "\n".join(lines)


def compare_maps(cls_ours: dict[int, torch.Tensor], box_ours: dict[int, torch.Tensor],
                 reference: dict[str, np.ndarray]) -> list[MapDiff]:
    """Our NCHW maps against the reference's NHWC ``cls_{l}`` / ``box_{l}`` arrays."""
    out = []
    for lvl in sorted(cls_ours):
        c = cls_ours[lvl].permute(0, 2, 3, 1).numpy()  # (B, H, W, A*K), the reference's layout
        b = box_ours[lvl].permute(0, 2, 3, 1).numpy()
        rc, rb = reference[f"cls_{lvl}"], reference[f"box_{lvl}"]
        if c.shape != rc.shape or b.shape != rb.shape:
            raise ValueError(f"P{lvl}: shapes differ: ours {c.shape}/{b.shape}, reference {rc.shape}/{rb.shape}")
        out.append(MapDiff(lvl, float(np.abs(c - rc).max()), float(np.abs(rc).max()),
                           float(np.abs(b - rb).max()), float(np.abs(rb).max())))
    return out


def compare_detections(ours: dict[str, torch.Tensor], ref: dict[str, np.ndarray], *, box_tol: float = 0.5,
                       score_tol: float = 1e-4, tie_tol: float = 1e-4,
                       score_threshold: float = 0.05) -> list[DetectionDiff]:
    """Matched-set comparison of padded detection outputs (``detection_{boxes,scores,classes}``)."""
    results = []
    ours_np = {k: v.numpy() for k, v in ours.items()}
    for i in range(ref["detection_scores"].shape[0]):
        rb, rs, rc = _valid_detections(ref, i)
        ob, os_, oc = _valid_detections(ours_np, i)
        # A detection near the cut-off (the last kept score when the output is full, else the score
        # threshold) may be swapped for an equally scored one.
        full = len(ref["detection_scores"][i])
        lows = [float(s.min()) for s in (rs, os_) if len(s) == full]
        cutoff = max(score_threshold, min(lows)) if lows else score_threshold
        used = np.zeros(len(ob), dtype=bool)
        matched = unmatched_ref = skipped = 0
        max_box = max_score = 0.0
        for j in range(len(rb)):
            cand = np.where(~used & (oc == rc[j]) & (np.abs(os_ - rs[j]) <= score_tol)
                            & (np.abs(ob - rb[j]).max(axis=1) <= box_tol))[0]
            if len(cand):
                k = cand[np.argmin(np.abs(ob[cand] - rb[j]).max(axis=1))]
                used[k] = True
                matched += 1
                max_box = max(max_box, float(np.abs(ob[k] - rb[j]).max()))
                max_score = max(max_score, float(abs(os_[k] - rs[j])))
            elif rs[j] - cutoff <= tie_tol:
                skipped += 1
            else:
                unmatched_ref += 1
        leftover = ~used & (os_ - cutoff > tie_tol)
        results.append(DetectionDiff(i, len(rb), len(ob), matched, unmatched_ref, int(leftover.sum()),
                                     skipped, max_box, max_score))
    return results


def _valid_detections(d: dict[str, np.ndarray], i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes, scores and classes of image ``i`` without the padding (score <= 0)."""
    scores = np.asarray(d["detection_scores"][i], dtype=np.float64)
    keep = scores > 0
    return (np.asarray(d["detection_boxes"][i], dtype=np.float64)[keep], scores[keep],
            np.asarray(d["detection_classes"][i])[keep].astype(np.int64))


def check_against_reference(model: torch.nn.Module, reference: dict[str, np.ndarray]) -> ParityReport:
    """Run ``model`` (a :class:`~spinenet.modeling.retinanet.RetinaNet`, eval mode) on the reference's
    normalised input and compare raw maps and detections."""
    from spinenet.modeling.postprocess import generate_detections
    from spinenet.modeling.retinanet import default_image_info

    x = torch.from_numpy(np.ascontiguousarray(reference["input_normalized"])).permute(0, 3, 1, 2)  # NHWC->NCHW
    b, _, h, w = x.shape
    with torch.no_grad():
        cls_outputs, box_outputs = model(x)
        image_info = default_image_info(b, h, w)
        if "image_shape" in reference:  # the reference clips to this (resized image extent)
            image_info[:, 1, :] = torch.from_numpy(np.asarray(reference["image_shape"], dtype=np.float32))
        dets = generate_detections(cls_outputs, box_outputs, model.anchors((h, w)), image_info,
                                   model.params.postprocess)
    return ParityReport(compare_maps(cls_outputs, box_outputs, reference),
                        compare_detections(dets, reference, score_threshold=model.params.postprocess.score_threshold))


def model_for_recording(metadata: dict) -> torch.nn.Module:
    """The (possibly width-reduced) Model Garden-convention RetinaNet that a recording's metadata describes."""
    norm, gen = metadata["norm_activation"], metadata["detection_generator"]
    return reference_retinanet(
        str(metadata["model_id"]), metadata["scaling_map_entry"], "model_garden",
        mobile=metadata.get("family") == "spinenet_mobile",
        levels=(metadata["min_level"], metadata["max_level"]), num_classes=metadata["num_classes"],
        head=(metadata["head_num_convs"], metadata["head_num_filters"]),
        bn=dict(activation=norm["activation"], bn_momentum=1.0 - norm["norm_momentum"], bn_eps=norm["norm_epsilon"]),
        anchor=metadata["anchor"],
        postprocess=dict(max_total_size=gen["max_num_detections"], nms_iou_threshold=gen["nms_iou_threshold"],
                         score_threshold=gen["pre_nms_score_threshold"], pre_nms_num_boxes=gen["pre_nms_top_k"],
                         nms_version=gen["nms_version"]))


def reference_retinanet(model_id: str, scaling: dict, convention: str, *, levels: tuple[int, int], num_classes: int,
                        head: tuple[int, int], bn: dict, anchor: dict, postprocess: dict,
                        mobile: bool = False) -> torch.nn.Module:
    """An eval-mode RetinaNet built straight from a reference recording's facts, so that width-reduced
    ``scaling`` entries (which no config names) can be rebuilt: ``head`` = (num_convs, num_filters), ``bn`` =
    activation/bn_momentum/bn_eps, ``anchor`` = num_scales/aspect_ratios/anchor_size, ``postprocess`` =
    :class:`~spinenet.modeling.postprocess.PostprocessParams` fields. ``mobile``: a SpineNet-Mobile backbone
    (``scaling`` = endpoints_num_filters/filter_size_scale/block_repeats) with the separable head."""
    from spinenet.modeling.head import RetinaNetHead
    from spinenet.modeling.postprocess import PostprocessParams
    from spinenet.modeling.retinanet import AnchorParams, DetectorParams, RetinaNet
    from spinenet.modeling.spinenet import Scaling, SpineNet

    min_level, max_level = levels
    if mobile:
        from spinenet.modeling.spinenet_mobile import MobileScaling, SpineNetMobile

        backbone = SpineNetMobile(model_id, scaling=MobileScaling(**scaling), min_level=min_level,
                                  max_level=max_level, convention=convention, **bn)
    else:
        backbone = SpineNet(model_id, scaling=Scaling(**scaling), min_level=min_level, max_level=max_level,
                            convention=convention, **bn)
    num_anchors = anchor["num_scales"] * len(anchor["aspect_ratios"])
    net_head = RetinaNetHead(backbone.out_channels, num_classes, num_anchors, min_level=min_level,
                             max_level=max_level, num_convs=head[0], num_filters=head[1], use_separable_conv=mobile,
                             **bn)
    params = DetectorParams(
        min_level=min_level, max_level=max_level, convention=convention,
        anchor=AnchorParams(anchor["num_scales"], tuple(anchor["aspect_ratios"]), anchor["anchor_size"]),
        postprocess=PostprocessParams(**postprocess, convention=convention))
    return RetinaNet(backbone, net_head, params).eval()
