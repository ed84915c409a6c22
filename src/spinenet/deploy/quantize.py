"""int8 post-training static quantization of an export (``spinenet export --quantize int8``).

The tool is ONNX Runtime's own ``quantize_static`` (``onnxruntime.quantization``, already a dependency): QDQ
format (QuantizeLinear/DequantizeLinear pairs), weights int8 symmetric per output channel, activations uint8
asymmetric per tensor (the u8 x s8 product x86's VNNI ``vpdpbusd`` takes), ranges by min/max over calibration
images letterboxed exactly as ``spinenet image2bin`` does. OpenVINO reads the QDQ graph and runs each quantized
convolution as an int8 one (its low-precision transformations); ONNX Runtime runs the same file correctly.

What is quantized is each convolution's *input and weights*, not its output (the placement NNCF uses for
OpenVINO): the convolution accumulates in int32 and its result stays float through BatchNorm, swish, the
residual sums and resampling until the next convolution quantizes it. Quantizing the outputs too cost AP 0.025
more on the demo detector (-0.0316 against -0.0089; benchmarks/RESULTS.md, issue 17). The pre-processing, box
decoding and NMS hold no convolution and so stay float by construction. Of the convolutions, the layer groups
of :func:`layer_groups` (the first convolution, each backbone block, the head subnets, the predictors) can be
kept in float; :data:`DEFAULT_FLOAT_GROUPS` is the measured default, and
:func:`spinenet.deploy.quantize_search.quantize_within_ap_drop` backs groups off until an AP bound holds.

The graph quantized is the one with direct convolutions: a Winograd export computes its large 3x3 convolutions
as tile transforms and MatMuls, which are not convolutions to quantize (``spinenet export --quantize`` builds
the direct graph and refuses ``--conv_algorithm winograd``). The head's per-level BatchNorms are folded into
per-level copies of its shared convolutions first (:func:`fold_shared_batchnorm`).

The recipe is recorded in the model's metadata_props (``spinenet.quantize*``).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx

from spinenet.io_checks import current_umask

QUANTIZED_OP_TYPES = ("Conv",)
# Measured on the demo detector, 200 held-out synthetic images, OpenVINO (benchmarks/RESULTS.md, issue 17): every
# convolution int8, AP -0.0089 (worst class -0.019), within issue 17's bounds (0.01, per class 0.03); with the
# predictors float, -0.0063 (-0.015). Float predictors cost SpineNet-49S with COCO's 90 classes 1.5x the int8 time
# at 640x640 (913 -> 1372 ms in one deploy_speed run: its class predictor is its largest convolution), so by
# default every convolution is int8; --int8_float predictors or --max_ap_drop keep groups float where a model
# needs the accuracy.
DEFAULT_FLOAT_GROUPS: tuple[str, ...] = ()
DEFAULT_CALIBRATION_IMAGES = 64
_PREDICT = re.compile(r"/model/head/(class|box)_net/predict")
_BLOCK = re.compile(r"/model/backbone/((?:stem_)?blocks\.\d+)/")


def layer_groups(proto: onnx.ModelProto) -> dict[str, list[str]]:
    """Convolution node names of a spinenet export by layer group, in graph order.

    ``stem``: the first convolution; ``backbone.<block>``: each block of the backbone (its resampling included,
    by node name); ``backbone.reductions``: the 1x1 reductions of the inference rewrites that read one feature for
    several blocks, stacked into one convolution; ``backbone.endpoints``: the 1x1 convolutions to the head's width;
    ``head.class``, ``head.box``: the head's shared 3x3 stacks; ``predictors``: the last
    convolution of each head subnet (logits and box offsets). Other convolutions (none in a spinenet export) go
    to ``other``.
    """
    groups: dict[str, list[str]] = {}
    for node in proto.graph.node:
        if node.op_type not in QUANTIZED_OP_TYPES:
            continue
        name = node.name
        if name.startswith("/model/backbone/stem/"):
            group = "stem"
        elif _PREDICT.match(name):
            group = "predictors"
        elif name.startswith("/model/head/class_net/"):
            group = "head.class"
        elif name.startswith("/model/head/box_net/"):
            group = "head.box"
        elif m := _BLOCK.match(name):
            group = f"backbone.{m.group(1)}"
        elif name.startswith("/model/backbone/stacked."):  # SharedReduceSpineNet's stacked 1x1 reductions
            group = "backbone.reductions"
        elif name.startswith("/model/backbone/endpoints."):
            group = "backbone.endpoints"
        elif name.startswith("/model/backbone/"):
            group = "backbone.other"
        else:
            group = "other"
        groups.setdefault(group, []).append(name)
    return groups


def check_float_groups(groups: Iterable[str], known: Iterable[str]) -> list[str]:
    """``groups`` as a list, each a known group or a prefix of some (``backbone`` = all its blocks)."""
    known = list(known)
    out = []
    for g in groups:
        if not any(k == g or k.startswith(g + ".") for k in known):
            raise ValueError(f"--int8_float group {g!r} is unknown; valid: {', '.join(_group_names(known))}")
        out.append(g)
    return out


def _group_names(known: list[str]) -> list[str]:
    return sorted({*known, *(k.split(".")[0] for k in known)})


def _excluded_nodes(groups: dict[str, list[str]], float_groups: Sequence[str]) -> list[str]:
    return [n for g, names in groups.items() if any(g == f or g.startswith(f + ".") for f in float_groups)
            for n in names]


def fold_shared_batchnorm(proto: onnx.ModelProto) -> int:
    """Fold every ``BatchNormalization`` that alone reads a ``Conv``'s output into that Conv, in place; returns the
    count. The head's 3x3 convolutions are shared across levels with a BatchNorm per level, which the float
    export keeps apart; folded, each level's Conv gets its own weights (the head's ~0.6M parameters per level).

    Why before quantizing: the per-level BN is float work between int8 convolutions that the fold removes, and a
    quantized Conv output *before* its BatchNorm would be the raw sums per tensor, whose channels have ranges far
    apart that the BN then rescales, magnifying the rounding of the narrow ones (measured on the demo detector
    with outputs quantized: AP -0.054 with the BNs apart, -0.032 folded; benchmarks/RESULTS.md, issue 17).
    """
    from onnx import numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    readers: dict[str, int] = {}
    for node in proto.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    for out in proto.graph.output:
        readers[out.name] = readers.get(out.name, 0) + 1
    producer = {o: n for n in proto.graph.node for o in n.output}
    for node in proto.graph.node:  # the exporter shares equal initializers (a BN's ones and zeros) via Identity
        if node.op_type == "Identity" and node.input[0] in inits:
            inits.setdefault(node.output[0], inits[node.input[0]])
    folded, drop = 0, []
    for bn in proto.graph.node:
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1:
            continue
        conv = producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or readers.get(bn.input[0]) != 1 or \
                not all(n in inits for n in (*bn.input[1:5], *conv.input[1:])):
            continue
        gamma, beta, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in bn.input[1:5])
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        weight = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
        bias = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) if len(conv.input) > 2 \
            else np.zeros(weight.shape[0])
        scale = gamma / np.sqrt(var + eps)
        w_name, b_name = f"{conv.name}/folded_weight", f"{conv.name}/folded_bias"
        proto.graph.initializer.extend([
            numpy_helper.from_array((weight * scale.reshape(-1, 1, 1, 1)).astype(np.float32), w_name),
            numpy_helper.from_array(((bias - mean) * scale + beta).astype(np.float32), b_name)])
        del conv.input[1:]
        conv.input.extend([w_name, b_name])
        conv.output[0] = bn.output[0]
        drop.append(bn)
        folded += 1
    for bn in drop:
        proto.graph.node.remove(bn)
    gone = {bn.input[0] for bn in drop}  # the pre-BN tensors
    used = _names_read(proto.graph)
    keep = [i for i in proto.graph.initializer if i.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)
    info = [v for v in proto.graph.value_info if v.name not in gone]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(info)
    return folded


def _names_read(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name read by a node of ``graph`` or of its subgraphs (a Loop body reads outer names)."""
    names = set()
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
                names |= _names_read(sub)
    return names


