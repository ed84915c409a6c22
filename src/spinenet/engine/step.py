"""The parts of a training step that decide whether the GPU waits for the host: loss bookkeeping on the device,
the non-finite check acted on at the next read, the CUDA backend defaults, and DDP's settings.

Host syncs. A step used to read the loss parts with ``float()`` (4 per micro-batch) and the finiteness flag with
``.item()`` after an all-reduce: each read waits for every kernel queued so far, so the host can't run ahead and
queue the next step while the GPU works. :class:`StepMeter` keeps the parts and the flag in device tensors; the
loop reads them (:meth:`StepMeter.read`: one copy to the host, one all-reduce under DDP) only every ``--log_every``
steps and before anything that must not see bad weights (a checkpoint, an evaluation, the end).

Non-finite losses. As before, training stops with :class:`NonFiniteLossError` naming the first step whose loss
was not finite (and its parts), and the last checkpoint on disk is the last good one: every save is preceded by a
read, so no checkpoint is written after a non-finite loss. What differs: the steps between the bad one and the
next read still run (their updates, on weights that may already be NaN, are thrown away with the run), at most
``log_every - 1`` steps of wasted work.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

PARTS = ("total_loss", "cls_loss", "box_loss", "l2_loss")


class NonFiniteLossError(RuntimeError):
    pass


class StepMeter:
    """Loss parts and the non-finite check of the training loop, kept on ``device`` until :meth:`read`.

    ``add`` once per micro-batch (parts divided by the accumulation count, as the optimiser sees them), ``end_step``
    once per optimiser step; ``read`` returns the last step's parts as floats, or raises for the first bad step.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self._step = torch.zeros(len(PARTS), device=device)  # this step's parts (sum over micro-batches)
        self.last = torch.zeros(len(PARTS), device=device)  # the last finished step's
        self._finite = torch.ones((), dtype=torch.bool, device=device)  # this step's micro-batches all finite
        self.bad = torch.zeros((), dtype=torch.bool, device=device)  # some step since the start was not
        self.bad_step = torch.full((), -1, dtype=torch.int64, device=device)  # the first such step
        self.bad_parts = torch.zeros(len(PARTS), device=device)  # its parts

    def add(self, total: Tensor, cls: Tensor, box: Tensor, l2: Tensor, accum: int) -> None:
        parts = torch.stack([total.detach(), cls.detach(), box.detach(), l2.detach()]).float()
        self._step += parts / accum
        self._finite &= torch.isfinite(parts).all()

    def end_step(self, step: int) -> None:
        """Close step ``step`` (the loop's counter before its increment): record it if it is the first bad one."""
        first = ~self._finite & ~self.bad
        self.bad_step = torch.where(first, torch.full_like(self.bad_step, step), self.bad_step)
        self.bad_parts = torch.where(first, self._step, self.bad_parts)
        self.bad |= ~self._finite
        self.last = self._step
        self._step = torch.zeros_like(self._step)
        self._finite = torch.ones_like(self._finite)

    def read(self, distributed: bool = False, last_good: str = "(none)") -> dict[str, float]:
        """The one host sync: the last step's parts; raises :class:`NonFiniteLossError` if any step so far had a
        non-finite loss on any rank (all ranks read at the same steps, so all stop together)."""
        bad = self.bad.to(torch.int64).reshape(1)
        if distributed:
            bad = bad.clone()
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        flags = torch.cat([bad.float(), self.bad.float().reshape(1)])
        values = torch.cat([flags, self.last, self.bad_parts, self.bad_step.reshape(1).float()]).tolist()
        n = len(PARTS)
        if values[0]:
            if values[1]:  # this rank saw it (else another rank did)
                parts = dict(zip(PARTS, values[2 + n:2 + 2 * n], strict=True))
                where = (f"non-finite loss at step {int(values[-1])}: total {parts['total_loss']:.4g}, "
                         f"cls {parts['cls_loss']:.4g}, box {parts['box_loss']:.4g}, l2 {parts['l2_loss']:.4g}")
            else:
                where = "non-finite loss on another rank"
            raise NonFiniteLossError(f"{where}. Training stopped; the last good checkpoint is {last_good}. Lower the "
                                     "learning rate or check the data.")
        return dict(zip(PARTS, values[2:2 + n], strict=True))


def configure_backend(device: torch.device, cudnn_benchmark: bool | None, deterministic: bool) -> bool:
    """cuDNN autotuning (``torch.backends.cudnn.benchmark``): on by default on CUDA (the input size is fixed, so
    each convolution is tuned once), off when deterministic kernels are asked for. Returns the setting."""
    on = device.type == "cuda" and not deterministic if cudnn_benchmark is None else bool(cudnn_benchmark)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = on
    return on


def resolve_channels_last(device: torch.device, channels_last: bool | None) -> bool:
    """NHWC activations: on by default on CUDA (tensor-core convolutions take NHWC without a transpose)."""
    return device.type == "cuda" if channels_last is None else bool(channels_last)


def wrap_ddp(model: nn.Module, device: torch.device, accum_steps: int) -> nn.parallel.DistributedDataParallel:
    """DDP with gradients as views of the all-reduce buckets (no copy, less memory) and, without gradient
    accumulation, ``static_graph`` (every parameter is used in every step, no data-dependent branches).

    ``static_graph`` with ``no_sync()`` micro-steps is a known PyTorch regression (the static-graph first-iteration
    check counts every backward: crash or, once past it, gradients no longer all-reduced; pytorch/pytorch#187732,
    huggingface/accelerate#3679), so it is off when ``accum_steps > 1``.
    """
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                               gradient_as_bucket_view=True, static_graph=accum_steps == 1)


def micro_step(model: nn.Module, index: int, accum_steps: int):
    """Context for micro-batch ``index`` of ``accum_steps``: DDP's ``no_sync()`` for all but the last, so the
    gradients are all-reduced once per optimiser step, not once per micro-batch."""
    if isinstance(model, nn.parallel.DistributedDataParallel) and index < accum_steps - 1:
        return model.no_sync()
    return contextlib.nullcontext()
