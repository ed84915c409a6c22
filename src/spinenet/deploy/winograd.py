"""Winograd F(4x4, 3x3) convolution for inference: the same 3x3 stride-1 convolution with 4x fewer
multiplications in its inner product (36 per 4x4 output tile instead of 144).

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (2016), with the interpolation points
0, ±1, ±2, ∞. For a 6x6 input tile ``d`` and a 3x3 filter ``g`` the 4x4 output tile is
``Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A``. Over channels, the elementwise product becomes 36 independent matrix products
(one per position of the 6x6 transformed tile), which is where the time goes and what BLAS does well.

Everything is written with operators ONNX Runtime runs fast at batch 1, so the exported graph gains too:

* input transform: one convolution with the 36 fixed 6x6 kernels ``Bᵀ⊗Bᵀ``, stride 4, on the input seen as
  ``B*C`` one-channel images -> ``(B*C, 36, H/4, W/4)``;
* a transpose that moves one axis, then one batched MatMul ``U (36, O, C) @ V (B, 36, C, T)``;
* output transform: one MatMul with the fixed (16, 36) matrix ``Aᵀ⊗Aᵀ`` -> (B, 16, O*T), tile pixel major, and
  one ``DepthToSpace`` (DCR) that puts each tile's 16 pixels in place -> ``(B, O, H, W)``.

Chained layers (the RetinaNet head's) can skip putting each output in place only to cut it into tiles again:
:mod:`spinenet.deploy.winograd_head`.

The filter transform ``U = G g Gᵀ`` is computed once, in float64, when the module is built. Results equal the
direct convolution up to float32 rounding: about 1e-5 of the output's largest magnitude with these points
(direct: ~3e-7), tested in ``tests/modeling/test_winograd.py``. Only for inference: it has no backward of
its own worth having and it holds the transformed weights, not the conv's parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# F(4x4, 3x3) with points 0, 1, -1, 2, -2, inf.
_BT = ((4, 0, -5, 0, 1, 0),
       (0, -4, -4, 1, 1, 0),
       (0, 4, -4, -1, 1, 0),
       (0, -2, -1, 2, 1, 0),
       (0, 2, -1, -2, 1, 0),
       (0, 4, 0, -5, 0, 1))
_G = ((1 / 4, 0, 0),
      (-1 / 6, -1 / 6, -1 / 6),
      (-1 / 6, 1 / 6, -1 / 6),
      (1 / 24, 1 / 12, 1 / 6),
      (1 / 24, -1 / 12, 1 / 6),
      (0, 0, 1))
_AT = ((1, 1, 1, 1, 1, 0),
       (0, 1, -1, 2, -2, 0),
       (0, 1, 1, 4, 4, 0),
       (0, 1, -1, 8, -8, 1))
TILE = 4  # output tile side; input tiles are TILE + 2


def winograd_filter_transform(weight: Tensor) -> Tensor:
    """(O, I, 3, 3) -> U (36, O, I) = G g Gᵀ per (out, in) pair, position-major, computed in float64."""
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"Winograd F(4x4, 3x3) needs a (O, I, 3, 3) weight, got {tuple(weight.shape)}")
    g = torch.tensor(_G, dtype=torch.float64)
    u = torch.einsum("ak,oikl,bl->aboi", g, weight.detach().to(torch.float64).cpu(), g)
    return u.reshape(36, weight.shape[0], weight.shape[1])


class WinogradConv2d(nn.Module):
    """A 3x3, stride 1, padding 1 convolution (``groups=1``, no dilation) computed with Winograd F(4x4, 3x3).

    ``WinogradConv2d(weight, bias)``; ``forward`` takes any (B, C, H, W) and returns (B, O, H, W), like
    ``F.conv2d(x, weight, bias, padding=1)``. The weights are copied (transformed); later changes to the source
    conv don't reach it.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None):
        super().__init__()
        self.in_channels, self.out_channels = int(weight.shape[1]), int(weight.shape[0])
        dtype = weight.dtype if weight.dtype.is_floating_point else torch.float32
        to = {"dtype": dtype, "device": weight.device}  # the source's: a CUDA/bf16 conv stays CUDA/bf16
        self.register_buffer("u", winograd_filter_transform(weight).to(**to).contiguous())
        b = torch.zeros(self.out_channels) if bias is None else bias.detach()
        self.register_buffer("bias", b.to(**to).reshape(1, -1, 1, 1).clone())
        bt = torch.tensor(_BT, dtype=torch.float64)
        at = torch.tensor(_AT, dtype=torch.float64)
        # kin[a*6 + b, 0, k, l] = Bᵀ[a, k] Bᵀ[b, l]; kout[i*4 + j, a*6 + b] = Aᵀ[i, a] Aᵀ[j, b]
        self.register_buffer("kin", torch.einsum("ak,bl->abkl", bt, bt).reshape(36, 1, 6, 6).to(**to))
        self.register_buffer("kout", torch.einsum("ia,jb->ijab", at, at).reshape(TILE * TILE, 36).to(**to))

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> WinogradConv2d:
        if not is_winograd_compatible(conv):
            raise ValueError(f"{conv} is not a 3x3, stride-1, padding-1, ungrouped, undilated convolution")
        return cls(conv.weight, conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = (int(s) for s in x.shape)  # static in an export: plain ints keep every shape static
        th, tw = -(-h // TILE), -(-w // TILE)
        y = self._tiles(x)  # (B, 16, O, th, tw)
        y = depth_to_space_dcr(y.reshape(b, 16 * self.out_channels, th, tw), TILE)  # (B, O, 4*th, 4*tw)
        if TILE * th != h or TILE * tw != w:
            y = y[:, :, :h, :w]
        return y + self.bias

    def _tiles(self, x: Tensor) -> Tensor:
        b, c, h, w = (int(s) for s in x.shape)
        th, tw = -(-h // TILE), -(-w // TILE)
        x = x.reshape(b * c, 1, h, w)
        if h % TILE == 0 and w % TILE == 0:
            # tiles start at -1 (the conv's zero padding) and the last ends at 4*t + 1: padding 1 on each side
            v = F.conv2d(x, self.kin, stride=TILE, padding=1)
        else:
            v = F.conv2d(F.pad(x, (1, TILE * tw + 1 - w, 1, TILE * th + 1 - h)), self.kin, stride=TILE)
        v = v.reshape(b, c, 36, th * tw).transpose(1, 2)  # (B, 36, C, T)
        m = torch.matmul(self.u, v)  # (B, 36, O, T)
        o = self.out_channels
        y = torch.matmul(self.kout, m.reshape(b, 36, o * th * tw))  # (B, 16, O*T): tile pixel (i, j) major
        return y.reshape(b, TILE * TILE, o, th, tw)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size=(3, 3), F(4x4, 3x3)"


class _DepthToSpaceDCR(torch.autograd.Function):
    """ONNX ``DepthToSpace`` in "DCR" mode (``torch.nn.functional.pixel_shuffle`` is the "CRD" one):
    (B, r*r*C, H, W), channel (i*r + j)*C + c -> (B, C, H*r, W*r), pixel (h*r + i, w*r + j). Exported as the one
    ONNX operator, which runtimes do in one pass; traced from its eager form, it would be a 6-D Transpose."""

    @staticmethod
    def forward(ctx, x: Tensor, r: int) -> Tensor:
        b, c, h, w = x.shape
        c //= r * r
        return x.reshape(b, r, r, c, h, w).permute(0, 3, 4, 1, 5, 2).reshape(b, c, h * r, w * r)

    @staticmethod
    def symbolic(g, x, r: int):
        return g.op("DepthToSpace", x, blocksize_i=r, mode_s="DCR")


def depth_to_space_dcr(x: Tensor, r: int) -> Tensor:
    return _DepthToSpaceDCR.apply(x, r)


def is_winograd_compatible(conv: nn.Module) -> bool:
    """True for an ``nn.Conv2d`` that :class:`WinogradConv2d` computes exactly (3x3, stride 1, 'same')."""
    return (isinstance(conv, nn.Conv2d) and tuple(conv.kernel_size) == (3, 3) and tuple(conv.stride) == (1, 1)
            and tuple(conv.dilation) == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
            and tuple(conv.padding) == (1, 1))


class SizeSwitchedConv(nn.Module):
    """A 3x3 convolution that runs as Winograd on feature maps of at least ``min_pixels`` pixels and as the
    direct convolution below that, where the transforms cost more than they save. Decided per call from the
    static input size, so an exported graph holds only the chosen path for each level."""

    def __init__(self, conv: nn.Conv2d, min_pixels: int):
        super().__init__()
        self.direct = conv
        self.winograd = WinogradConv2d.from_conv(conv)
        self.min_pixels = int(min_pixels)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2], x.shape[-1]
        return self.winograd(x) if h * w >= self.min_pixels else self.direct(x)

    def extra_repr(self) -> str:
        return f"min_pixels={self.min_pixels}"
