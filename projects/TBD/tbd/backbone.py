"""
ResNet-18/34 of any width for RetinaNet, for students (and teachers) sized for a CPU.

detectron2's ``build_resnet_backbone`` fixes the width of its BasicBlock ResNets (R18, R34):
``RESNETS.RES2_OUT_CHANNELS`` must be 64. :func:`build_retinanet_basic_resnet_fpn_backbone` is
``build_retinanet_resnet_fpn_backbone`` without that restriction: the same detectron2 stem,
BasicBlocks, FPN and P6/P7 block, with stage widths

    res2, res3, res4, res5 = w, 2w, 4w, 8w,   w = RESNETS.RES2_OUT_CHANNELS

and the stem's width ``RESNETS.STEM_OUT_CHANNELS``. With w = 64 and a 64-channel stem it builds
exactly detectron2's R18/R34 (same modules, parameter names and shapes), so checkpoints move
between the two builders. Depths other than 18 and 34 (bottleneck ResNets, which already take any
width) are built by detectron2's own ``build_resnet_backbone``.
"""

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN
from detectron2.modeling.backbone.fpn import LastLevelP6P7
from detectron2.modeling.backbone.resnet import (
    BasicBlock,
    BasicStem,
    ResNet,
    build_resnet_backbone,
)

__all__ = ["build_basic_resnet_backbone", "build_retinanet_basic_resnet_fpn_backbone"]

_BASIC_BLOCKS_PER_STAGE = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}


def build_basic_resnet_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """
    The ResNet of ``cfg.MODEL.RESNETS``, with BasicBlock stages of width
    ``RES2_OUT_CHANNELS`` x (1, 2, 4, 8) for depth 18 or 34; detectron2's
    ``build_resnet_backbone`` for any other depth.
    """
    r = cfg.MODEL.RESNETS
    if r.DEPTH not in _BASIC_BLOCKS_PER_STAGE:
        return build_resnet_backbone(cfg, input_shape)
    if r.NUM_GROUPS != 1 or r.RES5_DILATION != 1 or any(r.DEFORM_ON_PER_STAGE):
        raise ValueError(
            f"R{r.DEPTH} has BasicBlocks: MODEL.RESNETS.NUM_GROUPS must be 1, RES5_DILATION 1 "
            "and DEFORM_ON_PER_STAGE all False"
        )
    stem = BasicStem(input_shape.channels, r.STEM_OUT_CHANNELS, norm=r.NORM)
    in_channels, out_channels, stages = r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS, []
    for index, num_blocks in enumerate(_BASIC_BLOCKS_PER_STAGE[r.DEPTH]):
        stages.append(
            ResNet.make_stage(
                block_class=BasicBlock,
                num_blocks=num_blocks,
                stride_per_block=[1 if index == 0 else 2] + [1] * (num_blocks - 1),
                in_channels=in_channels,
                out_channels=out_channels,
                norm=r.NORM,
            )
        )
        in_channels, out_channels = out_channels, 2 * out_channels
    return ResNet(stem, stages, out_features=r.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_retinanet_basic_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """
    ``MODEL.BACKBONE.NAME: "build_retinanet_basic_resnet_fpn_backbone"``: detectron2's RetinaNet
    FPN (P3-P5 from ``FPN.IN_FEATURES``, P6 and P7 from res5) on
    :func:`build_basic_resnet_backbone`.
    """
    bottom_up = build_basic_resnet_backbone(cfg, input_shape)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(bottom_up.output_shape()["res5"].channels, out_channels),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
