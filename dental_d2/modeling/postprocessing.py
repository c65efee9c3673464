"""Predictions at the photo's size, every detection with an outline.

detectron2's `detector_postprocess` pastes each detection's 28x28 mask probabilities into its
box and keeps the pixels at probability >= 0.5. For a lesion a few pixels wide the mask head
sees its box through one or two cells of the stride-4 feature map and often answers about 0.4
everywhere in it, so the detection keeps its box and score but gets no pixel: an overlay that
points at nothing, a COCO result of area 0, a finding on no tooth. Such a mask is pasted again
at half its own peak probability (the blob's full width at half maximum), which always keeps
the most likely pixels, and the instance is marked in `mask_from_peak`, so that evaluation,
exported predictions and the service can say how many outlines came from that rule.
"""

import torch
from detectron2.layers import paste_masks_in_image
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Instances

# The field that marks detections whose outline came from half their peak probability.
MASK_FROM_PEAK = "mask_from_peak"
# Share of a mask's peak probability that its fallback outline keeps.
PEAK_SHARE = 0.5
_INDEX = "_postprocess_index"


def dental_postprocess(
    results: Instances, output_height: int, output_width: int, mask_threshold: float = 0.5
) -> Instances:
    """`detector_postprocess`, then an outline for every detection whose mask came out empty.

    Args:
        results (Instances): one image's raw predictions at the network's input size, with
            `pred_masks` (Nx1xMxM probabilities) when the model has masks.
        output_height (int): the photo's height.
        output_width (int): the photo's width.
        mask_threshold (float): the paste threshold.

    Returns:
        Instances: as detectron2's, plus `mask_from_peak` (N bools) when there are masks.
    """
    if not results.has("pred_masks") or len(results) == 0:
        output = detector_postprocess(results, output_height, output_width, mask_threshold)
        if output.has("pred_masks"):
            output.set(MASK_FROM_PEAK, torch.zeros(len(output), dtype=torch.bool))
        return output
    soft = results.pred_masks[:, 0]
    results.set(_INDEX, torch.arange(len(results), device=soft.device))
    output = detector_postprocess(results, output_height, output_width, mask_threshold)
    index = output.get(_INDEX)
    output.remove(_INDEX)
    empty = ~output.pred_masks.flatten(1).any(dim=1)
    if empty.any():
        rows = torch.nonzero(empty).flatten()
        peaks = soft[index[rows]]
        refilled = paste_masks_in_image(
            peaks / peaks.flatten(1).amax(dim=1).clamp(min=1e-12)[:, None, None],
            output.pred_boxes[rows],
            (output_height, output_width),
            threshold=PEAK_SHARE,
        )
        # A box that holds no pixel centre at all keeps the pixel under its centre.
        still_empty = ~refilled.flatten(1).any(dim=1)
        refilled[still_empty] = _box_centre_pixels(output, rows[still_empty])
        output.pred_masks[rows] = refilled
    output.set(MASK_FROM_PEAK, empty)
    return output


def _box_centre_pixels(output: Instances, rows: torch.Tensor) -> torch.Tensor:
    """One pixel at each box's centre: the outline of a box too small to hold a pixel centre."""
    height, width = output.image_size
    centres = output.pred_boxes[rows].get_centers().long()
    pixels = torch.zeros((len(rows), height, width), dtype=torch.bool, device=centres.device)
    x = centres[:, 0].clamp(0, width - 1)
    y = centres[:, 1].clamp(0, height - 1)
    pixels[torch.arange(len(rows)), y, x] = True
    return pixels
