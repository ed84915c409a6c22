"""Post-processing on the host: raw head maps (a ``--postprocess none`` export run by msame or ais_bench) ->
the seed's five detection outputs, through the project's eager reference
:func:`~spinenet.modeling.postprocess.generate_detections`.

This is how most Ascend deployments avoid NMS on the NPU (Atlas 310's NMS takes fp16 boxes only): the NPU runs
backbone and head, the host decodes, thresholds and runs NMS. What the host needs besides the maps — anchor
configuration, post-processing thresholds, class count, input size, batch — is written by ``spinenet export``
into the ONNX model's metadata (``spinenet.detector``, a JSON of :class:`DetectorParams` plus the class and
anchor counts, next to ``spinenet.image_size`` and ``spinenet.batch_size``), so the ``.onnx`` that ATC compiled
is the one file ``spinenet report --model`` / ``spinenet postprocess --model`` read: no sidecar to lose, and
the thresholds are those of the export (its ``--config_file``/``--params_override`` included), not of a
checkpoint that may differ. The raw maps' shapes come from the same metadata, which is what lets BIN (fp32 or
fp16) and TXT maps be read at all.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spinenet.deploy.msame_format import SEED_OUTPUTS
from spinenet.deploy.output_folders import OutputSpec
from spinenet.io_checks import current_umask

DETECTOR_KEY = "spinenet.detector"


def detector_metadata(model) -> dict[str, str]:
    """ONNX metadata entries that let the host turn this model's raw maps into detections."""
    return {DETECTOR_KEY: json.dumps({"params": dataclasses.asdict(model.params),
                                      "num_classes": int(model.head.num_classes),
                                      "num_anchors": int(model.head.num_anchors)})}


@dataclass(frozen=True)
class ModelInfo:
    """What an exported graph's outputs are: the raw maps (``raw``) or the seed's five detections."""

    path: Path
    raw: bool
    batch_size: int
    image_size: tuple[int, int]
    params: object = None  # DetectorParams (raw maps only)
    num_classes: int = 0  # including background channel 0, as the head outputs it
    num_anchors: int = 0

    def output_specs(self) -> list[OutputSpec]:
        """The outputs in graph (msame/ais_bench index) order, batch included."""
        b = self.batch_size
        if not self.raw:
            return [OutputSpec(n, np.dtype(d), (b, *s)) for n, d, s in SEED_OUTPUTS]
        h, w = self.image_size
        levels = range(self.params.min_level, self.params.max_level + 1)
        cls = [OutputSpec(f"cls_{lv}", np.dtype(np.float32), (b, self.num_anchors * self.num_classes, h >> lv, w >> lv))
               for lv in levels]
        box = [OutputSpec(f"box_{lv}", np.dtype(np.float32), (b, self.num_anchors * 4, h >> lv, w >> lv))
               for lv in levels]
        return cls + box


def read_model_info(path: str | os.PathLike) -> ModelInfo:
    """The :class:`ModelInfo` of an ONNX model written by ``spinenet export``; one-line errors otherwise."""
    import onnx

    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise ValueError(f"--model {path}: give the .onnx that `spinenet export` wrote (and ATC compiled): its "
                         "metadata says what the outputs are")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError, OSError, ...
        raise ValueError(f"--model {path}: cannot read the ONNX model ({e})") from e
    meta = {p.key: p.value for p in proto.metadata_props}
    if "spinenet.image_size" not in meta:
        raise ValueError(f"--model {path}: no spinenet metadata (spinenet.image_size); was it written by "
                         "`spinenet export`?")
    h, w = (int(v) for v in meta["spinenet.image_size"].split(","))
    batch = int(meta.get("spinenet.batch_size", "1"))
    if meta.get("spinenet.postprocess", "v1") != "none":
        return ModelInfo(path, False, batch, (h, w))
    if DETECTOR_KEY not in meta:
        raise ValueError(f"--model {path}: a raw-maps export without the {DETECTOR_KEY} metadata (anchors, "
                         "thresholds): re-export it with this version of `spinenet export --postprocess none`")
    info = _raw_info(path, meta[DETECTOR_KEY], batch, (h, w))
    declared = {o.name: tuple(d.dim_value for d in o.type.tensor_type.shape.dim) for o in proto.graph.output}
    expected = {s.name: s.shape for s in info.output_specs()}
    if declared != expected:
        raise ValueError(f"--model {path}: graph outputs {declared} differ from those its metadata implies "
                         f"{expected}")
    return info


def _raw_info(path: Path, text: str, batch: int, image_size: tuple[int, int]) -> ModelInfo:
    from spinenet.modeling.postprocess import PostprocessParams
    from spinenet.modeling.retinanet import AnchorParams, DetectorParams

    try:
        d = json.loads(text)
        p = dict(d["params"])
        anchor = AnchorParams(**{**p.pop("anchor"), "aspect_ratios": tuple(float(a) for a in
                                                                           d["params"]["anchor"]["aspect_ratios"])})
        post = PostprocessParams(**p.pop("postprocess"))
        params = DetectorParams(**p, anchor=anchor, postprocess=post)
        return ModelInfo(path, True, batch, image_size, params, int(d["num_classes"]), int(d["num_anchors"]))
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"--model {path}: unreadable {DETECTOR_KEY} metadata ({e})") from e


