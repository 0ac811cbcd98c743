"""The BasicBlock ResNet-FPN of any width (tbd/backbone.py) against detectron2's own builder."""

import pytest
import torch
from conftest import TEACHER_CONFIG
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.fpn import build_retinanet_resnet_fpn_backbone

from tbd.backbone import build_retinanet_basic_resnet_fpn_backbone
from tbd.config import load_tbd_config

INPUT = ShapeSpec(channels=3)


def _cfg(*opts):
    return load_tbd_config(TEACHER_CONFIG, ["MODEL.FPN.NORM", "", *opts])


@pytest.mark.parametrize("depth", [18, 34])
def test_width_64_is_detectron2s_resnet(depth):
    """At detectron2's width the two builders make the same network: same parameter names and
    shapes, and the same features from the same weights."""
    cfg = _cfg("MODEL.RESNETS.DEPTH", str(depth), "MODEL.RESNETS.STEM_OUT_CHANNELS", "64")
    ours = build_retinanet_basic_resnet_fpn_backbone(cfg, INPUT).eval()
    theirs = build_retinanet_resnet_fpn_backbone(cfg, INPUT).eval()
    ours_shapes = {k: v.shape for k, v in ours.state_dict().items()}
    assert ours_shapes == {k: v.shape for k, v in theirs.state_dict().items()}
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert a.keys() == b.keys() == {"p3", "p4", "p5", "p6", "p7"}
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_narrow_widths_and_strides():
    """Width w gives stages w, 2w, 4w, 8w (detectron2's builder refuses w != 64 for R18), with the
    usual strides, and the FPN at its own width."""
    cfg = _cfg(
        "MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.RESNETS.RES2_OUT_CHANNELS", "16",
        "MODEL.FPN.OUT_CHANNELS", "24",
    )  # fmt: skip
    with pytest.raises(AssertionError, match="RES2_OUT_CHANNELS"):
        build_retinanet_resnet_fpn_backbone(cfg, INPUT)
    backbone = build_retinanet_basic_resnet_fpn_backbone(cfg, INPUT)
    bottom_up = backbone.bottom_up.output_shape()
    assert [bottom_up[f].channels for f in ("res3", "res4", "res5")] == [32, 64, 128]
    assert {k: (v.channels, v.stride) for k, v in backbone.output_shape().items()} == {
        "p3": (24, 8), "p4": (24, 16), "p5": (24, 32), "p6": (24, 64), "p7": (24, 128),
    }  # fmt: skip
    features = backbone(torch.randn(1, 3, 128, 128))
    assert features["p3"].shape == (1, 24, 16, 16) and features["p7"].shape == (1, 24, 1, 1)
    # 4x fewer channels than R18 in every stage: about 16x fewer parameters in the stages
    params = sum(p.numel() for p in backbone.bottom_up.parameters())
    assert params < 11e6 / 12


def test_other_depths_use_detectron2s_builder():
    cfg = _cfg(
        "MODEL.RESNETS.DEPTH", "50", "MODEL.RESNETS.RES2_OUT_CHANNELS", "32",
        "MODEL.RESNETS.WIDTH_PER_GROUP", "8", "MODEL.RESNETS.STEM_OUT_CHANNELS", "16",
    )  # fmt: skip
    ours = build_retinanet_basic_resnet_fpn_backbone(cfg, INPUT)
    theirs = build_retinanet_resnet_fpn_backbone(cfg, INPUT)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }


def test_refuses_bottleneck_only_options():
    cfg = _cfg("MODEL.RESNETS.NUM_GROUPS", "2")
    with pytest.raises(ValueError, match="NUM_GROUPS"):
        build_retinanet_basic_resnet_fpn_backbone(cfg, INPUT)
