"""ATC's published lists of supported ONNX operators, read from the data files in ``atc_onnx_ops/``.

Each file is a transcription of Huawei's "支持ONNX算子清单" for one CANN version, with the document, its address
and the opset range ATC's manual gives in the header (``# @opset MIN MAX``). Where a version's list could not be
found, its file says so and names a stand-in (``# @intersection A B``: the operators both lists A and B hold);
:attr:`AtcOperatorList.transcribed` is then False. Operator names are matched case-insensitively, because the
documents spell some differently from ONNX's ``op_type`` ("Argmax", "hardmax", "LogSoftMax", "Cumsum").
"""

from __future__ import annotations

import dataclasses
import functools
from importlib import resources

import onnx

# --cann value -> the file of that CANN version's list
CANN_LISTS = {"5": "cann5.0.4.txt", "6": "cann6.0.1.txt", "7": "cann7.0.0.txt", "8": "cann8.0.0.txt"}
DEFAULT_CANN = "5"


@dataclasses.dataclass(frozen=True)
class AtcOperatorList:
    """One CANN version's ONNX operators (lower-case names) and the opset range ATC takes."""

    file: str
    title: str  # the file's first line
    operators: frozenset[str]
    opset: tuple[int, int]
    transcribed: bool  # False: a stand-in (the version's own list was not found)

    def allows(self, op_type: str, domain: str = "") -> bool:
        return domain in ("", "ai.onnx") and op_type.lower() in self.operators


@functools.cache
def atc_operator_list(cann: str = DEFAULT_CANN) -> AtcOperatorList:
    """The operator list of CANN major version ``cann`` ("5", "6", "7" or "8")."""
    if str(cann) not in CANN_LISTS:
        raise ValueError(f"no ATC operator list for CANN {cann!r}; valid: {', '.join(CANN_LISTS)}")
    return _read_list(CANN_LISTS[str(cann)])


@functools.cache
def _read_list(name: str) -> AtcOperatorList:
    text = resources.files("spinenet.deploy").joinpath("atc_onnx_ops", name).read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    opset, ops, parts = None, set(), None
    for line in lines:
        if line.startswith("# @opset"):
            low, high = line.split()[2:4]
            opset = (int(low), int(high))
        elif line.startswith("# @intersection"):
            parts = line.split()[2:]
        elif not line.startswith("#"):
            ops.add(line.lower())
    if opset is None:
        raise ValueError(f"atc_onnx_ops/{name} has no '# @opset MIN MAX' line")
    if parts:
        if ops:
            raise ValueError(f"atc_onnx_ops/{name} both lists operators and names an @intersection")
        ops = set.intersection(*(set(_read_list(p).operators) for p in parts))
    return AtcOperatorList(name, lines[0].lstrip("# "), frozenset(ops), opset, transcribed=not parts)


def unlisted_nodes(graph: onnx.GraphProto, op_list: AtcOperatorList) -> list[str]:
    """``"name (OpType)"`` of every node of ``graph`` and its subgraphs whose operator ``op_list`` lacks."""
    bad = []
    for node in graph.node:
        if not op_list.allows(node.op_type, node.domain):
            bad.append(f"{node.name or node.output[0]} ({node.op_type})")
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                bad += unlisted_nodes(attr.g, op_list)
    return bad


def check_atc_operators(proto: onnx.ModelProto, op_list: AtcOperatorList) -> None:
    """Raise a one-line ``ValueError`` naming the nodes whose operators ``op_list`` lacks, and refuse an opset
    outside its range."""
    version = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    low, high = op_list.opset
    if version is None or not low <= version <= high:
        raise ValueError(f"opset {version} is outside {low}-{high}, the range ATC takes ({op_list.title})")
    bad = unlisted_nodes(proto.graph, op_list)
    if bad:
        shown = ", ".join(bad[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
        raise ValueError(f"{len(bad)} nodes use operators not on ATC's list (spinenet/deploy/atc_onnx_ops/"
                         f"{op_list.file}): {shown}")
