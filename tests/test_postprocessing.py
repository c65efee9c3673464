"""Every detection leaves with an outline: masks empty at 0.5 are outlined at half their peak."""

import torch
from detectron2.structures import Boxes, Instances

from dental_d2.coco_format import instances_to_coco_annotations
from dental_d2.modeling.postprocessing import MASK_FROM_PEAK, dental_postprocess


def _raw(boxes, masks) -> Instances:
    """Raw predictions at a 100x100 network input: boxes, scores, classes, Nx1x28x28 masks."""
    instances = Instances((100, 100))
    instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    instances.scores = torch.full((len(boxes),), 0.9)
    instances.pred_classes = torch.zeros(len(boxes), dtype=torch.int64)
    instances.pred_masks = torch.stack(masks)[:, None]
    return instances


def _blob(peak: float) -> torch.Tensor:
    """A 28x28 mask: `peak` in a centre square, a quarter of it around."""
    mask = torch.full((28, 28), peak / 4)
    mask[9:19, 9:19] = peak
    return mask


def test_a_mask_below_the_paste_threshold_is_outlined_at_half_its_peak():
    # A large confident tooth, a small lesion whose mask peaks at 0.4 (empty at 0.5), and a
    # box thinner than a pixel; the photo is twice the network's input.
    raw = _raw(
        [[10, 10, 60, 60], [70, 70, 78, 78], [80.2, 20.2, 80.6, 20.6]],
        [_blob(0.95), _blob(0.4), _blob(0.3)],
    )
    out = dental_postprocess(raw, 200, 200)
    masks = out.pred_masks
    assert masks.shape == (3, 200, 200)
    assert out.get(MASK_FROM_PEAK).tolist() == [False, True, True]
    assert all(mask.any() for mask in masks)
    # The lesion's outline is its centre square (at 0.4 >= 0.2), not the surround (0.1 < 0.2):
    # box 140..156 in the photo, the square about its middle 5/14.
    lesion = torch.nonzero(masks[1])
    assert lesion.min().item() >= 143 and lesion.max().item() <= 153
    assert masks[1].sum() < 16 * 16
    # The sub-pixel box keeps the pixel under its centre.
    assert torch.nonzero(masks[2]).tolist() == [[40, 160]]
    # The confident mask is detectron2's, unchanged.
    reference = dental_postprocess(_raw([[10, 10, 60, 60]], [_blob(0.95)]), 200, 200)
    assert torch.equal(masks[0], reference.pred_masks[0])


def test_the_flag_reaches_the_coco_annotations():
    out = dental_postprocess(
        _raw([[10, 10, 60, 60], [70, 70, 78, 78]], [_blob(0.9), _blob(0.4)]), 100, 100
    )
    annotations = instances_to_coco_annotations(out, image_id=1)
    assert [a.get(MASK_FROM_PEAK, False) for a in annotations] == [False, True]
    assert all(a["area"] > 0 for a in annotations)
