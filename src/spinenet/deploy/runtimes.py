"""Runtimes for exported models. ONNX Runtime: ``OnnxRuntimeSession(path).run(uint8_nhwc) -> {name: array}``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

# ONNX tensor element types -> numpy, for the input check.
_ORT_DTYPES = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32, "tensor(float16)": np.float16,
               "tensor(int32)": np.int32, "tensor(int64)": np.int64}
_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def unloadable_model(path: Path, runtime: str, error: Exception) -> ValueError:
    """One line for a model file a runtime can't load (random bytes, a truncated copy, another format): the
    file, the runtime's first line of explanation, and the fix."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = (lines[-1] if lines else type(error).__name__)[:200]  # OpenVINO's last line is the reason
    return ValueError(f"{path}: {runtime} cannot load this model ({detail}); it is not a complete ONNX model "
                      "(a truncated copy or another file?): make it again with `spinenet export`")


class OnnxRuntimeSession:
    """An ONNX Runtime session over an exported model with one input (``Placeholder``).

    ``device``: ``"cpu"`` or ``"cuda"`` (``"cuda:1"`` picks a GPU); ``threads``: intra-op threads (None: ORT's
    default, one per physical core). ``run(images)`` checks the input's shape and dtype against the model and
    returns the outputs by name, in the model's order.
    """

    def __init__(self, path: str | os.PathLike, device: str = "cpu", threads: int | None = None, *,
                 profile_prefix: str | None = None):
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
        if profile_prefix is not None:  # msame's --profiler: ONNX Runtime's per-node trace (end_profiling writes it)
            options.enable_profiling, options.profile_file_prefix = True, profile_prefix
        providers = [(provider, {"device_id": int(index or 0)})] if kind == "cuda" else [provider]
        self.path, self.device = path, device
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as e:  # noqa: BLE001 - ORT raises its own types (InvalidProtobuf, Fail, ...)
            raise unloadable_model(path, "ONNX Runtime", e) from e
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


class TorchSession:
    """The same interface over a spinenet checkpoint run in PyTorch (the exported graph's wrapper).

    On the CPU: eagerly, the checkpoint's model as it is (the reference). On CUDA (``optimized`` None or True):
    the inference rewrites of :func:`~spinenet.deploy.optimize.optimize_for_inference` ("direct": BN folded,
    background channels dropped, widths padded to multiples of 8 for tensor cores, stacked 1x1 reductions; not
    Winograd, which cuDNN does itself) captured as one graph and one CUDA graph
    (:class:`~spinenet.deploy.compiled.CompiledDetector`; the first call compiles). Not run in this project's CI,
    which has no GPU.
    """

    def __init__(self, path: str | os.PathLike, device: str = "cpu", threads: int | None = None,
                 batch_size: int = 1, image_size: tuple[int, int] | None = None, optimized: bool | None = None):
        import torch

        from spinenet.deploy.compiled import CompiledDetector
        from spinenet.deploy.export import ExportWrapper
        from spinenet.engine.checkpoint import load_model

        if threads is not None:
            torch.set_num_threads(int(threads))
        model, ckpt = load_model(path, map_location=device)
        size = image_size or tuple(ckpt["config"]["retinanet_parser"]["output_size"])
        optimized = str(device).startswith("cuda") if optimized is None else optimized
        self.wrapper = ExportWrapper(model, batch_size=batch_size, image_size=size,
                                     conv_algorithm="direct" if optimized else None).to(device).eval()
        self.detector = CompiledDetector(self.wrapper) if optimized else self.wrapper
        self.path, self.device = Path(path), device
        self.input_name = "Placeholder"
        self.input_shape = (batch_size, size[0], size[1], 3)
        self.input_dtype = np.dtype(np.uint8)
        self.output_names = list(self.wrapper.output_names)
        self.metadata = {"spinenet.variant": ckpt.get("variant", "")}

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        images = np.asarray(images)
        if tuple(images.shape) != self.input_shape or images.dtype != self.input_dtype:
            raise ValueError(f"{self.path.name} expects {self.input_name} of shape {self.input_shape} uint8, got "
                             f"{tuple(images.shape)} {images.dtype}")
        with torch.no_grad():
            outs = self.detector(torch.from_numpy(np.ascontiguousarray(images)).to(self.device))
        return {n: o.cpu().numpy() for n, o in zip(self.output_names, outs, strict=True)}


