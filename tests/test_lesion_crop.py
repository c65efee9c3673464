"""Training crops placed around a lesion (INPUT.CROP.LESION_PROBABILITY)."""

import numpy as np
import pytest
from detectron2.data import transforms as T
from detectron2.structures import BoxMode

from dental_d2.config import build_config
from dental_d2.data import DentalDatasetMapper
from dental_d2.data.lesion_crop import RandomCropAroundLesion, lesion_boxes, lesion_class_ids

CLASSES = ["Caries", "Cavity", "Crack", "Tooth"]


def _crop_boxes(augmentation, boxes, draws=200, size=(800, 1000)):
    """The crop windows (x0, y0, x1, y1) of `draws` transforms of a HxW image."""
    image = np.zeros((*size, 3), dtype=np.uint8)
    windows = []
    for _ in range(draws):
        t = augmentation.get_transform(image, boxes)
        if isinstance(t, T.CropTransform):
            windows.append((t.x0, t.y0, t.x0 + t.w, t.y0 + t.h))
    return windows


def test_every_crop_holds_the_lesion_at_probability_one():
    np.random.seed(0)
    box = np.array([[900, 700, 910, 712]], dtype=np.float32)
    windows = _crop_boxes(RandomCropAroundLesion("absolute", (512, 512), 1.0), box)
    assert len(windows) == 200
    assert all(x0 <= 900 and y0 <= 700 and x1 >= 910 and y1 >= 712 for x0, y0, x1, y1 in windows)
    assert all(x1 <= 1000 and y1 <= 800 and x1 - x0 == 512 for x0, y0, x1, y1 in windows)
    # Not always the same window: the lesion lands anywhere in the crop.
    assert len(set(windows)) > 20


@pytest.mark.parametrize("prob, least, most", [(0.0, 0, 30), (0.5, 80, 130)])
def test_the_probability_decides_how_often(prob, least, most):
    # A uniform 512 crop of a 1000x800 photo holds a lesion in its bottom right corner one time
    # in 18 (x0 >= 398 of 0..488 and y0 >= 200 of 0..288).
    np.random.seed(1)
    box = np.array([[900, 700, 910, 712]], dtype=np.float32)
    windows = _crop_boxes(RandomCropAroundLesion("absolute", (512, 512), prob), box)
    holding = sum(x1 >= 910 and y1 >= 712 for _, _, x1, y1 in windows)
    assert least <= holding <= most


def test_a_lesion_larger_than_the_crop_gets_a_crop_inside_it():
    np.random.seed(2)
    box = np.array([[100, 50, 900, 750]], dtype=np.float32)
    windows = _crop_boxes(RandomCropAroundLesion("absolute", (512, 512), 1.0), box, draws=50)
    assert all(x0 >= 100 and x1 <= 900 and y0 >= 50 and y1 <= 750 for x0, y0, x1, y1 in windows)


def test_lesion_boxes_are_the_annotations_of_lesion_classes():
    annotations = [
        {"bbox": [10, 20, 5, 6], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0},
        {"bbox": [0, 0, 50, 60], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 3},
        {"bbox": [1, 2, 3, 4], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 2},
    ]
    ids = lesion_class_ids(CLASSES, ["tooth"])
    assert ids == [0, 1, 2]
    assert lesion_boxes(annotations, ids).tolist() == [[10, 20, 15, 26], [1, 2, 3, 4]]


def test_the_mapper_crops_around_a_lesion(tmp_path):
    import cv2

    image = np.full((800, 1000, 3), 128, dtype=np.uint8)
    path = tmp_path / "photo.jpg"
    cv2.imwrite(str(path), image)
    square = [[900, 700, 910, 700, 910, 712, 900, 712]]
    record = {
        "file_name": str(path), "height": 800, "width": 1000, "image_id": 1,
        "annotations": [
            {"bbox": [900, 700, 10, 12], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0,
             "segmentation": square, "iscrowd": 0},
        ],
    }  # fmt: skip
    cfg = build_config(
        "configs/dental_lite0.yaml",
        [
            "INPUT.MIN_SIZE_TRAIN", "(800,)", "INPUT.MAX_SIZE_TRAIN", "1000",
            "INPUT.CROP.LESION_PROBABILITY", "1.0", "DENTAL.CLASS_NAMES", str(CLASSES),
        ],
    )  # fmt: skip
    mapper = DentalDatasetMapper(cfg, is_train=True)
    np.random.seed(3)
    for _ in range(10):
        out = mapper(record)
        assert out["image"].shape[1:] == (512, 512)
        assert len(out["instances"]) == 1
