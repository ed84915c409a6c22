"""Compare exported graphs node by node on a noisy machine: where each one spends its time, and by how much they differ.

Whole-graph timings on the 2-core development machine drift by +-15 % from minute to minute, more than most single
rewrites gain. This script loads every given ONNX file into one process (ONNX Runtime with its profiler on, or
OpenVINO with performance counters), runs them interleaved, one run each per round in a shuffled order, and for each
graph sums, over its nodes, the node's *fastest* run. Noise only ever slows a node down, so the sum of minima is a
stable figure: two sessions of one model agree within about 0.3 ms here. It is printed per section (backbone,
head, everything else: normalisation and post-processing), with the wall-clock min and median of the same runs.

    python benchmarks/node_profile.py a.onnx b.onnx [...] [--backend onnxruntime|openvino] [--rounds 15]

The input is the uint8 image the graph declares (random pixels); the first file is the baseline of the ratios.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _section(node: str) -> str:
    return "backbone" if "/backbone/" in node else "head" if "/head/" in node else "other"


class _OrtRunner:
    def __init__(self, path: str, threads: int, prefix: str):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.enable_profiling = True
        so.profile_file_prefix = prefix
        self.session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.name, self.shape, self.type = inp.name, inp.shape, inp.type

    def run(self, x: np.ndarray) -> None:
        self.session.run(None, {self.name: x})

    def node_times(self, warmup: int) -> dict[str, list[float]]:
        path = self.session.end_profiling()
        events = json.loads(Path(path).read_text())
        Path(path).unlink()
        times: dict[str, list[float]] = collections.defaultdict(list)
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                times[e["name"].removesuffix("_kernel_time")].append(e["dur"] / 1e3)
        return {k: v[warmup:] for k, v in times.items()}


class _OpenVinoRunner:
    def __init__(self, path: str, threads: int):
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(core.read_model(path), "CPU", {
            "INFERENCE_NUM_THREADS": threads, "PERF_COUNT": True, "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32"})
        self.request = compiled.create_infer_request()
        port = compiled.inputs[0]
        self.shape = list(port.shape)
        self.type = "tensor(uint8)" if port.element_type == ov.Type.u8 else "tensor(float)"
        self.times: dict[str, list[float]] = collections.defaultdict(list)

    def run(self, x: np.ndarray) -> None:
        self.request.infer({0: x})
        for p in self.request.profiling_info:
            self.times[p.node_name].append(p.real_time.total_seconds() * 1e3)

    def node_times(self, warmup: int) -> dict[str, list[float]]:
        return {k: v[warmup:] for k, v in self.times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="exported ONNX files (the first is the baseline)")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "openvino"])
    p.add_argument("--rounds", type=int, default=15, help="timed rounds, after 3 warm-up rounds")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    args = p.parse_args(argv)
    for m in args.models:
        if not Path(m).is_file():
            p.error(f"{m}: no such file (export one with `spinenet export`)")
    warmup = 3
    with tempfile.TemporaryDirectory() as tmp:
        runners = [_OrtRunner(m, args.threads, str(Path(tmp) / f"p{i}")) if args.backend == "onnxruntime"
                   else _OpenVinoRunner(m, args.threads) for i, m in enumerate(args.models)]
        rng = np.random.default_rng(0)
        inputs = []
        for r in runners:
            shape = [int(d) for d in r.shape]
            if r.type == "tensor(uint8)":
                inputs.append(rng.integers(0, 256, shape, dtype=np.uint8))
            else:
                inputs.append(rng.standard_normal(shape).astype(np.float32))
        wall: list[list[float]] = [[] for _ in runners]
        for round_ in range(warmup + args.rounds):
            for i in rng.permutation(len(runners)):
                t0 = time.perf_counter()
                runners[i].run(inputs[i])
                if round_ >= warmup:
                    wall[i].append((time.perf_counter() - t0) * 1e3)
            print(f"\rround {round_ + 1}/{warmup + args.rounds}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        sums = []
        for r in runners:
            per_section: collections.Counter = collections.Counter()
            for node, t in r.node_times(warmup).items():
                if t:
                    per_section[_section(node)] += min(t)
            sums.append(per_section)
    base = sum(sums[0].values())
    print(f"{args.backend}, {args.threads} threads, {args.rounds} interleaved rounds; ms = sum over nodes of each "
          "node's fastest run")
    print(f"{'model':32} {'total':>7} {'ratio':>6} {'backbone':>9} {'head':>7} {'other':>7} {'wall min':>9} "
          f"{'wall med':>9}")
    for m, s, w in zip(args.models, sums, wall, strict=True):
        total = sum(s.values())
        print(f"{Path(m).name:32} {total:7.1f} {total / base:6.3f} {s['backbone']:9.1f} {s['head']:7.1f} "
              f"{s['other']:7.1f} {min(w):9.1f} {statistics.median(w):9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
