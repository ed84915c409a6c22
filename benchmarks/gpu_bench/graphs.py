"""CUDA-graph rows (a CUDA device only; batch 1 by default, the latency target's batch).

The forward captured and replayed; end to end as the captured uint8 -> head maps graph + each eager
post-processing (static exact NMS; the reference's); for bf16/fp16 also with the weights cast to 16 bits (no
autocast casts). A capture of the whole ExportWrapper (NMS included) is tried in a child process
(:mod:`.children`) and reported as "not capturable (reason)" when the post-processing synchronises with the host.
"""

from __future__ import annotations

import contextlib
import copy

import torch

from .models import make_images, spinenet_detect_dets, spinenet_dets
from .timing import amp, module_bytes


def capture_graph(fn, device, precision: str):
    """(graph, static outputs) of ``fn`` captured on a side stream after 3 warm-up calls; autocast's weight
    cache is off, as graph capture requires."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream), torch.no_grad(), amp(device, precision, cache=False):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), amp(device, precision, cache=False), torch.cuda.graph(graph):
        out = fn()
    torch.cuda.synchronize(device)
    return graph, out


def exception_chain(e: BaseException) -> str:
    """The first line of each exception in the chain, root cause first (a failed capture raises again on
    leaving the capture context, which hides the operation that broke it)."""
    chain = []
    while e is not None and len(chain) < 4:
        text = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        chain.append(f"{type(e).__name__}: {text}")
        e = e.__cause__ or e.__context__
    return " <- ".join(reversed(chain))


def captured(bench, label: str, fn, precision: str):
    """capture_graph with the capture's peak memory (the graph's pool) measured; None (and a note) on failure."""
    dev = bench.device
    try:
        torch.cuda.synchronize(dev)
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        graph, out = capture_graph(fn, dev, precision)
        return graph, out, max(torch.cuda.max_memory_allocated(dev) - base, 0)
    except Exception as e:  # noqa: BLE001
        bench.note(f"{label}: not capturable ({exception_chain(e)})")
        with contextlib.suppress(Exception):
            torch.cuda.synchronize(dev)
        return None


def graph_rows(bench, sn, batch: int, precision: str, u8, x) -> None:
    dev = bench.device
    if not bench.fits(f"cuda graph rows batch {batch} {precision}", 15.0):
        return
    static_x, static_u8 = x.clone(), u8.clone()
    w = sn.wrapper(batch)
    models = [("cuda graph", sn.fast, None)]
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        models.append((f"cuda graph, {precision} weights (no autocast)", copy.deepcopy(sn.fast).to(dtype), dtype))
    for name, model, dtype in models:
        prec = "fp32" if dtype is not None else precision  # 16-bit weights need no autocast
        cast = (lambda t, d=dtype: t.to(d)) if dtype is not None else (lambda t: t)
        own = module_bytes(model)
        got = captured(bench, f"spinenet forward [{name}] batch {batch} {precision}",
                       lambda m=model, c=cast: m(c(static_x)), prec)
        if got is not None:
            graph, _, pool = got

            def run(g=graph):
                static_x.copy_(x)
                g.replay()

            bench.measure(run, model="spinenet", what="forward", variant=name, batch=batch, precision=precision,
                          own_bytes=own + pool)
            del graph, got
        got = captured(bench, f"spinenet end-to-end, forward part [{name}] batch {batch} {precision}",
                       lambda m=model, c=cast: m(c(w.preprocess(static_u8))), prec)
        if got is None:
            continue
        graph, (cls, box), pool = got

        def static_nms(g=graph, cls=cls, box=box):
            static_u8.copy_(u8)
            g.replay()
            with torch.no_grad(), amp(dev, precision):
                return sn.postprocess(w, cls, box, background_channel=True)

        def reference(g=graph, cls=cls, box=box):
            static_u8.copy_(u8)
            g.replay()
            with torch.no_grad(), amp(dev, precision):
                return sn.reference_postprocess(w, cls, box)

        bench.measure(static_nms, model="spinenet", what="end-to-end",
                      variant=f"{name} (uint8 -> maps) + eager static exact NMS", batch=batch, precision=precision,
                      own_bytes=own + pool, check=spinenet_dets)
        bench.measure(reference, model="spinenet", what="end-to-end",
                      variant=f"{name} (uint8 -> maps) + eager reference post-processing", batch=batch,
                      precision=precision, own_bytes=own + pool, check=spinenet_detect_dets)
        del graph, got, cls, box
    torch.cuda.empty_cache()


def full_graph_rows(bench, sn, batch: int, precision: str) -> None:
    """Try to capture the whole ExportWrapper forward (uint8 in, detections out) as one CUDA graph."""
    dev = bench.device
    u8, _ = make_images(batch, bench.args.image_size, dev, bench.args.seed)
    w = sn.wrapper(batch)
    static_u8 = u8.clone()

    def whole():
        with torch.device(dev):
            return w(static_u8)

    label = f"cuda graph of the whole end-to-end ExportWrapper (NMS included), batch {batch} {precision}"
    got = captured(bench, label, whole, precision)
    if got is None:
        return
    graph, outs, pool = got
    ref = sn.end_to_end(w, u8, precision)
    static_u8.copy_(u8)
    graph.replay()
    same = all(torch.equal(a, b) for a, b in zip(outs, ref, strict=False))
    bench.note(f"{label}: captured; replay {'matches' if same else 'DIFFERS FROM'} the eager outputs")

    def run():
        static_u8.copy_(u8)
        graph.replay()
        return outs

    bench.measure(run, model="spinenet", what="end-to-end", variant="cuda graph of the whole ExportWrapper",
                  batch=batch, precision=precision, own_bytes=module_bytes(w) + pool, check=spinenet_dets,
                  replay_matches_eager=same)


def compiled_detector_rows(bench, sn, batch: int) -> None:
    """:class:`spinenet.deploy.compiled.CompiledDetector` (``torch.compile(fullgraph=True)``; on CUDA
    ``mode="reduce-overhead"``, i.e. CUDA graphs) against the eager ExportWrapper in fp32: the same detections
    (counts and classes equal, boxes within 1e-3 px, scores within 1e-5: Inductor's kernels round differently),
    then its time. This is the CUDA check the CPU test suite can't make (``tests/deploy/test_compiled.py``
    covers the CPU compile)."""
    from spinenet.deploy.compiled import CompiledDetector

    u8, _ = make_images(batch, bench.args.image_size, bench.device, bench.args.seed)
    w = sn.wrapper(batch)
    detector = CompiledDetector(w)
    want = sn.end_to_end(w, u8, "fp32")
    label = f"CompiledDetector (cuda graph: {detector.cuda_graph}), batch {batch} fp32"
    same = True
    for _ in range(3):  # warm-up, record, replay
        with torch.no_grad():
            got = detector(u8)
        same &= bool(torch.equal(got[0], want[0]) and torch.equal(got[2], want[2]) and torch.equal(got[4], want[4])
                     and (got[1] - want[1]).abs().max() <= 1e-3 and (got[3] - want[3]).abs().max() <= 1e-5)
    bench.note(f"{label}: {'matches' if same else 'DIFFERS FROM'} the eager outputs")

    def run():
        with torch.no_grad():
            return detector(u8)

    bench.measure(run, model="spinenet", what="end-to-end", variant="CompiledDetector", batch=batch,
                  precision="fp32", own_bytes=module_bytes(w), check=spinenet_dets, matches_eager=same)
