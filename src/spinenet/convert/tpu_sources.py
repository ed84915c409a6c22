"""Where TF1 TPU weights come from: a name -> array view over a ``Saver`` checkpoint (prefix, ``.index``, folder or
published ``.tar.gz``) or over a frozen graph's ``Const`` nodes (split out of :mod:`spinenet.convert.tpu`, which
re-exports these names).

Leaves and layer names cover both families: SpineNet (``conv2d``/``batch_normalization``) and SpineNet-MBConv
(also ``depthwise_conv2d`` with ``depthwise_kernel``, and the separable head's ``depthwise_kernel`` /
``pointwise_kernel``).
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Protocol

import numpy as np

from spinenet.convert.graphdef import FrozenGraph
from spinenet.convert.model_garden import BN_FIELDS, ConversionError
from spinenet.convert.tf_checkpoint import TFCheckpointReader

WEIGHT_LEAVES = ("kernel", "bias", "depthwise_kernel", "pointwise_kernel", *BN_FIELDS)
# Graphs frozen through read ops name the Const after the read instead of the variable.
READ_SUFFIXES = ("/read", "/Read/ReadVariableOp", "/ReadVariableOp")


def _ignored(name: str) -> bool:
    """Training state that is not part of the model: the step counter and the optimizer's slots."""
    return name == "global_step" or name.endswith("/Momentum")


# ---------------------------------------------------------------------------------------------------------
# Sources: a name -> array view over a checkpoint or a frozen graph.
# ---------------------------------------------------------------------------------------------------------


class TPUWeights(Protocol):
    source: str  # file shown in messages
    kind: str  # "checkpoint" | "frozen graph"

    def names(self) -> list[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def get(self, name: str) -> np.ndarray: ...


class CheckpointWeights:
    """The tensors of a TF1 ``Saver`` checkpoint (training state included; the mapping skips it)."""

    kind = "checkpoint"

    def __init__(self, reader: TFCheckpointReader, source: str | None = None) -> None:
        self.reader = reader
        self.source = source or str(reader.prefix)

    def names(self) -> list[str]:
        return [n for n, _, dtype in self.reader.list_variables() if dtype != "string"]

    def shape(self, name: str) -> tuple[int, ...]:
        return self.reader.shape(name)

    def get(self, name: str) -> np.ndarray:
        return self.reader.get_tensor(name)


class FrozenGraphWeights:
    """The variable values folded into a frozen graph's ``Const`` nodes, by variable name."""

    kind = "frozen graph"

    def __init__(self, graph: FrozenGraph) -> None:
        self.graph = graph
        self.source = str(graph.path)
        self._node_of: dict[str, str] = {}  # variable name -> Const node name
        for node in graph.consts:
            var = node
            if not _is_weight_name(var):
                for suffix in READ_SUFFIXES:
                    if node.endswith(suffix) and _is_weight_name(node[: -len(suffix)]):
                        var = node[: -len(suffix)]
                        break
                else:
                    continue
            if var in self._node_of and self._node_of[var] == var:
                continue  # the variable's own Const wins over a read-op copy
            self._node_of[var] = node

    def names(self) -> list[str]:
        return sorted(self._node_of)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.graph.const_shape(self._node(name))

    def get(self, name: str) -> np.ndarray:
        return self.graph.const_value(self._node(name))

    def node_name(self, name: str) -> str:
        return self._node(name)

    def _node(self, name: str) -> str:
        try:
            return self._node_of[name]
        except KeyError:
            raise KeyError(f"{self.source} has no Const for variable {name!r}") from None


# A tf.layers conv/BN of the backbone (auto-named) or of the head (named by the code).
_LAYER_NAME = re.compile(r"(conv2d|depthwise_conv2d|batch_normalization)(_\d+)?|(class|box)-(\d+|\d+-\d+|predict)")


def _is_weight_name(name: str) -> bool:
    """A variable's name (``<layer>/<kernel|bias|gamma|…>``), not e.g. swish's ``beta`` scalar of a frozen graph."""
    parts = name.rsplit("/", 2)
    return len(parts) == 3 and parts[2] in WEIGHT_LEAVES and bool(_LAYER_NAME.fullmatch(parts[1]))


@contextmanager
def open_tpu_checkpoint(path: str | os.PathLike) -> Iterator[CheckpointWeights]:
    """A TF1 checkpoint given as a prefix, ``.index``, folder (searched recursively) or ``.tar.gz``/``.tgz``."""
    p = Path(path)
    if p.is_file() and _is_tarball(p):
        with tempfile.TemporaryDirectory(prefix="spinenet-tpu-") as tmp:
            _safe_extract(p, Path(tmp))
            prefix = _find_checkpoint(Path(tmp), shown=p)
            yield CheckpointWeights(TFCheckpointReader(prefix), f"{p}:{prefix.relative_to(tmp)}")
        return
    if p.is_file() and p.suffix == ".pb":
        raise ConversionError(f"{p} is a GraphDef (.pb), not a checkpoint: convert it with --from tpu-frozen-graph")
    if p.is_dir():
        p = _find_checkpoint(p, shown=p)
    try:
        reader = TFCheckpointReader(p)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}. A TF1 checkpoint is PREFIX.index + PREFIX.data-*, e.g. model.ckpt-231500; "
                                "a published .tar.gz or a folder holding one also works") from None
    yield CheckpointWeights(reader)


