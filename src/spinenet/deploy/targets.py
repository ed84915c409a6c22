"""Export targets as one table of profiles: what each runtime gets, in one place.

======================  ===============  =========================================  ======  =========================
target                  convolutions     post-processing (``--postprocess v1``)     opset   operators checked against
======================  ===============  =========================================  ======  =========================
onnxruntime (default)   winograd         exact greedy NMS, one ONNX ``Loop``        11-13   no NonZero/Unique (static)
ascend (``--cann N``)   direct           greedy NMS unrolled over a fixed number    11-13   ATC's list for CANN N
                                         of rounds, no ``Loop``; float32 sort keys          (``atc_onnx_ops/``)
======================  ===============  =========================================  ======  =========================

``onnxruntime`` is also the OpenVINO profile (OpenVINO reads the same graph). Raw maps are not a target but
``--postprocess none`` on any of them: the ten head maps, no post-processing, the profile's convolutions and
operator check (for Ascend: the host post-processing route). The exporter writes opset 11-13 for every target;
ATC itself takes v9-v13 up to CANN 6 and v9-v18 from CANN 7 (see the list files' headers).
"""

from __future__ import annotations

import dataclasses

from spinenet.deploy.atc_ops import CANN_LISTS, DEFAULT_CANN, AtcOperatorList, atc_operator_list
from spinenet.deploy.nms_unrolled import DEFAULT_NMS_ROUNDS

EXPORTER_OPSETS = (11, 13)  # 11: TopK's lower-index tie rule, Clip with tensor bounds; 13: what ATC 5/6 takes


@dataclasses.dataclass(frozen=True)
class ExportProfile:
    """How one target's graph is built and checked.

    ``nms_rounds``: None = greedy NMS to its end as an ONNX ``Loop``; N = N rounds unrolled
    (:mod:`spinenet.deploy.nms_unrolled`). ``operators``: the ATC list every node must be on (None: only
    :data:`~spinenet.deploy.onnx_graph.FORBIDDEN_OPS` is refused). ``opsets``: the opsets this target may be
    exported at, the exporter's range cut to the runtime's.
    """

    target: str
    conv_algorithm: str
    nms_rounds: int | None
    float_sort_keys: bool
    opsets: tuple[int, int]
    operators: AtcOperatorList | None = None

    @property
    def describe(self) -> str:
        nms = "greedy NMS (Loop)" if self.nms_rounds is None else f"greedy NMS unrolled ({self.nms_rounds} rounds)"
        ops = "" if self.operators is None else f", operators of {self.operators.file}"
        return f"target {self.target}: {nms}{ops}"


TARGETS = ("onnxruntime", "ascend")


def export_profile(target: str = "onnxruntime", cann: str | None = None) -> ExportProfile:
    """The profile of ``target``; ``cann`` ("5".."8", default "5") for ``ascend`` only."""
    if target == "onnxruntime":
        if cann is not None:
            raise ValueError("--cann applies to --target ascend only")
        return ExportProfile("onnxruntime", "winograd", None, False, EXPORTER_OPSETS)
    if target == "ascend":
        cann = str(cann or DEFAULT_CANN)
        if cann not in CANN_LISTS:
            raise ValueError(f"--cann {cann} is unknown; valid: {', '.join(CANN_LISTS)}")
        ops = atc_operator_list(cann)
        opsets = (max(EXPORTER_OPSETS[0], ops.opset[0]), min(EXPORTER_OPSETS[1], ops.opset[1]))
        return ExportProfile(f"ascend (CANN {cann})", "direct", DEFAULT_NMS_ROUNDS, True, opsets, ops)
    raise ValueError(f"--target {target!r} is unknown; valid: {', '.join(TARGETS)}")
