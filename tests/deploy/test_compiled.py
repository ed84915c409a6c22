"""The detector captured as one graph (torch.compile, fullgraph=True): uint8 images -> the five outputs, exactly the
eager detector's (its ``Loop`` form) with the same kernels (aot_eager), with an eager redo when the unrolled NMS
rounds are not enough; with Inductor's generated kernels, the same detections up to float rounding."""

from pathlib import Path

import pytest
import torch

from spinenet.deploy.compiled import CompiledDetector
from spinenet.deploy.export import ExportWrapper

SIZE = 128


def _assert_same(got, want):
    assert len(got) == len(want) == 5
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and torch.equal(g, w)


def test_fullgraph_capture_equals_eager(small_model, random_images):
    """fullgraph=True raises on any graph break, so compiling at all is the no-break check; aot_eager traces the
    same single graph (functionalised, as inductor gets it) without the minutes of code generation."""
    for batch, optimized in ((1, None), (2, "direct")):
        wrapper = ExportWrapper(small_model, batch_size=batch, image_size=(SIZE, SIZE), conv_algorithm=optimized)
        images = random_images(batch, seed=7)
        want = wrapper(images)
        assert int(want[0].min()) > 0  # real detections, so the comparison means something
        detector = CompiledDetector(wrapper, backend="aot_eager")
        _assert_same(detector(images), want)
        assert detector.fallbacks == 0


def test_too_few_rounds_are_detected_and_redone_eagerly(small_model, random_images):
    """With 1 round the graph's outputs are a cut prefix where a chain of overlapping boxes needs more rounds: the
    ``nms_exact`` flag says so and the call is redone in the exact eager form, so the result is still the eager one."""
    wrapper = ExportWrapper(small_model, batch_size=2, image_size=(SIZE, SIZE))
    images = random_images(2, seed=7)
    want = wrapper(images)
    detector = CompiledDetector(wrapper, rounds=1, backend="aot_eager")
    graph_outputs, exact = detector._graph(images)
    needs_more = [not all(torch.equal(g[b], w[b]) for g, w in zip(graph_outputs, want, strict=True))
                  for b in range(2)]
    assert any(needs_more)  # the image is crowded enough for the test to mean something
    assert exact.tolist() == [not n for n in needs_more]
    _assert_same(detector(images), want)
    assert detector.fallbacks == 1


def test_cuda_graph_needs_a_cuda_wrapper(small_model):
    with pytest.raises(ValueError, match="CUDA device"):
        CompiledDetector(ExportWrapper(small_model, image_size=(SIZE, SIZE)), cuda_graph=True)
    with pytest.raises(ValueError, match="post-processing"):
        CompiledDetector(ExportWrapper(small_model, image_size=(SIZE, SIZE), postprocess="none"))


@pytest.mark.slow
def test_inductor_equals_eager(small_model, random_images):
    """The default backend (generated C++ on the CPU; Triton and a CUDA graph on CUDA), ~2 min to compile here.
    Its fused elementwise kernels (sigmoid, box decoding) round differently from ATen's by a few ulp (measured:
    boxes 5e-5 px, scores 2e-6), so the detections are the same ones (count, classes) with values within rounding;
    the graph itself is the one the aot_eager test above checks bit for bit."""
    wrapper = ExportWrapper(small_model, image_size=(SIZE, SIZE))
    images = random_images(1, seed=7)
    detector = CompiledDetector(wrapper)
    want = wrapper(images)
    assert int(want[0].min()) > 0
    _assert_same_detections(detector(images), want)


def _assert_same_detections(got, want):
    (num, boxes, classes, scores, info) = got
    assert torch.equal(num, want[0]) and torch.equal(classes, want[2]) and torch.equal(info, want[4])
    torch.testing.assert_close(boxes, want[1], rtol=0, atol=1e-3)  # pixels
    torch.testing.assert_close(scores, want[3], rtol=0, atol=1e-5)


def test_torch_session_runs_the_optimized_compiled_detector_when_asked():
    """On CUDA ``TorchSession`` defaults to the optimised, compiled detector (here forced on the CPU, and run with
    the aot_eager backend to skip code generation): same outputs as the eager optimised wrapper."""
    import numpy as np

    from spinenet.deploy.runtimes import TorchSession

    ckpt = Path(__file__).resolve().parents[2] / "demo" / "shapes49s_fp16.pt"
    plain = TorchSession(ckpt, image_size=(SIZE, SIZE))
    assert plain.detector is plain.wrapper and plain.wrapper.model.head.background_channel
    session = TorchSession(ckpt, image_size=(SIZE, SIZE), optimized=True)
    assert isinstance(session.detector, CompiledDetector)
    assert type(session.wrapper.model.backbone).__name__ == "SharedReduceSpineNet"
    session.detector = CompiledDetector(session.wrapper, backend="aot_eager")
    images = np.random.default_rng(0).integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8)
    got = session.run(images)
    with torch.no_grad():
        want = session.wrapper(torch.from_numpy(images))
    for name, w in zip(session.output_names, want, strict=True):
        assert np.array_equal(got[name], w.numpy()), name
