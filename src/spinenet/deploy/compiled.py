"""The detector as one captured graph: ``torch.compile(fullgraph=True)`` of :class:`ExportWrapper`, uint8 images in,
the five detection outputs out, with no host sync inside, and on CUDA one CUDA graph per call.

Two parts of the eager post-processing would stop a capture: a top-k tie rule that used ``nonzero`` (now a TopK on
tie-free int64 keys, :func:`~spinenet.deploy.postprocess_export._topk_lowest_index_first`) and the greedy NMS loop
``while undecided.any()``, whose round count is data. The graph runs a fixed number of rounds instead
(:mod:`spinenet.deploy.nms_unrolled`, the Ascend target's form) and returns, beside the outputs, ``nms_exact``: the
rounds decided every output slot. That flag is read once, *after* the graph (the only host read of a call, which
fetching the outputs needs anyway), and where it is False (a crowd of overlapping same-class boxes longer than the
rounds: not seen on the measured data, see ``DEFAULT_NMS_ROUNDS``) the call is redone by the eager ``Loop`` form. So
the graph's result is the eager detector's: bit for bit with the same kernels (backend "aot_eager"); with
Inductor's generated kernels the same detections, their boxes and scores within float rounding (a few ulp: fused
sigmoid and box decoding round differently from ATen's).

CUDA graphs: on a CUDA wrapper, ``mode="reduce-overhead"`` (torch's CUDA-graph trees) replays the whole detector
as one graph launch, the batch-1 latency path. Its outputs live in a pool that the next replay overwrites, so they
are cloned before being returned. (Written for CUDA but run only on the CPU here: no GPU in this project's CI.)
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from spinenet.deploy.nms_unrolled import DEFAULT_NMS_ROUNDS


class CompiledDetector:
    """``CompiledDetector(wrapper)(images)`` -> the five outputs of ``wrapper`` (an ExportWrapper with
    post-processing), from one compiled graph, equal to ``wrapper``'s eager ``Loop`` form (see the module docstring).

    ``rounds``: greedy NMS rounds unrolled in the graph. ``cuda_graph``: capture as a CUDA graph
    (``mode="reduce-overhead"``); default: when the wrapper is on CUDA. ``fallbacks`` counts the calls redone
    eagerly because the rounds were not enough. ``backend``: torch.compile's ("aot_eager" captures the same single
    graph without generating code: the fast check of the capture).
    """

    def __init__(self, wrapper: nn.Module, *, rounds: int = DEFAULT_NMS_ROUNDS, cuda_graph: bool | None = None,
                 dynamic: bool = False, backend: str = "inductor"):
        if wrapper.postprocess == "none":
            raise ValueError("CompiledDetector needs post-processing (postprocess='v1'); raw maps need no NMS")
        self.exact = wrapper if wrapper.nms_rounds is None else _with_rounds(wrapper, None)
        self.static = _with_rounds(wrapper, rounds)
        on_cuda = next(iter(wrapper.buffers())).is_cuda
        self.cuda_graph = on_cuda if cuda_graph is None else bool(cuda_graph)
        if self.cuda_graph and not on_cuda:
            raise ValueError("cuda_graph=True needs the wrapper on a CUDA device (wrapper.to('cuda'))")
        mode = "reduce-overhead" if self.cuda_graph else None
        self._graph = torch.compile(self.static.forward_checked, fullgraph=True, dynamic=dynamic, mode=mode,
                                    backend=backend)
        self.fallbacks = 0

    @torch.no_grad()
    def __call__(self, images: Tensor) -> tuple[Tensor, ...]:
        if self.cuda_graph:
            torch.compiler.cudagraph_mark_step_begin()
        outputs, exact = self._graph(images)
        if self.cuda_graph:  # the next replay overwrites the graph's output pool
            outputs, exact = tuple(o.clone() for o in outputs), exact.clone()
        if not bool(exact.all()):  # the one host read, outside the graph
            self.fallbacks += 1
            return self.exact(images)
        return outputs


def _with_rounds(wrapper: nn.Module, rounds: int | None) -> nn.Module:
    """A shallow copy of ``wrapper`` sharing its model and buffers, with another ``nms_rounds``."""
    twin = copy.copy(wrapper)
    twin.__dict__ = dict(wrapper.__dict__)  # own attribute dict (the module/buffer dicts are shared, not copied)
    twin.nms_rounds = rounds
    return twin
