"""The tile-domain Winograd head against the RetinaNet head it replaces, computed in float64 as the reference."""

import pytest
import torch

from spinenet.deploy.winograd import WinogradConv2d
from spinenet.deploy.winograd_head import WinogradHead, halo_tiles, input_tiles, tiles_to_nchw
from spinenet.modeling.head import RetinaNetHead

NUM_CLASSES, NUM_ANCHORS, WIDTH = 5, 3, 16


@pytest.fixture(scope="module")
def head():
    torch.manual_seed(0)
    head = RetinaNetHead(WIDTH, NUM_CLASSES, NUM_ANCHORS, min_level=3, max_level=6, num_convs=3, num_filters=WIDTH)
    with torch.no_grad():  # informative weights and per-level BN statistics (the defaults are near-identity)
        for p in head.parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.dim() == 4 else 0.5))
        for m in head.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn_like(m.running_mean) * 0.2)
                m.running_var.copy_(torch.rand_like(m.running_var) + 0.5)
    return head.eval()


def _features(sizes, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {lvl: torch.randn(2, WIDTH, h, w, generator=g) for lvl, (h, w) in sizes.items()}


def _max_rel(out, ref):
    return max(float((out[k].double() - ref[k]).abs().max() / ref[k].abs().max()) for k in ref)


# level 3: whole tiles, tiled; 4: whole tiles but below min_pixels; 5: large but not whole tiles; 6: tiny
SIZES = {3: (16, 12), 4: (8, 4), 5: (10, 14), 6: (1, 2)}


def test_same_maps_as_the_head(head):
    feats = _features(SIZES)
    fast = WinogradHead(head, min_pixels=64).eval()
    with torch.no_grad():
        cls, box = fast(feats)
        ref_cls, ref_box = head.double()({k: v.double() for k, v in feats.items()})
        head.float()
    assert {k: tuple(v.shape) for k, v in cls.items()} == {k: tuple(v.shape) for k, v in ref_cls.items()}
    assert _max_rel(cls, ref_cls) < 1e-4 and _max_rel(box, ref_box) < 1e-4
    assert fast.class_net.tiled(feats[3]) and not any(fast.class_net.tiled(feats[k]) for k in (4, 5, 6))
    with torch.no_grad():  # the untiled levels are the very same computation as the head's
        direct_cls, _ = head(feats)
    for lvl in (4, 5, 6):
        assert torch.equal(cls[lvl], direct_cls[lvl])


def test_a_wrong_level_statistic_is_caught(head):
    # Not a test of the tolerance: the BN of another level must fail it by orders of magnitude.
    feats = _features({3: (8, 8)}, seed=2)
    fast = WinogradHead(head, min_pixels=16).eval()
    fast.class_net.scale_3_0.copy_(fast.class_net.scale_4_0)
    with torch.no_grad():
        cls, _ = fast(feats)
        ref, _ = head(feats)
    assert _max_rel(cls, {3: ref[3].double()}) > 1e-2


def test_tile_major_class_maps(head):
    feats = _features({3: (8, 12), 4: (4, 4)}, seed=3)
    plain = WinogradHead(head, min_pixels=32).eval()
    tiles = WinogradHead(head, min_pixels=32, tile_major_class=True).eval()
    with torch.no_grad():
        ref, ref_box = plain(feats)
        out, box = tiles(feats)
    assert out[3].shape == (2, 16, 2, 3, NUM_ANCHORS * NUM_CLASSES)  # (B, 16, H/4, W/4, C)
    # element [b, i*4 + j, t, u, c] is pixel (4t + i, 4u + j) of channel c
    assert torch.equal(out[3][1, 2 * 4 + 3, 1, 2], ref[3][1, :, 4 * 1 + 2, 4 * 2 + 3])
    assert torch.equal(tiles_to_nchw(out[3]), ref[3])
    assert torch.equal(out[4], ref[4]) and out[4].dim() == 4  # below min_pixels: NCHW as usual
    assert all(torch.equal(box[k], ref_box[k]) for k in ref_box)


def test_halo_tiles_equal_cutting_the_map_again():
    torch.manual_seed(4)
    y = torch.randn(2, 16, 3, 5, 7)  # tile-major (B, 16, th, tw, C)
    kin = WinogradConv2d(torch.randn(7, 7, 3, 3)).kin
    ref = input_tiles(tiles_to_nchw(y), kin)  # put in place, then cut with the convolution's zero padding
    out = halo_tiles(y, kin.reshape(36, 36))
    assert out.shape == ref.shape == (2, 36, 15, 7)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
