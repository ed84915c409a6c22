"""ONNX export with the seed's frozen-graph signature (deployment contract §1.3-§1.4, reference spec §5.4).

Input ``Placeholder``: uint8 ``[B, H, W, 3]`` NHWC RGB (``image_tensor``) or float32 already normalised
(``raw_image_tensor``). Outputs, in the order ATC's ``--out_nodes`` and msame's indices expect:
``NumDetections`` int32 [B], ``DetectionBoxes`` float32 [B, 100, 4] (ymin, xmin, ymax, xmax in input pixels),
``DetectionClasses`` int32 [B, 100], ``DetectionScores`` float32 [B, 100] (padding -1), ``ImageInfo`` float32
[B, 4, 2]. With ``postprocess="none"`` the outputs are the raw head maps ``cls_3..cls_7``, ``box_3..box_7``
(NCHW, as :class:`~spinenet.modeling.retinanet.RetinaNet` returns them).

The graph is static (fixed batch and size), opset 11-13, with no ``NonZero``. How it is built for each runtime
(convolutions, NMS form, operator list checked) is the target's profile, :mod:`spinenet.deploy.targets`:
``target="ascend"`` gives a graph of ATC's listed operators only (no ``Loop``).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn

from spinenet.deploy.host_postprocess import detector_metadata
from spinenet.deploy.onnx_graph import annotate_loop_shapes, check_exported_model, fold_integer_constants
from spinenet.deploy.optimize import DEFAULT_WINOGRAD_MIN_PIXELS, optimize_for_inference
from spinenet.deploy.postprocess_export import DEFAULT_PRE_NMS_TOPK, generate_detections_export
from spinenet.deploy.precision import name_unnamed_nodes
from spinenet.deploy.targets import export_profile
from spinenet.io_checks import current_umask
from spinenet.modeling.retinanet import RetinaNet, default_image_info
from spinenet.modeling.spinenet_mobile import SpineNetMobile

INPUT_TYPES = ("image_tensor", "raw_image_tensor")
POSTPROCESS = ("v1", "none")
INPUT_NAME = "Placeholder"  # the seed's unnamed tf.placeholder; ATC's --input_shape="Placeholder:1,640,640,3"
DETECTION_OUTPUTS = ("NumDetections", "DetectionBoxes", "DetectionClasses", "DetectionScores", "ImageInfo")
# preprocess_ops / input_utils.normalize_image: ImageNet mean and std of RGB in [0, 1].
MEAN_RGB = (0.485, 0.456, 0.406)
STDDEV_RGB = (0.229, 0.224, 0.225)


def raw_output_names(min_level: int, max_level: int) -> tuple[str, ...]:
    """Output names of a ``postprocess="none"`` export: ``cls_3..cls_7`` then ``box_3..box_7``."""
    levels = range(min_level, max_level + 1)
    return tuple(f"cls_{lvl}" for lvl in levels) + tuple(f"box_{lvl}" for lvl in levels)


class ExportWrapper(nn.Module):
    """The deployed graph: preprocessing + RetinaNet + static-shape post-processing.

    ``forward(images)`` takes ``images`` (B, H, W, 3) NHWC RGB: uint8 for ``image_tensor``, normalised float32
    for ``raw_image_tensor``; (H, W) = ``image_size``, B = ``batch_size``. The reference resizes and pads
    inside its graph; at the fixed export size that is the identity, and image_info is the constant
    ``[[H, W], [H, W], [1, 1], [0, 0]]``. Returns the five detection outputs (``postprocess="v1"``) or the ten
    raw maps (``"none"``), in :data:`DETECTION_OUTPUTS` / :func:`raw_output_names` order.

    ``conv_algorithm``: None runs ``model`` as it is (the eager reference); "direct" or "winograd" runs the
    rewritten copy of :func:`~spinenet.deploy.optimize.optimize_for_inference` (BN folded, background class
    channels dropped when post-processing follows, and for "winograd" the large 3x3 convolutions as
    Winograd F(4x4, 3x3)). ``nms_rounds`` and ``float_sort_keys``: see
    :func:`~spinenet.deploy.postprocess_export.generate_detections_export` (None/False: the ``Loop`` form).
    """

    def __init__(self, model: RetinaNet, *, batch_size: int = 1, image_size: tuple[int, int] = (640, 640),
                 input_type: str = "image_tensor", postprocess: str = "v1",
                 pre_nms_topk: int = DEFAULT_PRE_NMS_TOPK, conv_algorithm: str | None = None,
                 winograd_min_pixels: int = DEFAULT_WINOGRAD_MIN_PIXELS, nms_rounds: int | None = None,
                 float_sort_keys: bool = False):
        super().__init__()
        if input_type not in INPUT_TYPES:
            raise ValueError(f"input_type {input_type!r} is not supported; valid: {', '.join(INPUT_TYPES)} "
                             "(image_bytes and tf_example need a JPEG decoder in the graph, which ONNX lacks)")
        if postprocess not in POSTPROCESS:
            raise ValueError(f"postprocess {postprocess!r} is unknown; valid: {', '.join(POSTPROCESS)}")
        h, w = (int(s) for s in image_size)
        if h % 128 or w % 128 or batch_size < 1:
            raise ValueError(f"image_size {h}x{w} must be multiples of 128 (2^max_level) and batch_size "
                             f"({batch_size}) >= 1")
        if conv_algorithm is not None:  # the inference rewrites (an optimised copy; ``model`` is untouched)
            model = optimize_for_inference(model, conv_algorithm=conv_algorithm, drop_background=postprocess != "none",
                                           winograd_min_pixels=winograd_min_pixels)
        self.model = model.eval()
        self.batch_size, self.image_size = int(batch_size), (h, w)
        self.input_type, self.postprocess, self.pre_nms_topk = input_type, postprocess, pre_nms_topk
        self.nms_rounds, self.float_sort_keys = nms_rounds, float_sort_keys
        self.levels = list(range(model.params.min_level, model.params.max_level + 1))
        self.register_buffer("anchors", model.anchors((h, w)).clone(), persistent=False)  # (N, 4)
        self.register_buffer("image_info", default_image_info(batch_size, h, w), persistent=False)  # (B, 4, 2)
        self.register_buffer("mean", torch.tensor(MEAN_RGB, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(STDDEV_RGB, dtype=torch.float32), persistent=False)

    @property
    def output_names(self) -> tuple[str, ...]:
        if self.postprocess == "none":
            return raw_output_names(self.levels[0], self.levels[-1])
        return DETECTION_OUTPUTS

    def example_input(self) -> Tensor:
        """A zero input of the exported shape and dtype."""
        dtype = torch.uint8 if self.input_type == "image_tensor" else torch.float32
        return torch.zeros(self.batch_size, *self.image_size, 3, dtype=dtype)

    def preprocess(self, images: Tensor) -> Tensor:
        """(B, H, W, 3) NHWC -> normalised (B, 3, H, W) float32, as the reference's ``normalize_image``."""
        # Transposed first: the per-channel arithmetic below is then a broadcast over whole (H, W) planes, which
        # runtimes do far faster than over a last axis of 3 (10 ms vs 1 ms in ONNX Runtime at 640x640).
        x = images.permute(0, 3, 1, 2)  # (B, 3, H, W)
        if self.input_type == "image_tensor":
            # tf.image.convert_image_dtype(uint8 -> float32) multiplies by float32(1/255) (not a division),
            # then normalize_image subtracts the mean and divides by the std, in that order.
            x = x.to(torch.float32) * (1.0 / 255.0)
            x = (x - self.mean.reshape(1, 3, 1, 1)) / self.std.reshape(1, 3, 1, 1)
        return x

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        return self._run(images, with_exact=False)[0]

    def forward_checked(self, images: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
        """``forward``'s five outputs and ``nms_exact`` (B,) bool: whether the ``nms_rounds`` unrolled rounds
        decided every output slot (then the outputs equal the ``Loop`` form's). Sync-free, one graph under
        ``torch.compile``; the caller reads the flag afterwards (:class:`~spinenet.deploy.compiled.CompiledDetector`).
        """
        if self.postprocess == "none" or self.nms_rounds is None:
            raise ValueError("forward_checked needs post-processing with a fixed nms_rounds")
        return self._run(images, with_exact=True)

    def _run(self, images: Tensor, with_exact: bool) -> tuple[tuple[Tensor, ...], Tensor | None]:
        expected = (self.batch_size, *self.image_size, 3)
        if tuple(images.shape) != expected:
            raise ValueError(f"{INPUT_NAME} must have shape {expected} (B, H, W, 3), got {tuple(images.shape)}")
        cls_outputs, box_outputs = self.model(self.preprocess(images))
        if self.postprocess == "none":
            maps = tuple(cls_outputs[lvl] for lvl in self.levels) + tuple(box_outputs[lvl] for lvl in self.levels)
            return maps, None
        dets = generate_detections_export(cls_outputs, box_outputs, self.anchors, self.image_info,
                                          self.model.params.postprocess, self.pre_nms_topk,
                                          background_channel=self.model.head.background_channel,
                                          nms_rounds=self.nms_rounds, float_sort_keys=self.float_sort_keys,
                                          with_exact=with_exact)
        return (dets["num_detections"], dets["detection_boxes"], dets["detection_classes"],
                dets["detection_scores"], _computed_copy(self.image_info)), dets.get("nms_exact")


def _computed_copy(x: Tensor) -> Tensor:
    """``x`` through an operator, so the graph output ``ImageInfo`` is a node's output and not a bare
    initializer (which some converters, ATC among them, can't bind to an output node). Numerically the identity."""
    return torch.maximum(x, x)


def export_onnx(model: RetinaNet, path: str | os.PathLike, batch_size: int = 1,
                image_size: tuple[int, int] = (640, 640), opset: int = 13, input_type: str = "image_tensor",
                postprocess: str = "v1", *, pre_nms_topk: int = DEFAULT_PRE_NMS_TOPK,
                conv_algorithm: str | None = None, winograd_min_pixels: int = DEFAULT_WINOGRAD_MIN_PIXELS,
                metadata: dict[str, str] | None = None, target: str = "onnxruntime", cann: str | None = None,
                nms_rounds: int | None = None) -> Path:
    """Export ``model`` to ONNX at ``path`` (written atomically) and check the result; returns the path.

    ``target`` ("onnxruntime", also for OpenVINO, or "ascend" with ``cann`` "5".."8") picks the profile
    (:func:`~spinenet.deploy.targets.export_profile`): convolutions, NMS form and the operator list checked.
    ``conv_algorithm`` (see :class:`ExportWrapper`) overrides the profile's: "winograd" is the fastest on CPUs
    (ONNX Runtime, OpenVINO); "direct" keeps every convolution a Conv node, for compilers with their own
    convolution engines (ATC for Ascend, TensorRT). ``winograd_min_pixels``: the smallest feature map (H*W)
    computed with Winograd. ``nms_rounds`` overrides the Ascend profile's unrolled round count.

    The checks (:func:`~spinenet.deploy.onnx_graph.check_exported_model`): ``onnx.checker`` (full), strict
    shape inference, every graph input/output/value_info shape static, none of the data-dependent-shape operators
    anywhere (subgraphs included), constant Pad pads, the requested opset, and for Ascend every node's operator
    on ATC's list for that CANN version. A graph that fails is not written.
    """
    profile = export_profile(target, cann)
    low, high = profile.opsets
    if not low <= opset <= high:
        # 11: TopK's lower-index tie rule and Clip with tensor bounds; 13: the newest ATC in CANN 5/6 takes.
        raise ValueError(f"opset {opset} is not supported for {profile.target}; valid: {low}-{high}")
    conv_algorithm = conv_algorithm or profile.conv_algorithm
    if isinstance(model.backbone, SpineNetMobile):
        conv_algorithm = "direct"  # depthwise/separable convs: no Winograd rewrite applies (optimize.py), say so
    if nms_rounds is not None and profile.nms_rounds is None:
        raise ValueError("nms_rounds applies to the unrolled NMS of target ascend only")
    nms_rounds = nms_rounds or profile.nms_rounds
    wrapper = ExportWrapper(model, batch_size=batch_size, image_size=image_size, input_type=input_type,
                            postprocess=postprocess, pre_nms_topk=pre_nms_topk,
                            conv_algorithm=conv_algorithm, winograd_min_pixels=winograd_min_pixels,
                            nms_rounds=nms_rounds, float_sort_keys=profile.float_sort_keys).eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        _torch_export(wrapper, tmp, opset)
        proto = onnx.load(tmp)
        fold_integer_constants(proto)
        annotate_loop_shapes(proto)
        name_unnamed_nodes(proto)  # ATC's --keep_dtype and its error messages name nodes
        meta = {"spinenet.input_type": input_type, "spinenet.postprocess": postprocess,
                "spinenet.image_size": f"{wrapper.image_size[0]},{wrapper.image_size[1]}",
                "spinenet.batch_size": str(batch_size), "spinenet.pre_nms_topk": str(pre_nms_topk),
                "spinenet.conv_algorithm": conv_algorithm, "spinenet.target": profile.target,
                "spinenet.nms": "loop" if nms_rounds is None else f"unrolled:{nms_rounds}",
                "spinenet.num_classes": str(model.num_classes), **detector_metadata(model), **(metadata or {})}
        onnx.helper.set_model_props(proto, meta)
        # Keep the inferred types: the exporter declares some outputs with symbolic dims (e.g. the batch of
        # NumDetections), which inference resolves to the static ones; tools reading the file see those.
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
        check_exported_model(proto, opset, profile.operators)
        onnx.save(proto, tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes the file private; give it the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _torch_export(wrapper: ExportWrapper, path: str, opset: int) -> None:
    """``torch.onnx.export`` with the TorchScript exporter (``dynamo=False``): at opset 13 it writes a clean
    static graph, and it turns the scripted NMS loop into one ONNX Loop.

    ``training=PRESERVE`` (the model is in eval mode): EVAL would run the exporter's eval peephole pass,
    which folds BatchNorm into the preceding Conv and so changes the numerics slightly.
    """
    with warnings.catch_warnings():
        # The exporter warns about every Python int and bool read off a tensor; at a fixed shape they are meant.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        # PRESERVE is chosen on purpose (see above); the model is in eval mode, so folding touches no parameter.
        warnings.filterwarnings("ignore", message=".*constant folding be turned off.*")
        # The Slices it can't fold (F.pad's pad list) are folded by fold_integer_constants afterwards.
        warnings.filterwarnings("ignore", message=".*Only steps=1 can be constant folded.*")
        with torch.no_grad():
            torch.onnx.export(wrapper, (wrapper.example_input(),), path, dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=list(wrapper.output_names),
                              training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=True,
                              export_params=True)
