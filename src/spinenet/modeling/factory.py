"""The one layer that maps an :class:`~spinenet.config.ExperimentConfig` to constructor arguments.

Classes never see the config object, so each can be built in a test without one (STYLE principle 5).
"""

from __future__ import annotations

from spinenet.config import ExperimentConfig
from spinenet.modeling.head import RetinaNetHead
from spinenet.modeling.postprocess import PostprocessParams
from spinenet.modeling.retinanet import AnchorParams, DetectorParams, RetinaNet
from spinenet.modeling.spinenet import SpineNet
from spinenet.modeling.spinenet_mobile import SpineNetMobile


def _bn_kwargs(cfg: ExperimentConfig) -> dict:
    bn = cfg.batch_norm_activation
    # TF keeps ``moving = m * moving + (1 - m) * batch``; PyTorch's momentum is the weight of the batch.
    return dict(activation=bn.activation, bn_momentum=1.0 - bn.batch_norm_momentum, bn_eps=bn.batch_norm_epsilon)


def build_backbone(cfg: ExperimentConfig) -> SpineNet | SpineNetMobile:
    if cfg.architecture.backbone == "spinenet_mbconv":
        mb = cfg.spinenet_mbconv
        return SpineNetMobile(mb.model_id, min_level=cfg.architecture.min_level,
                              max_level=cfg.architecture.max_level, se_ratio=mb.se_ratio,
                              init_drop_connect_rate=mb.init_drop_connect_rate,
                              convention=cfg.architecture.convention, **_bn_kwargs(cfg))
    if cfg.architecture.backbone != "spinenet":
        raise ValueError(f"architecture.backbone {cfg.architecture.backbone!r} is not supported; "
                         "valid: spinenet, spinenet_mbconv")
    return SpineNet(cfg.spinenet.model_id, min_level=cfg.architecture.min_level,
                    max_level=cfg.architecture.max_level,
                    init_drop_connect_rate=cfg.spinenet.init_drop_connect_rate,
                    convention=cfg.architecture.convention, **_bn_kwargs(cfg))


def num_anchors_per_location(cfg: ExperimentConfig) -> int:
    return cfg.anchor.num_scales * len(cfg.anchor.aspect_ratios)


def build_head(cfg: ExperimentConfig, in_channels: int) -> RetinaNetHead:
    head = cfg.retinanet_head
    if not head.use_batch_norm:
        raise ValueError("retinanet_head.use_batch_norm: false is not supported (every SpineNet config uses BN)")
    built = RetinaNetHead(in_channels, cfg.architecture.num_classes, num_anchors_per_location(cfg),
                          min_level=cfg.architecture.min_level, max_level=cfg.architecture.max_level,
                          num_convs=head.num_convs, num_filters=head.num_filters,
                          use_separable_conv=head.use_separable_conv, **_bn_kwargs(cfg))
    if head.use_separable_conv and cfg.architecture.convention == "model_garden":
        # Model Garden regularizes the separable predictors' kernels but not the towers' (its
        # dense_prediction_heads.py:124-127 gives the tower a kernel_regularizer only when not separable).
        for subnet in (built.class_net, built.box_net):
            for conv in subnet.convs:
                conv.depthwise.l2_exempt = conv.pointwise.l2_exempt = True
    return built


def build_detector_params(cfg: ExperimentConfig) -> DetectorParams:
    a, p = cfg.anchor, cfg.postprocess
    return DetectorParams(
        min_level=cfg.architecture.min_level, max_level=cfg.architecture.max_level,
        convention=cfg.architecture.convention,
        anchor=AnchorParams(a.num_scales, tuple(a.aspect_ratios), a.anchor_size),
        postprocess=PostprocessParams(
            max_total_size=p.max_total_size, nms_iou_threshold=p.nms_iou_threshold,
            score_threshold=p.score_threshold, pre_nms_num_boxes=p.pre_nms_num_boxes,
            nms_version=p.nms_version, apply_sigmoid=p.apply_sigmoid, convention=cfg.architecture.convention))


def build_retinanet(cfg: ExperimentConfig) -> RetinaNet:
    backbone = build_backbone(cfg)
    return RetinaNet(backbone, build_head(cfg, backbone.out_channels), build_detector_params(cfg))
