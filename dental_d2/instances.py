"""Reads detectron2 `Instances` of predictions (`pred_*`) and of ground truth (`gt_*`) alike."""

from dataclasses import dataclass

import numpy as np
import torch
from detectron2.structures import BitMasks, Instances


@dataclass
class InstanceArrays:
    """One image's instances as NumPy arrays on the CPU.

    Attributes:
        classes (np.ndarray): (N,) int64 contiguous class ids.
        boxes (np.ndarray | None): (N, 4) float XYXY boxes; None when the instances have none.
        masks (np.ndarray | None): (N, H, W) bool masks; None when the instances have none.
        scores (np.ndarray | None): (N,) confidences; None for ground truth.
    """

    classes: np.ndarray
    boxes: np.ndarray | None
    masks: np.ndarray | None
    scores: np.ndarray | None


def field_prefix(instances: Instances) -> str:
    """ "pred" for predictions, "gt" for ground truth (an empty `Instances` counts as predictions).

    Args:
        instances (Instances): one image's instances.
    """
    return "pred" if instances.has("pred_classes") or not instances.has("gt_classes") else "gt"


def instance_arrays(instances: Instances) -> InstanceArrays:
    """Reads classes, boxes, masks (tensors or `BitMasks`) and scores of predictions or ground
    truth, whichever `instances` holds.

    Args:
        instances (Instances): one image's instances, on any device.
    """
    instances = instances.to("cpu")
    prefix = field_prefix(instances)
    classes_field, boxes_field, masks_field = (
        f"{prefix}_{n}" for n in ("classes", "boxes", "masks")
    )
    classes = (
        instances.get(classes_field).numpy().astype(np.int64)
        if instances.has(classes_field)
        else np.zeros(0, dtype=np.int64)
    )
    boxes = instances.get(boxes_field).tensor.numpy() if instances.has(boxes_field) else None
    masks = None
    if instances.has(masks_field):
        masks = instances.get(masks_field)
        masks = masks.tensor if hasattr(masks, "tensor") else masks  # BitMasks
        masks = np.asarray(masks.numpy() if hasattr(masks, "numpy") else masks)
        masks = masks.astype(bool, copy=False)  # bool predictions are not copied
    scores = instances.scores.numpy() if instances.has("scores") else None
    return InstanceArrays(classes, boxes, masks, scores)


def mask_boxes(masks) -> np.ndarray:
    """The tight XYXY boxes of binary masks, by detectron2's `BitMasks.get_bounding_boxes`.

    Args:
        masks (np.ndarray): (N, H, W) binary masks.

    Returns:
        np.ndarray: (N, 4) float64; all zero for an empty mask.
    """
    masks = np.asarray(masks, dtype=bool)
    if not len(masks):
        return np.zeros((0, 4))
    boxes = BitMasks(torch.from_numpy(masks)).get_bounding_boxes().tensor
    return boxes.numpy().astype(np.float64)
