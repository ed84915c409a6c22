"""Runtimes for exported models. ONNX Runtime: ``OnnxRuntimeSession(path).run(uint8_nhwc) -> {name: array}``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

# ONNX tensor element types -> numpy, for the input check.
_ORT_DTYPES = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32, "tensor(float16)": np.float16,
               "tensor(int32)": np.int32, "tensor(int64)": np.int64}
_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


class OnnxRuntimeSession:
    """An ONNX Runtime session over an exported model with one input (``Placeholder``).

    ``device``: ``"cpu"`` or ``"cuda"`` (``"cuda:1"`` picks a GPU); ``threads``: intra-op threads (None: ORT's
    default, one per physical core). ``run(images)`` checks the input's shape and dtype against the model and
    returns the outputs by name, in the model's order.
    """

    def __init__(self, path: str | os.PathLike, device: str = "cpu", threads: int | None = None):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model {path} does not exist; make one with `spinenet export`")
        kind, _, index = device.partition(":")
        if kind not in _PROVIDERS:
            raise ValueError(f"device {device!r} is not supported; valid: cpu, cuda, cuda:N")
        provider = _PROVIDERS[kind]
        available = ort.get_available_providers()
        if provider not in available:
            raise ValueError(f"ONNX Runtime here has no {provider} (available: {', '.join(available)}); "
                             "install onnxruntime-gpu for CUDA, or use device='cpu'")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        providers = [(provider, {"device_id": int(index or 0)})] if kind == "cuda" else [provider]
        self.path, self.device = path, device
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"{path} has {len(inputs)} inputs; a spinenet export has one (Placeholder)")
        self.input_name = inputs[0].name
        self.input_shape = tuple(inputs[0].shape)  # static in a spinenet export, e.g. (1, 640, 640, 3)
        self.input_dtype = np.dtype(_ORT_DTYPES.get(inputs[0].type, np.float32))
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """``images``: the model's input, e.g. uint8 (B, H, W, 3) NHWC RGB. Returns ``{output name: array}``."""
        images = np.asarray(images)
        if tuple(images.shape) != self.input_shape or images.dtype != self.input_dtype:
            raise ValueError(f"{self.path.name} expects {self.input_name} of shape {self.input_shape} "
                             f"{self.input_dtype} (B, H, W, 3 NHWC RGB), got {tuple(images.shape)} {images.dtype}; "
                             "resize/pad the images to the export size (spinenet image2bin does) or re-export "
                             "with --input_image_size / --batch_size")
        outputs = self.session.run(self.output_names, {self.input_name: np.ascontiguousarray(images)})
        return dict(zip(self.output_names, outputs, strict=True))
