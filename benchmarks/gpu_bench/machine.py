"""What the numbers were measured on: Python/torch/torchvision, the CPU (``lscpu``), the GPU (torch's device
properties and ``nvidia-smi``), and the flags that change speed (cuDNN benchmark, TF32).

benchmarks/RESULTS.md asks for the CPU model and flags beside every figure; a training run's input path is
CPU-bound, so the GPU host's CPU is part of the result too.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20
# lscpu flags that decide CPU-side speed (data workers, the CPU rows of a smoke run).
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "neon", "asimd")


def ensure_spinenet_importable() -> None:
    """The device machine runs the checkout without installing it: fall back to ``src/``."""
    try:
        import spinenet  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(ROOT / "src"))


def _run(cmd: list[str]) -> str | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def lscpu() -> dict:
    """CPU model, counts and the speed-relevant flags from ``lscpu`` (empty if it is not there)."""
    from spinenet.deploy.benchmark import lscpu_fields

    fields = lscpu_fields()
    if not fields:
        return {}
    flags = set(fields.get("Flags", "").split())
    out = {"cpu_model": fields.get("Model name"), "cpu_sockets": fields.get("Socket(s)"),
           "cpu_threads_per_core": fields.get("Thread(s) per core"),
           "cpu_flags": [f for f in CPU_FLAGS if f in flags]}
    return {k: v for k, v in out.items() if v not in (None, "")}


def nvidia_smi() -> dict:
    """Driver, power limit and clocks of GPU 0 from ``nvidia-smi`` (empty if it is not there)."""
    fields = ("name", "driver_version", "power.limit", "clocks.max.sm", "clocks.max.memory", "memory.total",
              "pstate")
    text = _run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"])
    if not text or not text.strip():
        return {}
    values = [v.strip() for v in text.strip().splitlines()[0].split(",")]
    return {f"smi_{k.replace('.', '_')}": v for k, v in zip(fields, values, strict=False)}


def environment(device) -> dict:
    import torchvision

    env = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
           "device": str(device), "cpu_count": os.cpu_count(), "machine": platform.machine(),
           "torch_threads": torch.get_num_threads(), **lscpu()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=torch.cuda.get_device_name(device), capability=list(torch.cuda.get_device_capability(device)),
                   gpu_memory_mib=round(props.total_memory / MIB), sm_count=props.multi_processor_count,
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   cudnn_benchmark=torch.backends.cudnn.benchmark,
                   cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                   matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32, **nvidia_smi())
    else:
        env["gpu"] = None
    return env
