"""msame's remaining flags on ``spinenet infer``: each works, or says in one line why it can't on this backend.

Spellings and meanings from msame's own source (Ascend/tools ``msame/src/main.cpp`` @32d48e2, the
``getopt_long`` table, and ``msame/README.md``; deployment-contract.md §2.1):

=============  ==================================================================================================
``--device``   NPU id 0..255 ("device id must in 0 to 255"). Here: an id N picks ``cuda:N`` where the runtime has
               CUDA, N = 0 is this machine's CPU otherwise; ``cpu``, ``cuda``, ``cuda:N`` are taken as they are.
``--debug``    ``true`` prints the model description (inputs, outputs, dims). Here: the same from the runtime.
``--profiler`` ``true`` profiles into ``<output>/profiler``; exclusive with ``--dump``. Here: ONNX Runtime's own
               profiler (a Chrome-trace JSON of per-node times) into ``<output>/profiler``.
``--dump``     ``true`` dumps operator outputs into ``<output>/dump``. Here (ONNX Runtime): every node output of
               the top-level graph, one ``.npy`` per tensor, in ``<output>/dump/<run>/<input name>/``.
``--dymBatch`` batch of a model converted with ``--dynamic_batch_size`` (1..2048).
``--dymHW``    "h,w" of a model converted with ``--dynamic_image_size``.
``--dymDims``  "name:d1,d2;name2:..." of a model converted with ``--dynamic_dims``.
``--dymShape`` actual shapes ("name:d1,d2;...") of a model converted with ``--input_shape_range``.
``--outputSize`` comma list of output buffer sizes in bytes, for dynamic-shape models.
=============  ==================================================================================================

msame allows at most one of the four dym* flags ("dymBatch dymDims dymHW dymShape cannot be set at the same
time") and takes a boolean as true only for the exact string ``true``; here ``true/false`` (also ais_bench's
``1/0``, ``yes/no``) are read and anything else is refused rather than silently taken as false. Every export of
this project is static, so a dym* value equal to the graph's own shape is accepted (a no-op) and any other is
refused naming the graph's shape; ``--outputSize`` is checked against the outputs' real sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DYM_FLAGS = ("dymBatch", "dymHW", "dymDims", "dymShape")
TRUE, FALSE = ("true", "1", "yes", "y", "t"), ("false", "0", "no", "n", "f")


@dataclass
class MsameOptions:
    debug: bool = False
    profiler: bool = False
    dump: bool = False
    dymBatch: int | None = None  # noqa: N815 (msame's spelling)
    dymHW: str | None = None  # noqa: N815
    dymDims: str | None = None  # noqa: N815
    dymShape: str | None = None  # noqa: N815
    outputSize: str | None = None  # noqa: N815

    def check(self) -> None:
        """The checks msame makes before loading the model."""
        if self.profiler and self.dump:
            raise ValueError("--profiler and --dump can not both be true (as in msame)")
        given = [f"--{f}" for f in DYM_FLAGS if getattr(self, f) is not None]
        if len(given) > 1:
            raise ValueError(f"{' and '.join(given)}: dymBatch dymDims dymHW dymShape cannot be set at the same time "
                             "(as in msame)")
        if self.dymBatch is not None and not 1 <= self.dymBatch <= 2048:
            raise ValueError(f"--dymBatch must be in 1..2048 (as in msame), got {self.dymBatch}")


def parse_bool(text: str) -> bool:
    """msame's ``true``/``false`` (and ais_bench's ``1/0``, ``yes/no``); anything else is an error."""
    t = str(text).strip().lower()
    if t in TRUE:
        return True
    if t in FALSE:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def resolve_device(device: str, backend: str) -> tuple[str, str | None]:
    """(device for the runtime, a note) from ``--device``: cpu, cuda, cuda:N, or msame's NPU id 0..255."""
    text = str(device).strip()
    if not text.isdigit():
        return text, None
    n = int(text)
    if n > 255:
        raise ValueError(f"--device {n}: device id must be in 0..255 (as in msame)")
    if _has_cuda(backend):
        return f"cuda:{n}", None
    if n == 0:
        return "cpu", "--device 0: msame's first NPU is this machine's CPU here (no accelerator in this runtime)"
    raise ValueError(f"--device {n}: no device {n} here ({backend} on this machine runs on the CPU only; "
                     "use --device 0 or cpu)")


def _has_cuda(backend: str) -> bool:
    if backend == "onnxruntime":
        import onnxruntime as ort

        return "CUDAExecutionProvider" in ort.get_available_providers()
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return False  # openvino: CPU here


