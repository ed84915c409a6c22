"""Export a spinenet checkpoint as a TF1 Cloud TPU checkpoint (``spinenet convert --to tpu``), without TensorFlow.

The seed's own deployment route starts from a ``tf.compat.v1.train.Saver`` checkpoint of the ``tensorflow/tpu``
detection code: ``freeze_graph.py`` builds that code's serving graph, restores the checkpoint into it and freezes
it, and ``atc --framework=3`` compiles the frozen graph. This module writes such a checkpoint from a model trained
or converted here, so that route runs unchanged:

* ``model.ckpt-STEP.index`` / ``.data-00000-of-00001`` (:mod:`spinenet.convert.tf_bundle_writer`, the bytes TF's
  ``Saver`` writes) holding every variable of the TPU code's serving graph under its TF1 name and layout --
  the names :func:`~spinenet.convert.tpu.tf1_variable_layout` regenerates for the importer, kernels OIHW -> HWIO,
  BN gamma/beta/moving statistics as they are -- plus ``global_step`` (int64), as every TPU training checkpoint
  has it;
* ``checkpoint``, the state file naming it (``freeze_graph.py`` and ``tf.train.latest_checkpoint`` accept the
  folder or the prefix);
* ``params.yaml``, the reference-format sections that define the network (variant, classes, head, anchors,
  activation and BN constants, post-processing, input size), to pass as ``freeze_graph.py --config_file``:
  the stock ``spinenet49S_retinanet.yaml`` says swish, and a relu model restored into a swish graph would load
  without complaint and compute something else.

Optimizer slots. A restore for inference (``freeze_graph.py``, ``export_saved_model.py``, the eval graph)
builds no optimizer, and ``Saver.restore`` only looks up the graph's own variables, so extra tensors are
harmless and absent ``/Momentum`` slots are not missed. Resuming training with the TPU code is different: its
Estimator restores the training graph's every variable, ``<var>/Momentum`` included, so ``optimizer_slots``
writes one zero slot per trainable variable (kernels, biases, BN gamma and beta), as a fresh
``MomentumOptimizer`` would hold. The test fixture's training checkpoint, written by TF from the TPU code's
training graph, has exactly these names.

Only models the TPU code can build are written: the ``tpu`` convention (the ``model_garden`` one pads stride-2
convs, places anchors and decodes boxes differently, so the same weights would compute other outputs there),
an activation and variant the TPU code knows (:data:`TPU_ACTIVATIONS`, :data:`TPU_MODEL_IDS`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from spinenet.config import ExperimentConfig, dump_yaml
from spinenet.convert.model_garden import BN_FIELDS, ConversionError
from spinenet.convert.tf_bundle_writer import write_bundle, write_checkpoint_state
from spinenet.convert.tpu import tf1_variable_layout
from spinenet.io_checks import ensure_writable_dir, write_text_atomic

__all__ = ["TPU_ACTIVATIONS", "TPU_MODEL_IDS", "TPUExportResult", "tpu_variables", "tpu_checkpoint_tensors",
           "check_tpu_config", "tpu_params", "write_tpu_checkpoint", "export_tpu"]

# tensorflow/tpu@7dc921f models/official/detection/modeling/architecture/nn_ops.py, BatchNormActivation:
# "activation: activation function. Support 'relu' and 'swish'." (any other value raises ValueError there).
TPU_ACTIVATIONS = ("relu", "swish")
# tensorflow/tpu@7dc921f models/official/detection/modeling/architecture/spinenet.py, SCALING_MAP keys.
TPU_MODEL_IDS = ("49S", "49", "96", "143", "190")
# Trainable variables of the TPU code's graph (BN moving statistics are not): each gets a /Momentum slot.
TRAINABLE_LEAVES = ("kernel", "bias", "gamma", "beta")
_PT_ATTR = {"kernel": "weight", "bias": "bias", **BN_FIELDS}


@dataclass
class TPUExportResult:
    prefix: Path
    model_id: str
    num_classes: int
    num_variables: int
    num_slots: int
    step: int
    params_file: Path
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        slots = f" + {self.num_slots} zero /Momentum slots" if self.num_slots else ""
        folder = self.prefix.parent
        lines = [f"wrote {self.prefix}.index/.data-00000-of-00001 (+ checkpoint, {self.params_file.name}): "
                 f"SpineNet-{self.model_id} RetinaNet, {self.num_classes} classes, {self.num_variables} TF1 "
                 f"variables + global_step {self.step}{slots}",
                 f"freeze it with the seed's script: python freeze_graph.py --model=retinanet "
                 f"--config_file={self.params_file} --checkpointpath={self.prefix} --output={folder}"]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def tpu_variables(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{TF1 variable name: tensor in the TF layout}`` for every conv and BN of ``model``, in creation order.

    Works on meta tensors (names and shapes only). Every tensor of the model's state dict except
    ``num_batches_tracked`` must be used exactly once, so nothing is silently left out of the checkpoint.
    """
    state = model.state_dict()
    module_names = {id(m): n for n, m in model.named_modules()}
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for entry in tf1_variable_layout(model):
        for var in entry.variables():
            leaf = var.rsplit("/", 1)[-1]
            key = f"{module_names[id(entry.module)]}.{_PT_ATTR[leaf]}"
            if key in used or var in out:
                raise ConversionError(f"{key} would be written twice (as {var}); the layout is inconsistent")
            used.add(key)
            value = state[key]
            out[var] = value.permute(2, 3, 1, 0) if leaf == "kernel" else value  # OIHW -> HWIO
    left = [k for k in state if k not in used and not k.endswith("num_batches_tracked")]
    if left:
        raise ConversionError(f"{len(left)} tensors of the model have no TF1 variable (e.g. {', '.join(left[:4])}); "
                              "the TPU code's graph has no place for them")
    return out


