"""Tests of DentalDatasetMapper: config construction, odd image kinds, size mismatches."""

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetMapper
from PIL import Image

from dental_d2 import DentalError, add_dental_config
from dental_d2.data import DentalDatasetMapper, load_roboflow_json


@pytest.fixture
def cfg():
    cfg = get_cfg()
    add_dental_config(cfg)
    cfg.MODEL.MASK_ON = True
    cfg.INPUT.MIN_SIZE_TRAIN = (48,)
    cfg.INPUT.MAX_SIZE_TRAIN = 64
    cfg.INPUT.MIN_SIZE_TEST = 48
    cfg.INPUT.MAX_SIZE_TEST = 64
    cfg.INPUT.RANDOM_FLIP = "none"
    return cfg


@pytest.fixture
def records(make_export):
    root = make_export()
    folder = root / "train"
    # Replace two images by kinds detectron2's own reader cannot handle.
    xray = np.linspace(0, 4095, 48 * 64).reshape(48, 64).astype(np.uint16)
    Image.fromarray(xray).save(folder / "xray16.png")
    rgba = np.full((48, 64, 4), 200, np.uint8)
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0  # transparent corner
    Image.fromarray(rgba, mode="RGBA").save(folder / "rgba.png")
    dicts = load_roboflow_json(folder / "_annotations.coco.json")
    dicts[0]["file_name"] = str(folder / "xray16.png")
    dicts[1]["file_name"] = str(folder / "rgba.png")
    return dicts


def test_training_mapping_matches_detectron2(cfg, records, make_export):
    mapper = DentalDatasetMapper(cfg, is_train=True)
    assert isinstance(mapper, DatasetMapper)
    reference = DatasetMapper(cfg, is_train=True)
    plain = load_roboflow_json(make_export(name="plain") / "train" / "_annotations.coco.json")[0]
    ours, theirs = mapper(plain), reference(plain)
    assert ours["image"].equal(theirs["image"])
    assert ours["instances"].gt_classes.tolist() == theirs["instances"].gt_classes.tolist()
    assert ours["instances"].gt_masks.polygons[0][0].tolist() == (
        theirs["instances"].gt_masks.polygons[0][0].tolist()
    )


def test_reads_16bit_and_rgba_images(cfg, records):
    mapper = DentalDatasetMapper(cfg, is_train=True)
    xray = mapper(records[0])
    assert xray["image"].shape == (3, 48, 64)
    assert int(xray["image"].max()) == 255 and int(xray["image"].min()) == 0
    assert xray["instances"].gt_classes.tolist() == [1, 0]
    assert xray["instances"].gt_masks.polygons and len(xray["instances"]) == 2
    rgba = mapper(records[1])
    assert rgba["image"][:, 0, 0].tolist() == [0, 0, 0]
    assert rgba["image"][:, 5, 5].tolist() == [200, 200, 200]


def test_inference_mapping_drops_annotations(cfg, records):
    mapped = DentalDatasetMapper(cfg, is_train=False)(records[0])
    assert "annotations" not in mapped and "instances" not in mapped
    assert mapped["image"].shape == (3, 48, 64)


def test_size_mismatch_names_the_file(cfg, records):
    records[2]["height"] = 50
    with pytest.raises(DentalError, match=r"img2\.jpg: image is 48x64 .* says 50x64"):
        DentalDatasetMapper(cfg, is_train=True)(records[2])