def check_dynamic(opts: MsameOptions, input_name: str, input_shape: tuple[int, ...]) -> str | None:
    """A dym* value equal to the static graph's shape: a note; any other: a one-line error naming that shape."""
    shape = tuple(int(d) for d in input_shape)
    static = (f"the model is static ({input_name} {list(shape)}; spinenet export writes fixed shapes, as the "
              "seed's ATC command compiles them)")
    if opts.dymBatch is not None:
        if opts.dymBatch != shape[0]:
            raise ValueError(f"--dymBatch {opts.dymBatch}: {static}; re-export with --batch_size {opts.dymBatch}")
        return f"--dymBatch {opts.dymBatch}: the model's own batch, nothing to set"
    if opts.dymHW is not None:
        try:
            hw = tuple(int(v) for v in opts.dymHW.split(","))
        except ValueError:
            hw = ()
        if len(hw) != 2:
            raise ValueError(f"--dymHW {opts.dymHW!r}: expected h,w (as in msame, e.g. 640,640)")
        if hw != shape[1:3]:
            raise ValueError(f"--dymHW {opts.dymHW}: {static}; re-export with --input_image_size {hw[0]},{hw[1]}")
        return f"--dymHW {opts.dymHW}: the model's own size, nothing to set"
    for flag in ("dymDims", "dymShape"):
        value = getattr(opts, flag)
        if value is None:
            continue
        dims = _parse_dims(flag, value)
        if set(dims) != {input_name}:
            raise ValueError(f"--{flag} {value!r}: the model has one input, {input_name} {list(shape)}")
        if dims[input_name] != shape:
            raise ValueError(f"--{flag} {value}: {static}")
        return f"--{flag} {value}: the model's own shape, nothing to set"
    return None


def _parse_dims(flag: str, value: str) -> dict[str, tuple[int, ...]]:
    out = {}
    for part in (p for p in value.split(";") if p.strip()):
        name, sep, dims = part.rpartition(":")
        try:
            out[name.strip()] = tuple(int(d) for d in dims.split(","))
        except ValueError:
            sep = ""
        if not sep:
            raise ValueError(f"--{flag} {value!r}: expected name:d1,d2,...;name2:... (as in msame)")
    return out


def check_output_size(opts: MsameOptions, outputs: dict[str, np.ndarray]) -> str | None:
    """``--outputSize`` against the first run's outputs: msame would write at most that many bytes per output."""
    if opts.outputSize is None:
        return None
    try:
        sizes = [int(v) for v in opts.outputSize.split(",")]
    except ValueError as e:
        raise ValueError(f"--outputSize {opts.outputSize!r}: expected a comma list of byte counts") from e
    if len(sizes) != len(outputs):
        raise ValueError(f"--outputSize gives {len(sizes)} size(s), the model has {len(outputs)} outputs "
                         f"({', '.join(outputs)})")
    for size, (name, array) in zip(sizes, outputs.items(), strict=True):
        if size < array.nbytes:
            raise ValueError(f"--outputSize {size} for output {name} is smaller than its {array.nbytes} bytes "
                             f"({array.dtype.name} {list(array.shape)})")
    return "--outputSize: each buffer holds its output (the runtime sizes its own buffers)"


def describe(session) -> str:
    """msame's ``--debug true`` model description, from the runtime session."""
    lines = [f"[INFO] model {session.path}: 1 input, {len(session.output_names)} output(s)",
             f"[INFO] input[0] {session.input_name}: {session.input_dtype.name} {list(session.input_shape)} "
             f"({int(np.prod(session.input_shape)) * session.input_dtype.itemsize} bytes)"]
    shapes = _output_shapes(session)
    for k, name in enumerate(session.output_names):
        lines.append(f"[INFO] output[{k}] {name}: {shapes.get(name, '(shape known after the first run)')}")
    return "\n".join(lines)


def _static_outputs(session) -> dict[str, np.ndarray] | None:
    """Zero-stride stand-ins of the outputs (right shape, dtype and nbytes) where the runtime declares them."""
    inner = getattr(session, "session", None)
    dtypes = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int32)": np.int32,
              "tensor(int64)": np.int64, "tensor(uint8)": np.uint8}
    if inner is None or not hasattr(inner, "get_outputs"):
        return None
    out = {}
    for o in inner.get_outputs():
        if o.type not in dtypes or not all(isinstance(d, int) for d in o.shape):
            return None
        out[o.name] = np.broadcast_to(np.zeros((), dtypes[o.type]), tuple(o.shape))
    return out


def _output_shapes(session) -> dict[str, str]:
    inner = getattr(session, "session", None)
    if inner is None or not hasattr(inner, "get_outputs"):
        return {}
    return {o.name: f"{o.type.replace('tensor(', '').rstrip(')')} {list(o.shape)}" for o in inner.get_outputs()}


