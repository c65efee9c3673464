"""The models a benchmark compares, built so that each does the same work per image.

Random weights (nothing is downloaded) would let each model keep a different number of boxes,
so the work is equalised, for a comparison of runtimes and not of weights: both box regressors'
final layers are zeroed (proposals are anchors, detections are proposals), every score
threshold is 0, and each model keeps 1000 proposals and 100 detections per image.
"""

import os

import numpy as np
import torch
from torch import nn

from dental_d2.checkpoint import CLASS_NAMES_KEY
from dental_d2.config import build_config

PROPOSALS = 1000
DETECTIONS = 100
# Overrides that make a dental config do the equalised work.
EQUAL_WORK_OPTS = [
    "MODEL.WEIGHTS", "",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", str(PROPOSALS),
    "MODEL.RPN.POST_NMS_TOPK_TEST", str(PROPOSALS),
    "TEST.DETECTIONS_PER_IMAGE", str(DETECTIONS),
]  # fmt: skip


def zero_layers(*layers: nn.Module) -> None:
    """Zeroes the weights and biases of `layers` in place."""
    with torch.no_grad():
        for layer in layers:
            layer.weight.zero_()
            if layer.bias is not None:
                layer.bias.zero_()


def zero_box_regressors(model: nn.Module) -> None:
    """Zeroes the last layers of a detectron2 R-CNN's RPN and box regressors."""
    zero_layers(
        model.proposal_generator.rpn_head.anchor_deltas, model.roi_heads.box_predictor.bbox_pred
    )


def equal_work_config(config_file: str, opts) -> "CfgNode":  # noqa: F821
    """The dental config with the user's overrides, then the equal-work ones."""
    return build_config(config_file, [*opts, *EQUAL_WORK_OPTS])


def class_names(cfg) -> list[str]:
    """The config's class names, or placeholders when it names none."""
    names = list(cfg.DENTAL.CLASS_NAMES)
    return names or [f"class{i}" for i in range(cfg.MODEL.ROI_HEADS.NUM_CLASSES)]


def write_equal_work_checkpoint(cfg, path: str, seed: int = 0) -> str:
    """Builds the config's model with seeded random weights, zeroes its box regressors and
    saves it as the trainer would (with class names), so `Predictor` and the exporter load it.

    Args:
        cfg (CfgNode): from `equal_work_config`.
        path (str): the `.pth` to write.
        seed (int): for the random weights.
    """
    from detectron2.modeling import build_model

    from dental_d2.file_io import atomic_write

    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(seed)
    model = build_model(cfg)
    zero_box_regressors(model)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    state = {"model": model.state_dict(), CLASS_NAMES_KEY: {"thing_classes": class_names(cfg)}}
    with atomic_write(path, "wb") as f:
        torch.save(state, f)
    return path


def torchvision_maskrcnn(cfg, variant: str, for_training: bool = False) -> nn.Module:
    """torchvision's `maskrcnn_resnet50_fpn` ("v1") or `_v2`, random weights, equal work.

    Args:
        cfg (CfgNode): sizes, classes and RPN/ROI sampling come from the dental config.
        variant (str): "v1" or "v2".
        for_training (bool): v1 then gets a frozen-BN backbone with the stem and res2 frozen,
            as detectron2's R50 (`FREEZE_AT 2`); torchvision unfreezes everything when no
            weights are given.
    """
    from torchvision.models import detection, resnet50
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d

    size = cfg.INPUT.MIN_SIZE_TRAIN[0] if for_training else cfg.INPUT.MIN_SIZE_TEST
    max_size = cfg.INPUT.MAX_SIZE_TRAIN if for_training else cfg.INPUT.MAX_SIZE_TEST
    kwargs = {
        "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES + 1,
        "min_size": size,
        "max_size": max_size,
        "box_score_thresh": 0.0,
        "box_detections_per_img": DETECTIONS,
        "rpn_pre_nms_top_n_test": PROPOSALS,
        "rpn_post_nms_top_n_test": PROPOSALS,
        "rpn_pre_nms_top_n_train": cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN,
        "rpn_post_nms_top_n_train": cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN,
        "box_batch_size_per_image": cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE,
    }
    if variant == "v2":
        model = detection.maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, **kwargs)
    elif for_training:
        backbone = _resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3)
        model = detection.MaskRCNN(backbone, **kwargs)
    else:
        model = detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, **kwargs)
    zero_layers(model.rpn.head.bbox_pred, model.roi_heads.box_predictor.bbox_pred)
    return model


def torchvision_inputs(images_bgr: list[np.ndarray], device: str) -> list[torch.Tensor]:
    """BGR uint8 arrays to the RGB 0-1 CHW tensors torchvision's detection models take."""
    return [
        torch.from_numpy(np.ascontiguousarray(image[:, :, ::-1].transpose(2, 0, 1)))
        .to(device)
        .float()
        .div_(255.0)
        for image in images_bgr
    ]


class OutputCounter:
    """Counts what a module returned on its last call: proposals of an RPN, for the table.

    Args:
        module (nn.Module): detectron2's `proposal_generator` or torchvision's `rpn`; both
            return (list of per-image proposals, losses).
    """

    def __init__(self, module: nn.Module):
        self.count = None
        module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.count = len(output[0][0])