def calibration_images(annotations: str | os.PathLike, images_dir: str | os.PathLike, size: tuple[int, int],
                       count: int) -> list[np.ndarray]:
    """Up to ``count`` images of a COCO annotation file's image list (in id order), each decoded and letterboxed
    to ``size`` as ``spinenet image2bin`` does: (H, W, 3) uint8. Raises ValueError naming the file when none can
    be read."""
    from spinenet.data.coco import load_coco_json
    from spinenet.deploy.image2bin import letterbox, load_rgb

    doc = load_coco_json(annotations)
    root = Path(images_dir)
    out, problems = [], []
    for img in sorted(doc["images"], key=lambda i: i["id"]):
        if len(out) >= count:
            break
        try:
            out.append(letterbox(load_rgb(root / img["file_name"]), size)[0])
        except (ValueError, FileNotFoundError) as e:
            problems.append(str(e))
    if not out:
        first = problems[0] if problems else "it lists no images"
        raise ValueError(f"--calibration_data {annotations} {images_dir}: no readable image ({first}); pass the "
                         "annotation file and the folder its file_name entries are relative to")
    return out


def _batches(images: Sequence[np.ndarray], batch: int) -> list[np.ndarray]:
    """(batch, H, W, 3) arrays of ``images``; the last one filled up by repeating its first image."""
    out = []
    for i in range(0, len(images), batch):
        chunk = list(images[i:i + batch])
        chunk += [chunk[0]] * (batch - len(chunk))
        out.append(np.stack(chunk))
    return out