class MsameRun:
    """The flags' hooks around ``spinenet infer``'s loop (kept here so infer.py stays msame's plain loop)."""

    def __init__(self, opts: MsameOptions | None, backend: str, out_root):
        from pathlib import Path

        self.opts = opts or MsameOptions()
        self.opts.check()
        self.backend, self.out_root = backend, Path(out_root)
        self.notes: list[str] = []
        self._dumper = None
        self._checked_sizes = False
        if (self.opts.profiler or self.opts.dump) and backend != "onnxruntime":
            flag = "--profiler" if self.opts.profiler else "--dump"
            raise ValueError(f"{flag} true: wired to ONNX Runtime here (its profiler / every node's output); "
                             f"use --backend onnxruntime, not {backend}")

    def open_session(self, model, device: str, threads):
        """With ``--profiler true``, an ONNX Runtime session that profiles; else None (the caller's session)."""
        from spinenet.deploy.runtimes import OnnxRuntimeSession

        if not self.opts.profiler:
            return None
        folder = self.out_root / "profiler"
        folder.mkdir(parents=True, exist_ok=True)
        return OnnxRuntimeSession(model, device, threads, profile_prefix=str(folder / "onnxruntime_profile"))

    def after_open(self, session, model) -> None:
        if self.opts.debug:
            print(describe(session), flush=True)
        note = check_dynamic(self.opts, session.input_name, session.input_shape)
        self.notes += [note] if note else []
        static = _static_outputs(session)
        if static is not None:  # checked before any output folder is made
            note = check_output_size(self.opts, static)
            self.notes += [note] if note else []
            self._checked_sizes = True
        if self.opts.dump:
            self._dumper = _Dumper(model, session.device)

    def after_run(self, name: str, x: np.ndarray, outputs: dict[str, np.ndarray], run_dir) -> None:
        if not self._checked_sizes:
            note = check_output_size(self.opts, outputs)
            self.notes += [note] if note else []
            self._checked_sizes = True
        if self._dumper is not None:
            self._dumper.dump(x, self.out_root / "dump" / run_dir.name / name)

    def finish(self, session) -> None:
        if self.opts.profiler:
            path = session.session.end_profiling()
            self.notes.append(f"--profiler: ONNX Runtime profile (Chrome trace JSON) {path}")
        if self._dumper is not None:
            self.notes.append(f"--dump: every node output as .npy under {self.out_root / 'dump'}")
        for note in self.notes:
            print(f"[INFO] {note}")

    def summary(self) -> dict:
        flags = {k: v for k, v in vars(self.opts).items() if v not in (None, False)}
        return {"msame_flags": flags, "msame_notes": self.notes} if flags else {}


class _Dumper:
    """msame's ``--dump``: every node output of the top-level graph, saved per input as ``<tensor>.npy``.

    The model is re-declared with all inferred intermediate values as extra graph outputs and run a second
    time (untimed); the timed run stays the plain model's.
    """

    def __init__(self, model, device: str):
        import onnx
        import onnxruntime as ort

        proto = onnx.load(str(model))
        proto = onnx.shape_inference.infer_shapes(proto)
        declared = {o.name for o in proto.graph.output}
        infos = {v.name: v for v in proto.graph.value_info}
        for node in proto.graph.node:
            for out in node.output:
                if out and out not in declared and out in infos:
                    proto.graph.output.append(infos[out])
                    declared.add(out)
        providers = ["CUDAExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(proto.SerializeToString(), providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.names = [o.name for o in self.session.get_outputs()]

    def dump(self, x: np.ndarray, folder) -> None:
        import re

        folder.mkdir(parents=True, exist_ok=True)
        for name, value in zip(self.names, self.session.run(self.names, {self.input_name: x}), strict=True):
            np.save(folder / (re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".npy"), value)


def add_msame_flags(p) -> None:
    """msame's remaining flags on an argparse parser (``--device`` and ``--loop`` are the caller's)."""
    g = p.add_argument_group("msame flags", "as msame spells them; see spinenet.deploy.msame_flags for what each "
                                            "does on this backend")
    g.add_argument("--debug", type=_bool_arg, default=False, metavar="true|false",
                   help="print the model description (inputs, outputs, shapes)")
    g.add_argument("--profiler", type=_bool_arg, default=False, metavar="true|false",
                   help="ONNX Runtime per-node profile into <output>/profiler (not with --dump)")
    g.add_argument("--dump", type=_bool_arg, default=False, metavar="true|false",
                   help="every node output as .npy into <output>/dump (ONNX Runtime)")
    g.add_argument("--dymBatch", type=int, default=None, help="batch of a dynamic-batch model (static here: checked)")
    g.add_argument("--dymHW", default=None, help="h,w of a dynamic-size model (static here: checked)")
    g.add_argument("--dymDims", default=None, help="name:d1,d2;... of a dynamic-dims model (static here: checked)")
    g.add_argument("--dymShape", default=None, help="name:d1,d2;... of a dynamic-shape model (static here: checked)")
    g.add_argument("--outputSize", default=None, help="comma list of output buffer bytes (checked against the outputs)")


def _bool_arg(text: str) -> bool:
    import argparse

    try:
        return parse_bool(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def msame_options(args) -> MsameOptions:
    return MsameOptions(**{k: getattr(args, k) for k in ("debug", "profiler", "dump", *DYM_FLAGS, "outputSize")})
