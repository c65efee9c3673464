"""DentalRCNN: detectron2's Mask R-CNN whose answer for a photo is the same in any batch."""

from collections import defaultdict

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN

from .postprocessing import dental_postprocess


def padded_shape(height: int, width: int, size_divisibility: int, padding_constraints=None):
    """The shape `ImageList.from_tensors` pads one image of this size to.

    Args:
        height (int): the image's height at the network's input.
        width (int): its width.
        size_divisibility (int): the backbone's `size_divisibility`.
        padding_constraints (dict | None): the backbone's `padding_constraints`.
    """
    constraints = padding_constraints or {}
    square = constraints.get("square_size", 0)
    if square > 0:
        height = width = square
    stride = constraints.get("size_divisibility", size_divisibility)
    if stride > 1:
        height, width = -(-height // stride) * stride, -(-width // stride) * stride
    return height, width


@META_ARCH_REGISTRY.register()
class DentalRCNN(GeneralizedRCNN):
    """GeneralizedRCNN that runs inference on each group of images padding to the same shape.

    detectron2 pads every image of a batch with zeros to the batch's largest size. GroupNorm
    then normalises over that padding, and every convolution near the image's right and bottom
    edges sees it, so a photo batched beside a larger one gets other detections than alone.
    Grouping by padded shape gives each image exactly the padding it has alone, while images of
    one size (the common case in a clinic's export) still share a batch. Training is
    GeneralizedRCNN's: its loss is a batch statistic anyway. Every detection leaves with an
    outline (`dental_postprocess`).

    With `channels_last` (MODEL.CHANNELS_LAST) the convolution weights and the padded image
    batch are NHWC in memory, which oneDNN's CPU convolutions run faster; every layer after
    them keeps that layout, and the numbers are the same.
    """

    @configurable
    def __init__(self, *, channels_last: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    @classmethod
    def from_config(cls, cfg):
        return {**super().from_config(cfg), "channels_last": cfg.MODEL.CHANNELS_LAST}

    def preprocess_image(self, batched_inputs):
        images = super().preprocess_image(batched_inputs)
        if self.channels_last:
            images.tensor = images.tensor.contiguous(memory_format=torch.channels_last)
        return images

    def inference(self, batched_inputs, detected_instances=None, do_postprocess=True):
        results = [None] * len(batched_inputs)
        for indices in self._same_padding_groups(batched_inputs):
            given = None if detected_instances is None else [detected_instances[i] for i in indices]
            outputs = super().inference([batched_inputs[i] for i in indices], given, False)
            for index, output in zip(indices, outputs):
                results[index] = output
        if not do_postprocess:
            return results
        # detectron2's GeneralizedRCNN._postprocess, with an outline for every detection.
        return [
            {
                "instances": dental_postprocess(
                    instances,
                    record.get("height", instances.image_size[0]),
                    record.get("width", instances.image_size[1]),
                )
            }
            for instances, record in zip(results, batched_inputs)
        ]

    def _same_padding_groups(self, batched_inputs) -> list[list[int]]:
        """Indices of `batched_inputs`, grouped by the shape each pads to alone, in input order."""
        if len(batched_inputs) == 1:  # also keeps shape arithmetic out of traced graphs
            return [[0]]
        groups = defaultdict(list)
        for index, record in enumerate(batched_inputs):
            height, width = record["image"].shape[-2:]
            shape = padded_shape(
                int(height),
                int(width),
                self.backbone.size_divisibility,
                self.backbone.padding_constraints,
            )
            groups[shape].append(index)
        return list(groups.values())
