"""Tests of the synthetic dataset generator: determinism, Roboflow layout, loadability."""

import json

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from dental_d2.data import register_dental_splits
from dental_d2.data.synthetic import CLASS_NAMES, generate_synthetic_dataset, make_synthetic_image

SMALL = {"num_train": 6, "num_valid": 2, "num_test": 2, "size": 192}


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    counts = generate_synthetic_dataset(root, seed=3, **SMALL)
    return root, counts


def _read(root, split="train"):
    return json.loads((root / split / "_annotations.coco.json").read_text())


def test_same_seed_gives_identical_output(export, tmp_path):
    root, counts = export
    again = tmp_path / "again"
    assert generate_synthetic_dataset(again, seed=3, **SMALL) == counts
    for split in ("train", "valid", "test"):
        first = (root / split / "_annotations.coco.json").read_bytes()
        assert (again / split / "_annotations.coco.json").read_bytes() == first
        for image in _read(root, split)["images"]:
            name = image["file_name"]
            assert (again / split / name).read_bytes() == (root / split / name).read_bytes()
    other = tmp_path / "other"
    generate_synthetic_dataset(other, seed=4, **SMALL)
    assert _read(other) != _read(root)


def test_roboflow_layout_and_superclass_quirk(export):
    root, counts = export
    assert counts == {"train": (6, counts["train"][1]), "valid": (2, counts["valid"][1]),
                      "test": (2, counts["test"][1])}  # fmt: skip
    coco = _read(root)
    assert {"info", "licenses", "categories", "images", "annotations"} <= set(coco)
    assert coco["categories"][0] == {"id": 0, "name": "dental-lesions", "supercategory": "none"}
    assert [(c["id"], c["name"], c["supercategory"]) for c in coco["categories"][1:]] == [
        (1, "Caries", "dental-lesions"),
        (2, "Cavity", "dental-lesions"),
        (3, "Crack", "dental-lesions"),
        (4, "Tooth", "dental-lesions"),
    ]
    assert all(a["category_id"] != 0 for a in coco["annotations"])
    names = [image["file_name"] for image in coco["images"]]
    assert names[0].startswith("synthetic_0001_png.rf.") and names[0].endswith(".jpg")
    assert all((image["height"], image["width"]) == (192, 192) for image in coco["images"])


def test_loads_through_registration(export):
    root, counts = export
    names = register_dental_splits(root, "synthetic_test_reg")
    try:
        metadata = MetadataCatalog.get(names["train"])
        assert metadata.thing_classes == ["Caries", "Cavity", "Crack", "Tooth"]
        dicts = DatasetCatalog.get(names["train"])
        assert len(dicts) == 6
        assert sum(len(d["annotations"]) for d in dicts) == counts["train"][1]
    finally:
        for name in names.values():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_images_have_teeth_with_lesions_inside():
    seen = set()
    for index in range(12):
        image, instances = make_synthetic_image(np.random.default_rng([0, index]), 256)
        assert image.shape == (256, 256, 3) and image.dtype == np.uint8
        teeth = [mask for name, mask in instances if name == "Tooth"]
        for name, mask in instances:
            seen.add(name)
            area = int(mask.sum())
            if name == "Tooth":
                ys, xs = np.nonzero(mask)
                assert xs.max() - xs.min() >= 20 and ys.max() - ys.min() >= 40
            else:
                assert area >= 100
                # Every lesion pixel lies on one tooth.
                assert any(int((mask & tooth).sum()) == area for tooth in teeth)
        # Teeth do not overlap one another.
        if teeth:
            assert int(np.sum(teeth, axis=0).max()) == 1
    assert seen == set(CLASS_NAMES)
