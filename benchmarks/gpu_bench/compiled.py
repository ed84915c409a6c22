"""torch.compile rows (run in a child process by :mod:`.children`, so a long compile cannot take the main
measurements down): the forward compiled (``--compile_mode``, ``--compile_backend``) at ``--compile_batches``,
and end to end as the compiled forward + each eager post-processing."""

from __future__ import annotations

import sys
import time

import torch

from .models import make_images, spinenet_detect_dets, spinenet_dets
from .timing import amp, module_bytes, sync


def compile_rows(bench, sn, batches: list[int], precision: str) -> None:
    args, dev = bench.args, bench.device
    compiled = torch.compile(sn.fast, mode=None if args.compile_mode == "default" else args.compile_mode,
                             backend=args.compile_backend, dynamic=False)
    name = f"torch.compile (backend {args.compile_backend}, mode {args.compile_mode})"
    for batch in batches:
        if not bench.fits(f"{name} batch {batch}", 20.0):
            continue
        u8, x = make_images(batch, args.image_size, dev, args.seed)
        try:
            t = time.perf_counter()
            with torch.no_grad(), amp(dev, precision):
                compiled(x)
            sync(dev)
            compile_s = round(time.perf_counter() - t, 1)
        except Exception as e:  # noqa: BLE001
            bench.note(f"{name} batch {batch} {precision}: failed ({type(e).__name__}: {str(e)[:200]})")
            return
        print(f"compiled batch {batch} in {compile_s} s", file=sys.stderr, flush=True)

        def forward(x=x):
            with torch.no_grad(), amp(dev, precision):
                return compiled(x)

        bench.measure(forward, model="spinenet", what="forward", variant=name, batch=batch, precision=precision,
                      own_bytes=module_bytes(sn.fast), compile_s=compile_s)
        w = sn.wrapper(batch)

        def end_to_end(w=w, u8=u8):
            with torch.no_grad(), amp(dev, precision):
                cls, box = compiled(w.preprocess(u8))
                return sn.postprocess(w, cls, box, background_channel=True)

        bench.measure(end_to_end, model="spinenet", what="end-to-end",
                      variant=f"{name} forward + eager static NMS", batch=batch, precision=precision,
                      own_bytes=module_bytes(sn.fast), check=spinenet_dets)

        def reference(w=w, u8=u8):
            with torch.no_grad(), amp(dev, precision):
                cls, box = compiled(w.preprocess(u8))
                return sn.reference_postprocess(w, cls, box)

        bench.measure(reference, model="spinenet", what="end-to-end",
                      variant=f"{name} forward + eager reference post-processing", batch=batch,
                      precision=precision, own_bytes=module_bytes(sn.fast), check=spinenet_detect_dets)