def tpu_checkpoint_tensors(model: nn.Module, *, step: int = 0, optimizer_slots: bool = False
                           ) -> dict[str, np.ndarray]:
    """The tensors of the TF1 checkpoint: variables as float32, ``global_step`` int64, optional zero slots."""
    tensors: dict[str, np.ndarray] = {}
    for name, value in tpu_variables(model).items():
        tensors[name] = np.ascontiguousarray(value.detach().cpu().to(torch.float32).numpy())
        if optimizer_slots and name.rsplit("/", 1)[-1] in TRAINABLE_LEAVES:
            tensors[f"{name}/Momentum"] = np.zeros(value.shape, np.float32)
    tensors["global_step"] = np.asarray(step, np.int64)
    return tensors


def check_tpu_config(cfg: ExperimentConfig, source: str) -> None:
    """Refuse models the TPU code can't build or would compute differently, saying which setting is the problem."""
    problems = []
    if cfg.architecture.convention != "tpu":
        problems.append(f"it follows the {cfg.architecture.convention!r} convention (stride-2 padding, anchor "
                        "centres and box decoding differ from the TPU code's, so its weights would give other "
                        "outputs there); only architecture.convention 'tpu' models can be written")
    if cfg.batch_norm_activation.activation not in TPU_ACTIVATIONS:
        problems.append(f"activation {cfg.batch_norm_activation.activation!r} is not one the TPU code has "
                        f"({', '.join(TPU_ACTIVATIONS)})")
    if cfg.architecture.backbone != "spinenet":
        problems.append(f"backbone {cfg.architecture.backbone!r}: --to tpu writes SpineNet's layout only "
                        "(SpineNet-Mobile's spinenet_mbconv layout is read by --from tpu, not written)")
    elif cfg.spinenet.model_id not in TPU_MODEL_IDS:
        problems.append(f"SpineNet-{cfg.spinenet.model_id} is not a TPU-code variant ({', '.join(TPU_MODEL_IDS)})")
    head = cfg.retinanet_head
    if head.use_separable_conv or not head.use_batch_norm:
        problems.append("the head must use plain convs with batch norm (retinanet_head.use_separable_conv false, "
                        "use_batch_norm true), as the TPU checkpoint layout has them")
    if problems:
        raise ConversionError(f"{source}: can't write a TF1 TPU checkpoint: " + "; ".join(problems))


