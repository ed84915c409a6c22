"""SpineNet-Mobile variants as the references publish them: data shared by the recording tools (no TensorFlow).

Model Garden: the model sections of tensorflow/models ``official/vision/configs/experiments/retinanet/
coco_spinenet49{,s,xs}_mobile_tpu.yaml`` (commits b4d128f1, c04133d9, 0225b135), transcribed. All three also
set anchor_size 3, aspect_ratios [0.5, 1.0, 2.0], num_scales 3, se_ratio 0.2, stochastic_depth_drop_rate 0.2,
head num_convs 4 with use_separable_conv, norm_epsilon 0.001, norm_momentum 0.99, levels 3..7.

TF1 (tensorflow/tpu ``models/official/detection``) ships one SpineNet-MBConv YAML,
``configs/spinenet/spinenet-mbconv49_retinanet.yaml`` (swish, head 48 separable, 384). Its
``spinenet_mbconv.SCALING_MAP`` has 49S and 49XS as well; :func:`tf1_override` builds them from that YAML with
Model Garden's head width and input size (TF1's mbconv backbone has no hard_swish: swish throughout).
"""

from __future__ import annotations

MOBILE_YAMLS = {
    "49": {"head_num_filters": 48, "input_size": 384, "activation": "hard_swish"},
    "49S": {"head_num_filters": 40, "input_size": 384, "activation": "hard_swish"},
    "49XS": {"head_num_filters": 24, "input_size": 256, "activation": "swish"},
    # Width-reduced CI fixture (not published; hard_swish exercises the hard_sigmoid gates too).
    "tiny": {"head_num_filters": 8, "input_size": 128, "activation": "hard_swish"},
}
# Injected as SCALING_MAP["tiny"] (Model Garden) / --filter_size_scale etc. (TF1) for the CI fixtures.
TINY_SCALING = {"endpoints_num_filters": 8, "filter_size_scale": 0.25, "block_repeats": 1}


def tf1_override(model_id: str) -> dict:
    """``--params_override`` turning TF1's mbconv49 YAML into ``model_id`` at Model Garden's head width and size."""
    y = MOBILE_YAMLS[model_id]
    return {"spinenet_mbconv": {"model_id": model_id}, "retinanet_head": {"num_filters": y["head_num_filters"]},
            "retinanet_parser": {"output_size": [y["input_size"], y["input_size"]]}}
