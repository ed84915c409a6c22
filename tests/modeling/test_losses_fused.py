"""The fused focal loss against the one-hot implementation it replaced (benchmarks/loss_speed.py's reference_loss).

Same loss values and gradients within a stated float32 tolerance, on realistic targets (labelled random boxes, an
ignore band, class 0), extreme and non-finite logits, every chunking branch, channels_last and bfloat16 maps, and
under ``torch.compile(fullgraph=True)``.

Tolerance: values within ``rtol = 1e-5``; gradients elementwise within ``1e-5·|g| + 1e-6·max|g|`` (the two compute
σ(x)^γ·softplus(x) with different float32 roundings, and the reference's own rounding is of that order).
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest
import torch

import spinenet.modeling.focal_fused as focal_fused
from spinenet.modeling.focal_fused import FocalSum, _chunks, level_targets
from spinenet.modeling.losses import LossParams, l2_regularization, retinanet_loss

_SPEC = importlib.util.spec_from_file_location(
    "loss_speed", Path(__file__).resolve().parents[2] / "benchmarks" / "loss_speed.py")
loss_speed = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(loss_speed)
reference_loss, reference_l2, make_inputs = loss_speed.reference_loss, loss_speed.reference_l2, loss_speed.make_inputs

K = 91


@pytest.fixture(scope="module")
def inputs():
    """2 images at 256² (12,276 anchors, 2.2 M logits), ignore band 0.4-0.5; 2 % of the logits extreme."""
    cls, box, cls_t, box_t, npos = make_inputs(2, 256, K)
    gen = torch.Generator().manual_seed(7)
    for v in cls.values():
        wild = torch.rand(v.shape, generator=gen) < 0.02
        v[wild] = (torch.rand(int(wild.sum()), generator=gen) - 0.5) * 240.0  # |x| up to 120: σ under/overflow
    cls_t = cls_t.clone()
    cls_t[0, :40] = 0  # class 0 targets make channel 0 positive in the reference's one-hot
    assert (cls_t == -2).any() and (cls_t > 0).any() and (cls_t == -1).any()
    return cls, box, cls_t, box_t, npos


def _run(fn, cls, box, targets, params=None, scale=1.0, prep=None, num_classes=K):
    cls = {k: (prep(v) if prep else v).detach().clone().requires_grad_(True) for k, v in cls.items()}
    box = {k: v.detach().clone().requires_grad_(True) for k, v in box.items()}
    out = fn(cls, box, *targets, params or LossParams(), num_classes)
    (out["total_loss"] * scale).backward()
    grads = torch.cat([cls[k].grad.float().flatten() for k in sorted(cls)])
    box_grads = torch.cat([box[k].grad.flatten() for k in sorted(box)])
    return {k: v.detach() for k, v in out.items()}, grads, box_grads


def _assert_same(got, want):
    (out, g, gb), (ref, g_ref, gb_ref) = got, want
    for key in ("total_loss", "cls_loss", "box_loss"):
        torch.testing.assert_close(out[key], ref[key], rtol=1e-5, atol=0.0)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-6 * float(g_ref.abs().max()))
    torch.testing.assert_close(gb, gb_ref, rtol=1e-5, atol=1e-9)


@pytest.fixture(scope="module")
def reference(inputs):
    cls, box, *targets = inputs
    return _run(reference_loss, cls, box, targets)


def test_values_and_gradients_equal_the_one_hot_reference(inputs, reference):
    cls, box, *targets = inputs
    _assert_same(_run(retinanet_loss, cls, box, targets), reference)


def test_tolerance_is_tight_enough_to_see_a_wrong_alpha(inputs, reference):
    # α 0.25 -> 0.2501 moves every term by ~1e-4 relative: the comparison above must catch it.
    cls, box, *targets = inputs
    with pytest.raises(AssertionError):
        _assert_same(_run(retinanet_loss, cls, box, targets, LossParams(focal_loss_alpha=0.2501)), reference)


@pytest.fixture(scope="module")
def small_inputs():
    """1 image at 128² (3,069 anchors), ignore band 0.4-0.5: cheap enough for thousands of tiny chunks."""
    return make_inputs(1, 128, K, seed=3)


@pytest.mark.parametrize("limit", [7, 3 * K + 5, 40 * K * 16 + 1])
def test_every_chunking_branch_gives_the_same(small_inputs, limit, monkeypatch):
    # 7: one column per chunk; 3K+5: three columns; 40·K·16+1: groups of 2 anchors at level 3 (16 x 16), whole
    # images at levels 4-7.
    cls, box, *targets = small_inputs
    assert (targets[0] == -2).any() and (targets[0] > 0).any()
    want = _run(reference_loss, cls, box, targets)
    monkeypatch.setattr(focal_fused, "_chunk_limit", lambda device: limit)
    _assert_same(_run(retinanet_loss, cls, box, targets), want)


def test_chunks_cover_each_element_once():
    for shape, limit in [((2, 3, 5, 7), 4), ((2, 3, 5, 7), 12), ((2, 3, 5, 7), 40), ((2, 3, 5, 7), 1000)]:
        hits = torch.zeros(shape, dtype=torch.long)
        for index in _chunks(torch.Size(shape), limit):
            hits[index] += 1
            assert hits[index].numel() <= max(limit, shape[2])  # a chunk never splits the class axis
        assert (hits == 1).all(), (shape, limit)


def test_ignored_anchors_with_non_finite_logits_stay_out(inputs, reference):
    cls, box, cls_t, box_t, npos = inputs
    wild = {k: v.clone() for k, v in cls.items()}
    ignored = (cls_t[:, : 32 * 32 * 9] == -2).nonzero()  # in level 3 (32 x 32 at 256²)
    assert len(ignored) > 3
    level3 = wild[3].view(2, 9, K, -1)  # anchor n of level 3 = (y·W + x)·9 + a
    for j, (b, n) in enumerate(ignored[:4].tolist()):
        level3[b, n % 9, :, n // 9] = (float("nan"), float("inf"), -float("inf"), 1e30)[j]
    out, g, gb = _run(retinanet_loss, wild, box, (cls_t, box_t, npos))
    _assert_same((out, g, gb), reference)


def test_reference_thresholds_skip_the_mask_and_agree(inputs):
    # No ignored anchor (match = unmatched = 0.5, the reference's): the unmasked path.
    cls, box, cls_t, box_t, npos = inputs
    targets = (cls_t.masked_fill(cls_t == -2, -1), box_t, npos)
    _assert_same(_run(retinanet_loss, cls, box, targets), _run(reference_loss, cls, box, targets))


def test_gamma_other_than_the_default(inputs):
    cls, box, *targets = inputs
    for gamma in (2.0, 0.5, 0.0):
        params = LossParams(focal_loss_gamma=gamma)
        _assert_same(_run(retinanet_loss, cls, box, targets, params), _run(reference_loss, cls, box, targets, params))


def test_channels_last_maps_and_a_scaled_backward(inputs):
    cls, box, *targets = inputs
    want = _run(reference_loss, cls, box, targets, scale=0.37)
    got = _run(retinanet_loss, cls, box, targets, scale=0.37,
               prep=lambda v: v.contiguous(memory_format=torch.channels_last))
    _assert_same(got, want)


def test_bfloat16_maps_give_bfloat16_gradients(inputs):
    cls, box, *targets = inputs
    bf16 = {k: v.clamp(-30, 30).bfloat16() for k, v in cls.items()}
    x = bf16[3].detach().clone().requires_grad_(True)
    loss = retinanet_loss({**bf16, 3: x}, box, *targets, LossParams(), K)["cls_loss"]
    loss.backward()
    assert x.grad.dtype == torch.bfloat16
    ref = reference_loss({k: v.float() for k, v in bf16.items()}, box, *targets, LossParams(), K)["cls_loss"]
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-5, atol=0.0)


def test_no_grad_value_and_second_backward_error(inputs, reference):
    cls, box, *targets = inputs
    with torch.no_grad():
        out = retinanet_loss(cls, box, *targets, LossParams(), K)
    torch.testing.assert_close(out["total_loss"], reference[0]["total_loss"], rtol=1e-5, atol=0.0)
    x = cls[7].detach().clone().requires_grad_(True)
    t = level_targets(targets[0], targets[0].shape[1] - 9 * 4, 9, 2, 2)
    loss = FocalSum.apply(x, t, torch.tensor(0.75), torch.tensor(0.25), 1.5, K)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        loss.backward()


def _small():
    """Two levels of a 3-class head, small enough to compile quickly."""
    cls, box, cls_t, box_t, npos = make_inputs(2, 128, 3, max_gt=4)
    keep = (3, 4)
    n = sum(cls[k].shape[2] * cls[k].shape[3] * 9 for k in keep)
    return {k: cls[k] for k in keep}, {k: box[k] for k in keep}, (cls_t[:, :n], box_t[:, :n], npos)


def _compiled_equals_eager(backend: str, rtol: float):
    cls, box, targets = _small()
    targets = (targets[0].clone(), *targets[1:])
    targets[0][:, ::37] = -2
    torch._dynamo.reset()
    compiled = torch.compile(retinanet_loss, fullgraph=True, backend=backend)  # raises on any graph break
    got = _run(compiled, cls, box, targets, num_classes=3)
    want = _run(retinanet_loss, cls, box, targets, num_classes=3)
    for key in ("total_loss", "cls_loss", "box_loss"):
        torch.testing.assert_close(got[0][key], want[0][key], rtol=rtol, atol=0.0)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6 * float(want[1].abs().max()))
    torch.testing.assert_close(got[2], want[2], rtol=1e-5, atol=1e-9)


def test_compile_fullgraph_captures_the_loss_and_equals_eager():
    # aot_eager: Dynamo's one graph (fullgraph=True fails on a graph break) and AOT autograd's backward of the
    # plain-op path, run op by op: exactly the math the compiler fuses, without the C++ build.
    _compiled_equals_eager("aot_eager", rtol=1e-6)


@pytest.mark.slow
def test_compile_inductor_equals_eager():
    # Inductor's vectorised exp/log differ from ATen's by a few ulp, hence rtol 2e-5 on the sums.
    start = time.perf_counter()
    _compiled_equals_eager("inductor", rtol=2e-5)
    print(f"inductor compile + run: {time.perf_counter() - start:.0f} s")


def test_l2_foreach_equals_per_kernel_reference():
    # Conv kernels of several shapes (one shared, one all zero: ||w|| = 0 must give gradient 0, not NaN), a
    # frozen one and a BN layer; as in SpineNet, biases and BN parameters are not kernels.
    torch.manual_seed(0)
    shared = torch.nn.Conv2d(8, 8, 3)
    zero = torch.nn.Conv2d(8, 4, 1)
    torch.nn.init.zeros_(zero.weight)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), shared, shared, zero,
                                torch.nn.Conv2d(4, 83, 1).requires_grad_(False), torch.nn.Conv2d(4, 819, 3))
    grads = []
    for fn in (reference_l2, l2_regularization):
        model.zero_grad(set_to_none=True)
        value = fn(model, 4e-5)
        value.backward()
        grads.append((value.detach(), [p.grad for p in model.parameters()]))
    (ref, ref_g), (got, got_g) = grads
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=0.0)
    assert sum(g is not None for g in got_g) == 4  # the trainable kernels; the shared one once
    for a, b in zip(got_g, ref_g, strict=True):
        if b is None:
            assert a is None
        else:
            assert torch.isfinite(a).all()
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-12)


def test_benchmark_prints_its_table_and_ratio(capsys):
    assert loss_speed.main(["--batch", "1", "--size", "128", "--reps", "1", "--skip_l2"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.endswith("x")}
    assert {"reference", "fused", "argmax(0)+gather,", "max(0),"} <= set(rows)
    assert "ratio (median reference / median fused):" in out and "rel. diff" in out
