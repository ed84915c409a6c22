"""``spinenet benchmark``: latency and throughput per backend, batch size and precision, stated with the machine.

For each backend x batch size x {with, without post-processing}: ms/batch, ms/image and images/s (median and
p90 over ``runs`` after ``warmup`` runs) on uint8 NHWC inputs of the model's size. A spinenet checkpoint is
exported to ONNX on the fly for the ONNX backends; an ``.onnx`` model is timed as it is (its batch and
post-processing are fixed at export).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from spinenet.io_checks import write_text_atomic


def lscpu_fields() -> dict[str, str]:
    """``lscpu``'s "key: value" lines as a dict (empty where lscpu is missing or fails): the CPU model and flags
    that every benchmark figure is recorded with (benchmarks/RESULTS.md)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


# The CPU features that decide which int8 and bf16 kernels a runtime picks (oneDNN's dispatch in both OpenVINO
# and ONNX Runtime's MLAS): AMX tiles, AVX-512 VNNI (vpdpbusd), AVX-VNNI (its 256-bit VEX form), AVX-512 BF16,
# and AVX2 (int8 via vpmaddubsw, whose 16-bit saturation ONNX Runtime works around with reduce_range).
ISA_FLAGS = ("amx_int8", "amx_bf16", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512f", "avx2")


def isa_flags(flags: str | None = None) -> str:
    """The :data:`ISA_FLAGS` this CPU has (lscpu's flag names, most capable first), e.g. "avx512_vnni avx512_bf16
    avx512f avx2"; "unknown" without lscpu. Printed in every benchmark row that depends on them."""
    have = set((lscpu_fields().get("Flags", "") if flags is None else flags).split())
    found = [f for f in ISA_FLAGS if f in have]
    return " ".join(found) if found else ("unknown" if not have else "none of " + "/".join(ISA_FLAGS))


def _machine() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.machine()} {platform.processor() or 'CPU'}, {os.cpu_count()} cores".strip()


def peak_rss_mib() -> float:
    """This process's peak resident set in MiB: ``VmHWM`` from /proc (fresh at every exec). Not getrusage's
    ``ru_maxrss`` where /proc is there: Linux carries that across fork and exec, so a child would report its
    parent's peak if larger."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: the best there is


def time_ms(fn, warmup: int, runs: int) -> list[float]:
    """Wall times (ms) of ``runs`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _torch_runner(checkpoint: str, batch: int, postprocess: str, precision: str, device: str):
    import torch

    from spinenet.deploy.export import ExportWrapper
    from spinenet.engine.checkpoint import load_model

    model, ckpt = load_model(checkpoint, map_location=device)
    size = tuple(ckpt["config"]["retinanet_parser"]["output_size"])
    wrapper = ExportWrapper(model, batch_size=batch, image_size=size, postprocess=postprocess).to(device).eval()
    x = torch.randint(0, 256, (batch, *size, 3), dtype=torch.uint8, device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if precision == "fp16" and torch.device(device).type != "cuda":
        raise ValueError("fp16 runs on CUDA only; use --precision fp32 or bf16 on the CPU")

    def run():
        with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
            outs = wrapper(x)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        return outs

    return run, size


def run_benchmark(model: str | list[str], backends: list[str], batch_sizes: list[int], precision: str = "fp32",
                  device: str = "cpu", warmup: int = 3, runs: int = 10, threads: int | None = None,
                  output: str | None = None) -> list[dict]:
    """Time each of ``model`` (a path, a comma-separated list or a list: checkpoints and exports, e.g. an fp32 and
    an int8 export side by side) per backend and batch size; prints one table, returns the rows.

    An int8 export (``spinenet export --quantize int8``) is labelled ``int8+<precision>``: its convolutions run
    int8 and the rest at ``precision`` (OpenVINO's precision hint, stated because its CPU default is bf16 where
    the CPU has bf16 units). Every row carries the CPU's int8/bf16 instruction sets (:func:`isa_flags`).
    """
    models = [m.strip() for m in model.split(",") if m.strip()] if isinstance(model, str) else list(model)
    rows = []
    for m in models:
        rows += _benchmark_model(m, backends, batch_sizes, precision, device, warmup, runs, threads)
    isa = isa_flags() if device == "cpu" else device
    for r in rows:
        r["isa"] = isa
    machine = _machine()
    print(f"{', '.join(Path(m).name for m in models)} on {machine} ({device}, ISA {isa}); median (p90) over {runs} "
          f"runs after {warmup}")
    width = max(12, *(len(r["model"]) for r in rows)) if rows else 12
    print(f"{'model':{width}s} {'backend':12s} {'precision':11s} {'batch':>5s} {'postproc':>8s} {'ms/batch':>10s} "
          f"{'p90':>8s} {'ms/img':>8s} {'img/s':>8s}  ISA")
    for r in rows:
        print(f"{r['model']:{width}s} {r['backend']:12s} {r['precision']:11s} {r['batch']:5d} "
              f"{str(r['postprocess']):>8s} {r['ms_per_batch']:10.1f} {r['ms_per_batch_p90']:8.1f} "
              f"{r['ms_per_image']:8.1f} {r['images_per_s']:8.2f}  {r['isa']}")
    if output:
        write_text_atomic(output, json.dumps({"model": model, "machine": machine, "rows": rows}, indent=1))
        print(f"results: {output}")
    return rows


def _benchmark_model(model: str, backends: list[str], batch_sizes: list[int], precision: str, device: str,
                     warmup: int, runs: int, threads: int | None) -> list[dict]:
    from spinenet.deploy.runtimes import open_session

    is_onnx = Path(model).suffix == ".onnx"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            for batch in batch_sizes:
                for post in ("v1", "none"):
                    label = precision
                    if backend == "torch":
                        if is_onnx:
                            raise ValueError("--backends torch needs a spinenet checkpoint (.pt), not an .onnx")
                        if threads:
                            import torch

                            torch.set_num_threads(threads)
                        run, size = _torch_runner(model, batch, post, precision, device)
                    else:
                        if is_onnx:
                            path = model
                            if (batch, post) != (batch_sizes[0], "v1"):
                                continue  # a given .onnx has one batch size and one post-processing
                        else:
                            from spinenet.deploy.export import export_onnx
                            from spinenet.engine.checkpoint import load_model

                            m, ckpt = load_model(model)
                            size = tuple(ckpt["config"]["retinanet_parser"]["output_size"])
                            path = export_onnx(m, Path(tmp) / f"b{batch}_{post}.onnx", batch_size=batch,
                                               image_size=size, postprocess=post)
                        sess = open_session(path, backend, device, threads, precision)
                        if sess.metadata.get("spinenet.quantize") == "int8":
                            label = f"int8+{precision if backend == 'openvino' else 'fp32'}"
                        post = "v1" if "DetectionBoxes" in sess.output_names else "none"
                        x = np.random.default_rng(0).integers(0, 256, sess.input_shape, dtype=np.uint8)
                        run = functools.partial(sess.run, x)
                        batch, size = sess.input_shape[0], sess.input_shape[1:3]
                    times = sorted(time_ms(run, warmup, runs))
                    med, p90 = statistics.median(times), times[min(len(times) - 1, int(0.9 * len(times)))]
                    rows.append({"model": Path(model).name, "backend": backend, "batch": batch,
                                 "postprocess": post != "none", "input": list(size), "precision": label,
                                 "device": device, "ms_per_batch": med, "ms_per_batch_p90": p90,
                                 "ms_per_image": med / batch, "images_per_s": 1000 * batch / med, "runs": runs,
                                 "warmup": warmup})
    return rows