class OpenVinoSession:
    """OpenVINO over an exported ONNX (CPU). ``precision``: "fp32" or "bf16" (OpenVINO's CPU default where the CPU
    has bf16 units — numbers are only comparable when the precision is stated)."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu", threads: int | None = None,
                 precision: str = "fp32"):
        import onnx

        try:
            import openvino as ov
        except ImportError as e:
            raise ValueError("the openvino backend needs the openvino package: pip install openvino") from e
        if device != "cpu":
            raise ValueError("the openvino backend runs on the CPU here; use --device cpu")
        config = {"INFERENCE_PRECISION_HINT": "f32" if precision == "fp32" else "bf16"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = str(threads)
        core = ov.Core()
        self.path, self.device, self.precision = Path(path), device, precision
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model {path} does not exist; make one with `spinenet export`")
        try:
            # The ONNX frontend by name: given a path, OpenVINO tries every frontend in turn, and on a broken file
            # the TensorFlow one floods stderr with text-format parse errors before the real message.
            from openvino.frontend import FrontEndManager

            frontend = FrontEndManager().load_by_framework("onnx")
            self.compiled = core.compile_model(frontend.convert(frontend.load(str(path))), "CPU", config)
        except Exception as e:  # noqa: BLE001 - OpenVINO raises GeneralFailure etc. with multi-line text
            raise unloadable_model(self.path, "OpenVINO", e) from e
        port = self.compiled.inputs[0]
        self.input_name = port.get_any_name()
        self.input_shape = tuple(port.get_shape())
        self.input_dtype = np.dtype(np.uint8 if port.get_element_type().to_dtype() == np.uint8 else np.float32)
        # An output port can carry several tensor names (a quantized export's NumDetections is also
        # "/ReduceSum_output_0"), of which get_any_name picks any: the graph's own output names are the ones.
        graph = onnx.load(str(self.path), load_external_data=False)
        declared = {o.name for o in graph.graph.output}
        self.output_names = [next((n for n in sorted(o.get_names()) if n in declared), o.get_any_name())
                             for o in self.compiled.outputs]
        self.metadata = {p.key: p.value for p in graph.metadata_props}

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        images = np.asarray(images)
        if tuple(images.shape) != self.input_shape or images.dtype != self.input_dtype:
            raise ValueError(f"{self.path.name} expects {self.input_name} of shape {self.input_shape} "
                             f"{self.input_dtype}, got {tuple(images.shape)} {images.dtype}")
        result = self.compiled(np.ascontiguousarray(images))
        return {name: np.asarray(result[port]) for name, port in zip(self.output_names, self.compiled.outputs,
                                                                       strict=True)}


BACKENDS = ("onnxruntime", "openvino", "torch")


def open_session(model: str | os.PathLike, backend: str = "onnxruntime", device: str = "cpu",
                 threads: int | None = None, precision: str = "fp32"):
    """A session for ``model`` (.onnx for onnxruntime/openvino, a spinenet .pt checkpoint for torch)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is unknown; valid: {', '.join(BACKENDS)}")
    suffix = Path(model).suffix
    if backend == "torch" and suffix == ".onnx":
        raise ValueError(f"--backend torch runs a spinenet checkpoint (.pt), not {model}; use --backend onnxruntime")
    if backend != "torch" and suffix == ".pt":
        raise ValueError(f"{model} is a PyTorch checkpoint: export it first (`spinenet export`) or use --backend torch")
    if backend == "onnxruntime":
        return OnnxRuntimeSession(model, device, threads)
    if backend == "openvino":
        return OpenVinoSession(model, device, threads, precision)
    return TorchSession(model, device, threads)
