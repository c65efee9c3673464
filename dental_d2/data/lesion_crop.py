"""A training crop that holds a lesion more often than chance would.

DentalAI's lesions are small and few (a caries is a median 13 px of a 1024 px photo), so a
uniformly placed 512 px crop often holds none and the step teaches only teeth. detectron2's
`RandomCrop_CategoryAreaConstraint` balances semantic-segmentation classes, not instances, and
none of its augmentations aims at a box; this one places, with a given probability, the crop
so that it contains a randomly chosen lesion box, anywhere in the crop.
"""

import numpy as np
from detectron2.data import transforms as T
from detectron2.structures import BoxMode

from .categories import is_tooth_class


class RandomCropAroundLesion(T.Augmentation):
    """detectron2's `RandomCrop`, that with probability `prob` holds one of the lesion boxes.

    The boxes come from the `AugInput`'s `boxes` (XYXY, in the resized image), which the
    mapper fills with the lesions of the image; without any, or with probability 1 - `prob`,
    the crop is `RandomCrop`'s. A lesion larger than the crop gets a crop inside it.

    Args:
        crop_type (str): as `T.RandomCrop`'s ("absolute", "relative", ...).
        crop_size (tuple[float, float]): as `T.RandomCrop`'s.
        prob (float): the probability of a crop around a lesion.
    """

    def __init__(self, crop_type: str, crop_size, prob: float):
        super().__init__()
        self.crop = T.RandomCrop(crop_type, crop_size)
        self.prob = prob

    def get_transform(self, image, boxes):
        height, width = image.shape[:2]
        if boxes is None or len(boxes) == 0 or self._rand_range() >= self.prob:
            return self.crop.get_transform(image)
        crop_h, crop_w = self.crop.get_crop_size((height, width))
        x0, y0, x1, y1 = boxes[np.random.randint(len(boxes))]
        left = _start(x0, x1, crop_w, width)
        top = _start(y0, y1, crop_h, height)
        return T.CropTransform(left, top, crop_w, crop_h)


def _start(low: float, high: float, crop: int, size: int) -> int:
    """A random start of a `crop`-long window in [0, size) that holds [low, high] if it can."""
    first = int(np.clip(np.ceil(high) - crop, 0, size - crop))
    last = int(np.clip(np.floor(low), 0, size - crop))
    if first > last:  # the lesion is longer than the crop: a window inside it
        first, last = last, first
    return np.random.randint(first, last + 1)


def lesion_class_ids(class_names, tooth_classes) -> list[int]:
    """The contiguous ids of the classes that are not teeth."""
    return [i for i, name in enumerate(class_names) if not is_tooth_class(name, tooth_classes)]


def lesion_boxes(annotations: list[dict], lesion_ids) -> np.ndarray:
    """XYXY boxes of a record's lesion annotations.

    Args:
        annotations (list[dict]): detectron2 annotations with `bbox`, `bbox_mode` and a
            contiguous `category_id`.
        lesion_ids (Collection[int]): the contiguous ids of lesion classes.

    Returns:
        np.ndarray: Nx4 float32.
    """
    boxes = [
        BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
        for a in annotations
        if not a.get("iscrowd", 0) and a["category_id"] in lesion_ids
    ]
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