def detections_from_raw(maps: dict[str, np.ndarray], info: ModelInfo) -> dict[str, np.ndarray]:
    """The seed's five outputs (NumDetections, DetectionBoxes, DetectionClasses, DetectionScores, ImageInfo;
    batch first) from one input's raw maps, exactly as ``spinenet evaluate`` post-processes in PyTorch.

    fp16 maps (ATC ``--output_type=FP16``) are widened to float32 first, as the reference runs its
    post-processing in float32.
    """
    import torch

    from spinenet.modeling.anchors import Anchors
    from spinenet.modeling.postprocess import generate_detections
    from spinenet.modeling.retinanet import default_image_info

    p = info.params
    levels = range(p.min_level, p.max_level + 1)
    cls = {lv: torch.from_numpy(np.ascontiguousarray(maps[f"cls_{lv}"], np.float32)) for lv in levels}
    box = {lv: torch.from_numpy(np.ascontiguousarray(maps[f"box_{lv}"], np.float32)) for lv in levels}
    anchors = _anchors(Anchors, info)
    image_info = default_image_info(info.batch_size, *info.image_size)
    with torch.no_grad():
        dets = generate_detections(cls, box, anchors, image_info, p.postprocess)
    return {"NumDetections": dets["num_detections"].numpy().astype(np.int32),
            "DetectionBoxes": dets["detection_boxes"].numpy().astype(np.float32),
            "DetectionClasses": dets["detection_classes"].numpy().astype(np.int32),
            "DetectionScores": dets["detection_scores"].numpy().astype(np.float32),
            "ImageInfo": image_info.numpy().astype(np.float32)}


_ANCHOR_CACHE: dict[tuple, object] = {}


def _anchors(anchors_cls, info: ModelInfo):
    p = info.params
    key = (info.image_size, p.min_level, p.max_level, p.anchor, p.convention)
    if key not in _ANCHOR_CACHE:
        _ANCHOR_CACHE[key] = anchors_cls(info.image_size, p.min_level, p.max_level, p.anchor.num_scales,
                                         p.anchor.aspect_ratios, p.anchor.anchor_size, convention=p.convention).boxes
    return _ANCHOR_CACHE[key]


# ----------------------------------------------------------------------------------------------------------
# A run folder read as detections, whichever graph wrote it


class DetectionSource:
    """An msame/ais_bench/``spinenet infer`` output folder whose ``read(name)`` gives the seed's five outputs:
    read as they are from a detections graph, or post-processed here from a raw-maps graph.

    ``model``: the exported .onnx. Without it the folder is taken as the seed's five outputs, batch 1 (one
    image per input file, as ``spinenet image2bin`` writes them); ``spinenet infer``'s ``summary.json`` names
    its model, which is used when no ``model`` is given and the file is still there.
    """

    def __init__(self, output: str | os.PathLike, model: str | os.PathLike | None = None):
        from spinenet.deploy.output_folders import open_run_folder

        self.run = open_run_folder(output)
        self.notes: list[str] = []
        info = read_model_info(model) if model is not None else self._model_from_summary()
        if info is not None:
            self.info = info
        else:
            self.info = ModelInfo(Path("(none)"), False, 1, (0, 0))
            self._refuse_raw_without_model()
        if self.info.batch_size != 1:
            raise ValueError(f"--model {self.info.path} has batch {self.info.batch_size}: the report takes one image "
                             "per input file (export with --batch_size 1)")
        self.specs = self.info.output_specs()

    def _model_from_summary(self) -> ModelInfo | None:
        """The model ``spinenet infer`` recorded, if it is still there and readable (else None: no model)."""
        summary = self.run.path / "summary.json"
        try:
            model = Path(json.loads(summary.read_text())["model"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if model.suffix.lower() != ".onnx" or not model.is_file():
            return None
        try:
            info = read_model_info(model)
        except ValueError as e:
            self.notes.append(f"the model named in {summary} was not used: {e}")
            return None
        self.notes.append(f"model {model} (from {summary})")
        return info

    def _refuse_raw_without_model(self) -> None:
        for name in sorted(self.run.names())[:1]:
            if self.run.output_path(name, len(SEED_OUTPUTS)) is not None:
                raise ValueError(f"{self.run.path}: {name} has more than {len(SEED_OUTPUTS)} outputs (raw head maps "
                                 "of a --postprocess none export?): pass --model with that .onnx")

    @property
    def path(self) -> Path:
        return self.run.path

    def names(self) -> set[str]:
        return self.run.names()

    def read(self, name: str) -> dict[str, np.ndarray] | None:
        """Input ``name``'s five detection outputs (batch first); None when it has no outputs."""
        arrays = self.run.read(name, self.specs)
        if arrays is None or not self.info.raw:
            return arrays
        return detections_from_raw(arrays, self.info)


def postprocess_folder(output: str | os.PathLike, model: str | os.PathLike, output_dir: str | os.PathLike,
                       outfmt: str = "TXT") -> tuple[Path, int]:
    """Every input's raw maps in ``output`` -> the five seed outputs in msame's layout under ``output_dir``
    (``<name>_output_<k>.txt|bin``), the files the seed's ``test_spinenet_om_data.py`` and ``spinenet report``
    read. Written into a temporary sibling folder renamed at the end: a failure leaves nothing half-written.
    Returns the folder and the number of inputs.
    """
    import shutil
    import tempfile

    from spinenet.deploy.msame_format import write_output

    source = DetectionSource(output, model)
    if not source.info.raw:
        raise ValueError(f"--model {model} is a detections export (its outputs are already the five detections): "
                         "give the --postprocess none export whose raw maps are in the folder")
    target = Path(output_dir)
    if target.exists() and any(target.iterdir()):
        raise ValueError(f"--output_dir {target} is not empty: give a new folder")
    names = sorted(source.names())
    if not names:
        raise FileNotFoundError(f"{source.path} holds no outputs")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for name in names:
            for k, array in enumerate(source.read(name).values()):
                write_output(tmp, name, k, array, outfmt)
        if target.exists():
            target.rmdir()
        tmp.chmod(0o777 & ~current_umask())
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target, len(names)
