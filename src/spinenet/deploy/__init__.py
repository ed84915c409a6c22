"""Deployment: ONNX export with the seed's frozen-graph signature (:mod:`.export`), its static-shape
post-processing (:mod:`.postprocess_export`, :mod:`.nms_unrolled`), one profile per target runtime
(:mod:`.targets`), ATC's ONNX operator lists (:mod:`.atc_ops`), the inference rewrites (:mod:`.optimize`,
:mod:`.winograd`, :mod:`.winograd_head`), graph passes and checks (:mod:`.onnx_graph`), runtimes (:mod:`.runtimes`)
and the ``spinenet export`` command (:mod:`.cli`)."""
