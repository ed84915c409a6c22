"""Tensor-core widths for training: every channel count of a RetinaNet rounded up to a multiple (8) with channels
that are exactly zero, computing the same function with the same parameters.

SpineNet-49S's widths (41, 83, 166, 164, 20, 332 ...) and the predictors' 819 / 36 outputs are not multiples of
8, which tensor-core convolution kernels want (bf16 MMA tiles are 8 or 16 channels deep). :func:`pad_channels`
changes the model in place so that each convolution *computes* at the rounded widths while its *parameters*
keep their own shapes:

* a convolution's ``weight`` and ``bias`` stay the trained, unpadded parameters; its forward pads them with
  zero filters (extra outputs) and zero taps (extra inputs) on the fly (``F.pad``, a few small copies a step).
  The padded entries are constants, not parameters, so they are exactly zero after any number of SGD steps
  with momentum, L2 weight decay and global-norm clipping: no gradient reaches them, no optimiser state holds
  them, and the L2 term and the clipping norm see exactly the parameters the unpadded model has;
* a BatchNorm's ``weight``/``bias`` are padded the same way (gamma = beta = 0 on padded channels); its running
  statistics are stored padded (0 / 1 there) because ``F.batch_norm`` updates them in place, and state-dict
  hooks strip / re-pad them, so the model's ``state_dict`` has the standard layout;
* the image input (3 channels) is not padded, and the predictors' outputs are padded and sliced back, so the
  module's outputs have exactly the original shapes.

A padded channel holds 0 everywhere: its filters and bias are 0; BN maps it to ``0 * (0 - mean) / sqrt(var +
eps) + 0 = 0``; SiLU(0) = ReLU(0) = 0; sums, max-pooling (of windows that always hold real pixels), upsampling
and stochastic depth keep 0; and every convolution reads it through zero taps. Gradients flowing into padded
activations are zero for the same reason. Only the order of float additions inside a convolution may change.

Checkpoints, the optimiser's momentum buffers, the L2 term, the clipping norm and the parameter count are
therefore those of the unpadded model: ``evaluate``/``export``/``convert`` read checkpoints of a padded run
unchanged, and a resume may switch padding on or off (like ``--channels_last``, it changes layout, not the run).

Off by default (``spinenet train --pad_channels 8`` turns it on): it has not been measured on a GPU yet
(``benchmarks/gpu_bench`` can compare the two); only a measured gain there should make it the CUDA default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from spinenet.modeling.layers import BatchNorm2dTF, Conv2dTF


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


class _PaddedConvMixin:
    """Convolution at padded widths from unpadded parameters (see the module docstring).

    :func:`pad_channels` swaps the class of an existing module rather than building a new one, so the parameters
    stay the very objects an optimiser, DDP or a hook may already hold, under the same state-dict names.
    """

    pad_in: int = 0
    pad_out: int = 0
    slice_output: bool = False

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        out = weight.shape[0]
        weight = F.pad(weight, (0, 0, 0, 0, 0, self.pad_in, 0, self.pad_out))
        if bias is not None:
            bias = F.pad(bias, (0, self.pad_out))
        y = super()._conv_forward(x, weight, bias)  # type: ignore[misc]
        return y[:, :out] if self.slice_output else y


class PaddedConv2d(_PaddedConvMixin, nn.Conv2d):
    pass


class PaddedConv2dTF(_PaddedConvMixin, Conv2dTF):
    pass


_CONV_CLASSES = {nn.Conv2d: PaddedConv2d, Conv2dTF: PaddedConv2dTF}
_STATS = (("running_mean", 0.0), ("running_var", 1.0))


class PaddedBatchNorm2d(BatchNorm2dTF):
    """BatchNorm at a padded width: unpadded gamma/beta (padded with 0 in forward), padded running statistics
    whose ``state_dict`` entries are the unpadded ones (hooks added by :func:`pad_channels`).

    A padded channel's running variance drifts from 1 toward 0 in training (the batch variance of a channel of
    zeros is 0); with gamma = beta = 0 it maps to 0 either way, and no checkpoint holds it."""

    pad: int = 0

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = F.pad(self.weight, (0, self.pad)), F.pad(self.bias, (0, self.pad))
        if self.training:  # the TF moving-statistics update of BatchNorm2dTF (biased variance)
            return self.train_forward(x, weight, bias)
        return F.batch_norm(x, self.running_mean, self.running_var, weight, bias, False, 0.0, self.eps)


def _strip_stats(module: PaddedBatchNorm2d, state_dict: dict, prefix: str, local_metadata) -> None:
    for name, _ in _STATS:
        if prefix + name in state_dict:
            state_dict[prefix + name] = state_dict[prefix + name][:module.num_features].clone()


def _pad_stats(module: PaddedBatchNorm2d, state_dict: dict, prefix: str, *args) -> None:
    for name, fill in _STATS:
        value = state_dict.get(prefix + name)
        if isinstance(value, Tensor) and value.shape == (module.num_features,):
            state_dict[prefix + name] = F.pad(value, (0, module.pad), value=fill)


@torch.no_grad()
def _pad_batchnorm(bn: nn.BatchNorm2d, multiple: int) -> None:
    pad = _round_up(bn.num_features, multiple) - bn.num_features
    if pad == 0:
        return
    for name, fill in _STATS:
        setattr(bn, name, F.pad(getattr(bn, name), (0, pad), value=fill))  # still a registered buffer
    bn.__class__ = PaddedBatchNorm2d
    bn.pad = pad
    bn.register_state_dict_post_hook(_strip_stats)
    bn.register_load_state_dict_pre_hook(_pad_stats)


def pad_channels(model: nn.Module, multiple: int) -> int:
    """Make every convolution and BatchNorm of ``model`` (a :class:`~spinenet.modeling.retinanet.RetinaNet`,
    before DDP wrapping) compute at widths rounded up to ``multiple``, in place; returns how many modules changed.

    Call it on the CPU or the training device before the optimiser is built (the parameters are the same
    objects, so it may also come after). ``multiple`` <= 1 does nothing.
    """
    if multiple < 0:
        raise ValueError(f"--pad_channels {multiple} is negative; pass a multiple such as 8, or 0 for no padding")
    if multiple <= 1:
        return 0
    image_convs = {id(model.backbone.stem.conv)}  # reads the 3-channel image
    outputs = {id(model.head.class_net.predict), id(model.head.box_net.predict)}  # sliced back to their width
    for name, module in model.named_modules():  # everything checked before anything changes
        if isinstance(module, _BatchNorm) and (type(module) is not BatchNorm2dTF or not (
                module.affine and module.track_running_stats and module.momentum is not None)):
            raise ValueError(f"--pad_channels supports BatchNorm2dTF with affine parameters, running statistics "
                             f"and a momentum only; {name} is {type(module).__name__} (cross-replica BN, used beyond "
                             "8 CUDA ranks?): train without --pad_channels")
        if isinstance(module, nn.Conv2d) and (type(module) not in _CONV_CLASSES or module.groups != 1):
            raise ValueError(f"--pad_channels cannot pad {name} ({type(module).__name__}, groups {module.groups}): "
                             "train without --pad_channels")
    changed = 0
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            before = module.num_features
            _pad_batchnorm(module, multiple)
            changed += _round_up(before, multiple) != before
        elif isinstance(module, nn.Conv2d):
            pad_in = 0 if id(module) in image_convs else _round_up(module.in_channels, multiple) - module.in_channels
            pad_out = _round_up(module.out_channels, multiple) - module.out_channels
            if pad_in or pad_out:
                module.__class__ = _CONV_CLASSES[type(module)]
                module.pad_in, module.pad_out, module.slice_output = pad_in, pad_out, id(module) in outputs
                changed += 1
    return changed
