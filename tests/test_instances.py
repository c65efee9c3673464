"""Reading the fields of detectron2 Instances: predictions and ground truth alike."""

import numpy as np
import pytest
import torch
from detectron2.structures import BitMasks, Boxes, Instances

from dental_d2.instances import field_prefix, instance_arrays


def _boxes_and_masks():
    boxes = Boxes(torch.tensor([[0.0, 0.0, 4.0, 4.0], [2.0, 2.0, 6.0, 8.0]]))
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, :4, :4] = True
    masks[1, 2:8, 2:6] = True
    return boxes, masks


def test_predictions_and_ground_truth_read_alike():
    boxes, masks = _boxes_and_masks()
    classes = torch.tensor([1, 0])
    predictions = Instances(
        (8, 8), pred_boxes=boxes, pred_classes=classes, scores=torch.tensor([0.9, 0.3]),
        pred_masks=masks,
    )  # fmt: skip
    ground_truth = Instances((8, 8), gt_boxes=boxes, gt_classes=classes, gt_masks=BitMasks(masks))
    assert field_prefix(predictions) == "pred" and field_prefix(ground_truth) == "gt"
    for arrays in (instance_arrays(predictions), instance_arrays(ground_truth)):
        assert arrays.classes.tolist() == [1, 0] and arrays.classes.dtype == np.int64
        np.testing.assert_array_equal(arrays.boxes, boxes.tensor.numpy())
        assert arrays.masks.dtype == bool and arrays.masks.shape == (2, 8, 8)
        assert arrays.masks.sum(axis=(1, 2)).tolist() == [16, 24]
    assert instance_arrays(predictions).scores.tolist() == pytest.approx([0.9, 0.3])
    assert instance_arrays(ground_truth).scores is None


def test_empty_and_box_only_instances():
    empty = instance_arrays(Instances((5, 7)))
    assert empty.classes.shape == (0,) and empty.boxes is None
    assert empty.masks is None and empty.scores is None
    boxes_only = Instances(
        (5, 7), pred_boxes=Boxes(torch.zeros(1, 4)), pred_classes=torch.tensor([2]),
        scores=torch.tensor([0.5]),
    )  # fmt: skip
    arrays = instance_arrays(boxes_only)
    assert arrays.masks is None and arrays.boxes.shape == (1, 4) and arrays.classes.tolist() == [2]