def tpu_params(cfg: ExperimentConfig) -> dict:
    """The reference-format sections that define the network, for ``freeze_graph.py --config_file``. Only keys
    that the TPU code's ``config_generator('retinanet')`` has (its override there is strict)."""
    a, bn, head, anchor = cfg.architecture, cfg.batch_norm_activation, cfg.retinanet_head, cfg.anchor
    pp = cfg.postprocess
    return {
        "architecture": {"backbone": a.backbone, "multilevel_features": a.multilevel_features,
                         "min_level": a.min_level, "max_level": a.max_level, "num_classes": a.num_classes},
        "spinenet": {"model_id": cfg.spinenet.model_id},
        "batch_norm_activation": {"batch_norm_momentum": bn.batch_norm_momentum,
                                  "batch_norm_epsilon": bn.batch_norm_epsilon, "activation": bn.activation},
        "retinanet_head": {"num_convs": head.num_convs, "num_filters": head.num_filters},
        "anchor": {"num_scales": anchor.num_scales, "aspect_ratios": list(anchor.aspect_ratios),
                   "anchor_size": anchor.anchor_size},
        "retinanet_parser": {"output_size": list(cfg.retinanet_parser.output_size)},
        "postprocess": {"apply_nms": pp.apply_nms, "use_batched_nms": pp.use_batched_nms,
                        "nms_version": pp.nms_version, "max_total_size": pp.max_total_size,
                        "nms_iou_threshold": pp.nms_iou_threshold, "score_threshold": pp.score_threshold,
                        "pre_nms_num_boxes": pp.pre_nms_num_boxes, "apply_sigmoid": pp.apply_sigmoid},
    }


def _prepare_folder(output: Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise ConversionError(f"--output {output} is a file; --to tpu writes a folder (model.ckpt-STEP.*, "
                              "checkpoint, params.yaml): pass a folder path")
    if output.is_dir() and not overwrite:
        found = sorted(output.glob("*.index")) + sorted(output.glob("checkpoint"))
        if found:
            raise ConversionError(f"--output {output} already holds a TF checkpoint ({found[0].name}); pass "
                                  "--overwrite to replace it, or choose an empty folder")
    ensure_writable_dir(output, "--output")  # created if missing; a real probe file, not os.access


def write_tpu_checkpoint(model: nn.Module, cfg: ExperimentConfig, output: str | os.PathLike, *, step: int = 0,
                         optimizer_slots: bool = False, overwrite: bool = False,
                         source: str = "model") -> TPUExportResult:
    """Write ``model`` (built from ``cfg``) into the folder ``output`` as a TF1 TPU checkpoint; see the module
    docstring. On any failure, files this call created are removed again."""
    check_tpu_config(cfg, source)
    if step < 0:
        raise ConversionError(f"--step {step}: global_step must be >= 0")
    tensors = tpu_checkpoint_tensors(model, step=step, optimizer_slots=optimizer_slots)
    out = Path(output)
    _prepare_folder(out, overwrite)
    prefix = out / f"model.ckpt-{step}"
    params_file = out / "params.yaml"
    targets = [Path(f"{prefix}.data-00000-of-00001"), Path(f"{prefix}.index"), out / "checkpoint", params_file]
    existed = {p for p in targets if p.exists()}
    try:
        write_bundle(prefix, tensors)
        write_checkpoint_state(out, prefix.name)
        header = (f"# {cfg.spinenet.model_id} RetinaNet written by `spinenet convert --to tpu` from {source}.\n"
                  "# Reference-format (tensorflow/tpu models/official/detection) params: pass as freeze_graph.py "
                  "--config_file.\n")
        write_text_atomic(params_file, header + dump_yaml(tpu_params(cfg)))
    except OSError as e:
        for p in targets:
            if p not in existed:
                p.unlink(missing_ok=True)
        raise ConversionError(f"--output {out}: writing the checkpoint failed ({e}); nothing was left behind") \
            from None
    n_slots = sum(1 for n in tensors if n.endswith("/Momentum"))
    return TPUExportResult(prefix, cfg.spinenet.model_id, cfg.architecture.num_classes,
                           len(tensors) - n_slots - 1, n_slots, step, params_file)


def export_tpu(checkpoint: str | os.PathLike, output: str | os.PathLike, *, step: int | None = None,
               optimizer_slots: bool = False, overwrite: bool = False) -> TPUExportResult:
    """``spinenet convert --to tpu``: a spinenet ``.pt`` checkpoint -> a TF1 TPU checkpoint folder."""
    from spinenet.engine.checkpoint import checkpoint_config, load_model, read_checkpoint

    src = Path(checkpoint)
    cfg = checkpoint_config(read_checkpoint(src), str(src))
    check_tpu_config(cfg, str(src))  # before building the model: a refusal costs nothing
    model, ckpt = load_model(src)
    notes = []
    if step is None:
        step = int(ckpt.get("step") or 0)
        notes.append(f"global_step {step}: " + ("the training step stored in the checkpoint" if ckpt.get("step")
                                                else "none stored in the checkpoint; --step sets it"))
    result = write_tpu_checkpoint(model, cfg, output, step=step, optimizer_slots=optimizer_slots,
                                  overwrite=overwrite, source=str(src))
    result.notes += notes
    return result
