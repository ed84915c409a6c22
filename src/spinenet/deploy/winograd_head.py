"""The RetinaNet head for inference with its Winograd layers chained in the tile domain.

A Winograd layer (:class:`~spinenet.deploy.winograd.WinogradConv2d`) turns its input into 6x6 tiles, multiplies,
and turns the products back into 4x4 output tiles. Run layer by layer, each output is put back in place (a
DepthToSpace) only for the next layer to cut it into tiles again (a convolution with the 36 transform kernels and a
transpose). In the head, where 4 layers follow each other on the same map, this module skips that round trip:

* activations stay tile-major and channels-last between layers, ``(B, 16, H/4, W/4, C)``, element
  ``[b, i*4 + j, t, u, c]`` = pixel ``(4t + i, 4u + j)`` of channel ``c``;
* the per-level BN (with the shared conv's bias folded in) and the activation are elementwise, so they run on that
  layout as they would on the map;
* the next layer's 6x6 input tiles are the 4x4 tile plus a one-pixel halo from the neighbouring tiles (zeros at
  the border: the convolution's padding), gathered with slices and concatenations; its input transform is then
  one MatMul with the fixed (36, 36) matrix ``Bᵀ⊗Bᵀ``;
* the products are ``V (B, 36, T, C) @ Uᵀ (36, C, O)``, then the output transform is one MatMul with ``Aᵀ⊗Aᵀ``.

The class and box subnets read the same backbone feature: its tiles are cut and transformed once for both. The
class predictor can hand its maps to the export's post-processing in the tile-major layout
(``tile_major_class=True``), which then skips putting them in place too. Levels smaller than ``min_pixels``, or
whose sides are not multiples of 4, run the subnets as they are (direct convolutions).

Exact in real arithmetic, like Winograd itself: outputs move by about 1e-5 of their largest magnitude in float32
(``tests/modeling/test_winograd_head.py``). Inference only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spinenet.deploy.winograd import TILE, WinogradConv2d, depth_to_space_dcr
from spinenet.modeling.head import RetinaNetHead, Subnet
from spinenet.modeling.layers import batchnorm_affine


def input_tiles(x: Tensor, kin: Tensor) -> Tensor:
    """(B, C, H, W), H and W multiples of 4 -> transformed input tiles (B, 36, T, C), T = H/4 * W/4 (row-major).

    ``kin``: the (36, 1, 6, 6) input-transform kernels of :class:`WinogradConv2d`; padding 1 is the conv's."""
    b, c, h, w = (int(s) for s in x.shape)
    v = F.conv2d(x.reshape(b * c, 1, h, w), kin, stride=TILE, padding=1)  # (B*C, 36, H/4, W/4)
    return v.reshape(b, c, 36, (h // TILE) * (w // TILE)).permute(0, 2, 3, 1)


def halo_tiles(y: Tensor, kin36: Tensor) -> Tensor:
    """Tile-major activations (B, 16, th, tw, C) -> the next 3x3 layer's transformed input tiles (B, 36, T, C).

    The 6x6 input tile of output tile (t, u) covers rows 4t-1 .. 4t+4: row 3 of the tile above, the tile's own
    rows 0-3, row 0 of the tile below (zeros outside the map), and likewise for columns."""
    b, _, th, tw, c = (int(s) for s in y.shape)
    y = y.reshape(b, TILE, TILE, th, tw, c)
    zero_row = y.new_zeros(b, 1, TILE, 1, tw, c)
    rows = torch.cat([torch.cat([zero_row, y[:, 3:4, :, :th - 1]], dim=3), y,
                      torch.cat([y[:, 0:1, :, 1:], zero_row], dim=3)], dim=1)  # (B, 6, 4, th, tw, C)
    zero_col = y.new_zeros(b, 6, 1, th, 1, c)
    patch = torch.cat([torch.cat([zero_col, rows[:, :, 3:4, :, :tw - 1]], dim=4), rows,
                       torch.cat([rows[:, :, 0:1, :, 1:], zero_col], dim=4)], dim=2)  # (B, 6, 6, th, tw, C)
    return torch.matmul(kin36, patch.reshape(b, 36, th * tw * c)).reshape(b, 36, th * tw, c)


def multiply_and_output(v: Tensor, ut: Tensor, kout: Tensor, th: int, tw: int) -> Tensor:
    """Transformed input tiles (B, 36, T, C) times the transformed filters ``ut`` (36, C, O), then the output
    transform ``kout`` (16, 36) -> tile-major outputs (B, 16, th, tw, O), without bias."""
    b = int(v.shape[0])
    o = int(ut.shape[-1])
    m = torch.matmul(v, ut)  # (B, 36, T, O)
    return torch.matmul(kout, m.reshape(b, 36, th * tw * o)).reshape(b, TILE * TILE, th, tw, o)


def tiles_to_nchw(y: Tensor) -> Tensor:
    """(B, 16, th, tw, C) tile-major -> (B, C, 4*th, 4*tw).

    As a transpose of the last three axes, then a DepthToSpace: ONNX Runtime runs the two 4x faster than the one
    equivalent 6-D transpose (10 vs 37 ms for level 3's 819 class channels at 640x640; OpenVINO 10 vs 18 ms)."""
    b, _, th, tw, c = (int(s) for s in y.shape)
    return depth_to_space_dcr(y.permute(0, 1, 4, 2, 3).reshape(b, TILE * TILE * c, th, tw), TILE)


class WinogradSubnet(nn.Module):
    """A :class:`~spinenet.modeling.head.Subnet` (eval mode) whose large levels run in the tile domain.

    ``forward(x, level, tiles=None)``: ``tiles`` are :func:`input_tiles` of ``x`` when the caller has them already.
    Returns (B, O, H, W) maps, or the tile-major (B, 16, H/4, W/4, O) on tiled levels if ``tile_major_output``."""

    def __init__(self, subnet: Subnet, min_pixels: int, *, tile_major_output: bool = False):
        super().__init__()
        self.subnet = subnet.eval()  # the small levels
        self.min_pixels, self.tile_major_output = int(min_pixels), tile_major_output
        self.act = subnet.act
        layers = [WinogradConv2d.from_conv(c) for c in (*subnet.convs, subnet.predict)]
        self.register_buffer("kin", layers[0].kin.clone())
        self.register_buffer("kin36", layers[0].kin.reshape(36, 36).clone())
        self.register_buffer("kout", layers[0].kout.clone())
        self.num_convs = len(subnet.convs)
        for i, layer in enumerate(layers):  # (36, C, O): the products' right-hand side for channels-last tiles
            self.register_buffer(f"ut{i}", layer.u.transpose(1, 2).contiguous())
        self.register_buffer("predict_bias", subnet.predict.bias.detach().clone())
        with torch.no_grad():  # conv bias, then the level's BN in eval mode: one scale and shift per channel
            for lvl, norms in subnet.norms.items():
                for i, (conv, bn) in enumerate(zip(subnet.convs, norms, strict=True)):
                    scale, shift = batchnorm_affine(bn, conv.bias)
                    self.register_buffer(f"scale_{lvl}_{i}", scale.clone())
                    self.register_buffer(f"shift_{lvl}_{i}", shift.clone())

    def tiled(self, x: Tensor) -> bool:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        return h * w >= self.min_pixels and h % TILE == 0 and w % TILE == 0

    def forward(self, x: Tensor, level: int, tiles: Tensor | None = None) -> Tensor:
        if not self.tiled(x):
            return self.subnet(x, level)
        th, tw = int(x.shape[-2]) // TILE, int(x.shape[-1]) // TILE
        v = input_tiles(x, self.kin) if tiles is None else tiles
        for i in range(self.num_convs):
            y = multiply_and_output(v, getattr(self, f"ut{i}"), self.kout, th, tw)
            y = self.act(y * getattr(self, f"scale_{level}_{i}") + getattr(self, f"shift_{level}_{i}"))
            v = halo_tiles(y, self.kin36)
        y = multiply_and_output(v, getattr(self, f"ut{self.num_convs}"), self.kout, th, tw) + self.predict_bias
        return y if self.tile_major_output else tiles_to_nchw(y)


class WinogradHead(nn.Module):
    """:class:`~spinenet.modeling.head.RetinaNetHead` (eval mode) with :class:`WinogradSubnet` subnets, for levels
    of at least ``min_pixels`` pixels; same outputs, except that with ``tile_major_class`` the class maps of tiled
    levels come back tile-major (see the module docstring)."""

    def __init__(self, head: RetinaNetHead, min_pixels: int, *, tile_major_class: bool = False):
        super().__init__()
        self.num_classes, self.num_anchors = head.num_classes, head.num_anchors
        self.background_channel = head.background_channel
        self.class_net = WinogradSubnet(head.class_net, min_pixels, tile_major_output=tile_major_class)
        self.box_net = WinogradSubnet(head.box_net, min_pixels)

    def forward(self, features: dict[int, Tensor]) -> tuple[dict[int, Tensor], dict[int, Tensor]]:
        cls_outputs, box_outputs = {}, {}
        for lvl, f in features.items():
            tiles = input_tiles(f, self.class_net.kin) if self.class_net.tiled(f) else None  # once for both
            cls_outputs[lvl] = self.class_net(f, lvl, tiles)
            box_outputs[lvl] = self.box_net(f, lvl, tiles)
        return cls_outputs, box_outputs
