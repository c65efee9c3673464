"""DentalRCNN: detectron2's Mask R-CNN whose answer for a photo is the same in any batch."""

from collections import defaultdict

from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN


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
    GeneralizedRCNN's: its loss is a batch statistic anyway.
    """

    def inference(self, batched_inputs, detected_instances=None, do_postprocess=True):
        groups = self._same_padding_groups(batched_inputs)
        if len(groups) == 1:
            return super().inference(batched_inputs, detected_instances, do_postprocess)
        results = [None] * len(batched_inputs)
        for indices in groups:
            given = None if detected_instances is None else [detected_instances[i] for i in indices]
            outputs = super().inference([batched_inputs[i] for i in indices], given, do_postprocess)
            for index, output in zip(indices, outputs):
                results[index] = output
        return results

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
