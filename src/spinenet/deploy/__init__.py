"""Deployment: ONNX export with the seed's frozen-graph signature (:mod:`.export`), its static-shape
post-processing (:mod:`.postprocess_export`), graph passes and checks (:mod:`.onnx_graph`), runtimes
(:mod:`.runtimes`) and the ``spinenet export`` command (:mod:`.cli`)."""
