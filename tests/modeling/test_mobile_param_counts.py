"""SpineNet-Mobile parameter counts against what Model Garden's and TF1's own code build (recorded data).

Source: ``tools/mobile_param_counts.py`` run in the TensorFlow venv on 2026-12-05 (tf-models-official 2.20,
experiment ``retinanet_mobile_coco`` with each YAML's model settings; TF1 ``tensorflow/tpu``
``spinenet-mbconv49_retinanet.yaml`` with model_id and head width per variant), 91 classes; the output is in
``benchmarks/RESULTS.md``. ``regularized_kernels``: Model Garden's ``len(model.losses)`` with an L2 regularizer,
TF1's trainable variables matching ``regularization_variable_regex``.
"""

import pytest
import torch

from spinenet import create_model

# name: (trainable backbone, trainable head) -- the same in both references.
REFERENCE_COUNTS = {
    "retinanet_spinenet49_mobile": (2_268_708, 68_871),
    "retinanet_spinenet49s_mobile": (975_678, 54_975),
    "retinanet_spinenet49xs_mobile": (842_456, 30_255),
}
REGULARIZED_KERNELS = {"model_garden": 114, "tpu": 175}


def count(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", list(REFERENCE_COUNTS))
def test_counts_equal_the_references(name):
    with torch.device("meta"):
        model = create_model(name)
    assert (count(model.backbone), count(model.head)) == REFERENCE_COUNTS[name]


@pytest.mark.parametrize("convention", list(REGULARIZED_KERNELS))
def test_l2_covers_the_kernels_each_reference_regularizes(convention):
    with torch.device("meta"):
        model = create_model("retinanet_spinenet49xs_mobile", convention=convention)
    kernels = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and not getattr(m, "l2_exempt", False)]
    assert len(kernels) == REGULARIZED_KERNELS[convention]