def open_tpu_frozen_graph(path: str | os.PathLike) -> FrozenGraphWeights:
    p = Path(path)
    if p.is_dir():
        pbs = sorted(p.glob("*.pb"))
        if len(pbs) != 1:
            raise FileNotFoundError(f"{p} is a folder holding {len(pbs)} .pb files; pass the frozen graph file")
        p = pbs[0]
    if (p.suffix == ".index" or ".data-" in p.name or (p.is_file() and _is_tarball(p))
            or (not p.exists() and Path(f"{p}.index").is_file())):
        raise ConversionError(f"{p} looks like a TF checkpoint, not a frozen graph: convert it with --from tpu")
    return FrozenGraphWeights(FrozenGraph(p))


def _is_tarball(p: Path) -> bool:
    if p.name.endswith((".tar.gz", ".tgz", ".tar")):
        return True
    return p.suffix not in (".index", ".pb") and ".data-" not in p.name and tarfile.is_tarfile(p)


def _safe_extract(tarball: Path, dest: Path) -> None:
    """Extract regular files and folders only; reject absolute paths, ``..``, links and devices."""
    try:
        with tarfile.open(tarball) as tar:
            for m in tar:
                rel = PurePosixPath(m.name)
                if rel.is_absolute() or ".." in rel.parts or m.name.startswith(("/", "\\")):
                    raise ConversionError(f"{tarball}: refusing to extract {m.name!r} (path outside the archive)")
                target = dest.joinpath(*rel.parts)
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif m.isfile():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = tar.extractfile(m)
                    assert src is not None
                    with src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                else:
                    raise ConversionError(f"{tarball}: refusing to extract {m.name!r} (a link or special file); "
                                          "a checkpoint archive holds regular files only")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ConversionError(f"{tarball} is not a readable .tar.gz ({type(e).__name__}: {e}); truncated "
                              "download? Fetch it again or extract it yourself and pass the folder") from None


def _find_checkpoint(folder: Path, shown: Path) -> Path:
    """The checkpoint prefix in ``folder`` or below: a ``checkpoint`` state file decides, else a single index."""
    indexes = sorted(folder.rglob("*.index"))
    if not indexes:
        pbs, archives = sorted(folder.rglob("*.pb")), sorted(folder.glob("*.tar.gz")) + sorted(folder.glob("*.tgz"))
        hint = ""
        if archives:
            hint = f"; it holds {archives[0].name}: pass the archive itself"
        elif pbs:
            hint = f"; it holds {pbs[0].name}: use --from tpu-frozen-graph for a frozen graph"
        raise FileNotFoundError(f"{shown} holds no TensorFlow checkpoint (no *.index file){hint}")
    dirs = sorted({i.parent for i in indexes})
    if len(dirs) == 1 and ((dirs[0] / "checkpoint").is_file() or len(indexes) == 1):
        from spinenet.convert.tf_checkpoint import _resolve_prefix

        return _resolve_prefix(dirs[0])
    names = ", ".join(str(i.relative_to(folder).with_suffix("")) for i in indexes[:6])
    raise ConversionError(f"{shown} holds {len(indexes)} checkpoints ({names}); pass the prefix of the one to "
                          "convert (extract the archive first)")