def quantize_int8(fp32_path: str | os.PathLike, output: str | os.PathLike, images: Sequence[np.ndarray], *,
                  float_groups: Sequence[str] = DEFAULT_FLOAT_GROUPS, metadata: dict[str, str] | None = None,
                  calibration_cache: str | os.PathLike | None = None) -> Path:
    """Quantize the export at ``fp32_path`` with ``images`` ((H, W, 3) uint8, letterboxed to its size) as
    calibration data; the groups in ``float_groups`` (:func:`layer_groups` names or prefixes) stay float.
    Writes ``output`` atomically, with the recipe in its metadata_props; returns its path.

    ``calibration_cache``: ONNX Runtime's file of activation ranges; written by the first call, read by later
    ones (which must keep a superset of the first call's groups float), so re-quantizing skips calibrating.
    """
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    fp32_path, output = Path(fp32_path), Path(output)
    proto = onnx.load(fp32_path)
    folded = fold_shared_batchnorm(proto)
    input_name = proto.graph.input[0].name
    batch = proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value or 1
    groups = layer_groups(proto)
    float_groups = check_float_groups(float_groups, groups)
    excluded = _excluded_nodes(groups, float_groups)
    feeds = _batches(images, batch)

    class _Reader:  # onnxruntime.quantization.CalibrationDataReader's protocol
        def __init__(self):
            self._it = iter(feeds)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {input_name: x}

        def __len__(self):
            return len(feeds)

        def set_range(self, start, end):  # called by ORT's strided calibration only
            self._it = iter(feeds[start:end])

    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(fd)
    try:
        import logging

        quiet = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # ORT's "consider pre-processing" advice, printed every time
        try:
            quantize_static(proto, tmp, _Reader(), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(QUANTIZED_OP_TYPES), per_channel=True, reduce_range=False,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=excluded, calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False,
                                           "OpTypesToExcludeOutputQuantization": ["Conv"]},
                            calibration_cache_path=calibration_cache)
        finally:
            logging.getLogger().setLevel(quiet)
        q = onnx.load(tmp)
        n_conv = sum(len(v) for v in groups.values())
        meta = {p.key: p.value for p in proto.metadata_props}
        meta.update({
            "spinenet.quantize": "int8",
            "spinenet.quantize.tool": f"onnxruntime.quantization.quantize_static {onnxruntime.__version__}",
            "spinenet.quantize.format": "QDQ on convolution inputs and weights (outputs float); weights int8 "
                                        "symmetric per output channel, activations uint8 asymmetric per tensor, "
                                        "MinMax ranges",
            "spinenet.quantize.float_groups": ",".join(float_groups) or "none",
            "spinenet.quantize.int8_convs": f"{n_conv - len(excluded)}/{n_conv}",
            "spinenet.quantize.float_parts": "pre-processing, box decoding, NMS (no convolution); "
                                             + (", ".join(float_groups) or "no convolution group"),
            "spinenet.quantize.calibration_images": str(len(images)),
            "spinenet.quantize.head_batchnorms_folded": str(folded),
            **(metadata or {}),
        })
        onnx.helper.set_model_props(q, meta)
        onnx.save(q, tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return output


def evaluate_onnx(path: str | os.PathLike, annotations: str | os.PathLike, images_dir: str | os.PathLike, *,
                  backend: str = "onnxruntime", threads: int | None = None, precision: str = "fp32",
                  session=None) -> dict:
    """COCO metrics (``spinenet evaluate``'s dict, per-class AP included) of an export with post-processing over
    every image of ``annotations``, letterboxed as ``spinenet image2bin`` does: the chain ``image2bin -> infer
    -> report --annotations`` in one process."""
    import torch

    from spinenet.data.coco import load_coco_json
    from spinenet.deploy.image2bin import letterbox, load_rgb
    from spinenet.deploy.runtimes import open_session
    from spinenet.engine.evaluate import CocoEvaluator

    sess = session or open_session(path, backend, "cpu", threads, precision)
    if "DetectionBoxes" not in sess.output_names:
        raise ValueError(f"{path}: evaluating needs an export with post-processing (--postprocess v1)")
    batch, size = sess.input_shape[0], tuple(sess.input_shape[1:3])
    evaluator = CocoEvaluator(annotations)
    images = sorted(load_coco_json(annotations)["images"], key=lambda i: i["id"])
    for i in range(0, len(images), batch):
        chunk = images[i:i + batch]
        pixels, infos = [], []
        for img in chunk:
            x, scale, _ = letterbox(load_rgb(Path(images_dir) / img["file_name"]), size)
            pixels.append(x)
            infos.append(np.array([[img["height"], img["width"]], size, scale, [0, 0]], np.float32))
        n = len(pixels)
        pixels += [pixels[0]] * (batch - n)
        out = sess.run(np.stack(pixels))
        dets = {"detection_boxes": torch.from_numpy(out["DetectionBoxes"][:n]),
                "detection_classes": torch.from_numpy(out["DetectionClasses"][:n]),
                "detection_scores": torch.from_numpy(out["DetectionScores"][:n])}
        evaluator.process(dets, torch.from_numpy(np.stack(infos)), [img["id"] for img in chunk])
    return evaluator.evaluate(verbose=False)
