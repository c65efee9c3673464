"""Tests of dental_d2.data.roboflow: loading, every validation error, repairs and the cache."""

import json
import logging

import numpy as np
import pytest
from detectron2.structures import BoxMode
from PIL import Image
from pycocotools import mask as mask_util

from dental_d2 import DentalError
from dental_d2.data import image_io as image_io_module
from dental_d2.data import load_roboflow_json, load_roboflow_split

ANNOTATION_FILE = "_annotations.coco.json"


@pytest.fixture
def roboflow_log(caplog, monkeypatch):
    """Captures the loader's log, also after a tool's setup_logger turned propagation off."""
    monkeypatch.setattr(logging.getLogger("dental_d2"), "propagate", True)
    caplog.set_level(logging.INFO, logger="dental_d2.data.roboflow")
    return caplog


def _load(root, split="train"):
    return load_roboflow_json(root / split / ANNOTATION_FILE, root / split)


def test_loads_detectron2_dicts_and_drops_the_superclass(make_export):
    root = make_export()
    split = load_roboflow_split(root / "train" / ANNOTATION_FILE)
    assert split.thing_classes == ["Caries", "Tooth"]
    assert split.id_map == {1: 0, 2: 1}
    dicts = split.dataset_dicts
    assert [d["image_id"] for d in dicts] == [0, 1, 2]
    first = dicts[0]
    assert first["file_name"] == str(root / "train" / "img0.jpg")
    assert (first["height"], first["width"]) == (48, 64)
    tooth, caries = first["annotations"]
    assert tooth["category_id"] == 1 and caries["category_id"] == 0
    assert tooth["bbox"] == [4.0, 4.0, 36.0, 36.0]
    assert tooth["bbox_mode"] == BoxMode.XYWH_ABS
    assert tooth["segmentation"] == [[4.0, 4.0, 40.0, 4.0, 40.0, 40.0, 4.0, 40.0]]
    assert tooth["iscrowd"] == 0
    # The image without annotations stays, as a negative.
    assert dicts[2]["annotations"] == []


def test_results_are_cached_and_copies_are_returned(make_export, monkeypatch):
    root = make_export()
    first = _load(root)
    calls = []
    monkeypatch.setattr(image_io_module, "decode_check", lambda path: calls.append(path))
    first[0]["annotations"].clear()
    second = _load(root)
    assert calls == []  # not decoded again
    assert len(second[0]["annotations"]) == 2  # the caller's edit did not reach the cache


def test_cache_is_invalidated_when_the_json_changes(make_export, coco):
    root = make_export()
    assert len(_load(root)) == 3
    json_file = root / "train" / ANNOTATION_FILE
    coco["images"] = coco["images"][:2]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] < 2]
    json_file.write_text(json.dumps(coco) + " " * 10)  # other size, so other cache key
    assert len(_load(root)) == 2


def _expect_error(root, pattern, split="train"):
    with pytest.raises(DentalError, match=pattern) as info:
        _load(root, split)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_image(make_export):
    root = make_export()
    (root / "train" / "img1.jpg").unlink()
    message = _expect_error(root, r"image id 1: .*img1\.jpg not found")
    assert ANNOTATION_FILE in message


def test_corrupt_jpeg(make_export):
    root = make_export()
    (root / "train" / "img0.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    message = _expect_error(root, r"image id 0: .*img0\.jpg")
    assert ANNOTATION_FILE in message


def test_truncated_jpeg(make_export):
    root = make_export()
    path = root / "train" / "img2.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])  # header intact, pixels cut
    _expect_error(root, r"_annotations\.coco\.json: image id 2: .*img2\.jpg.*truncated")


def test_size_mismatch(make_export):
    root = make_export()
    Image.fromarray(np.zeros((30, 64, 3), np.uint8)).save(root / "train" / "img1.jpg")
    _expect_error(root, r"_annotations\.coco\.json: image id 1: .*30x64 .* JSON says 48x64")


def test_truncated_json(make_export):
    root = make_export()
    json_file = root / "train" / ANNOTATION_FILE
    json_file.write_text(json_file.read_text()[:100])
    _expect_error(root, r"_annotations\.coco\.json: not valid JSON \(line 1 column")


def test_empty_json_file(make_export):
    root = make_export()
    (root / "train" / ANNOTATION_FILE).write_text("  \n")
    _expect_error(root, r"_annotations\.coco\.json: the file is empty")


def test_json_without_images(make_export, coco):
    coco["images"], coco["annotations"] = [], []
    root = make_export(coco=coco)
    _expect_error(root, r"_annotations\.coco\.json: lists no images")


def test_json_that_is_not_coco(make_export):
    root = make_export()
    (root / "train" / ANNOTATION_FILE).write_text("[1, 2]")
    _expect_error(root, r"_annotations\.coco\.json: top level is not a JSON object")


def test_unknown_category_id(make_export, coco):
    coco["annotations"][1]["category_id"] = 7
    root = make_export(coco=coco)
    _expect_error(root, r"_annotations\.coco\.json: annotation id 1 .*category_id 7")


def test_odd_coordinate_count(make_export, coco):
    coco["annotations"][0]["segmentation"] = [[1, 2, 30, 2, 30, 30, 5]]
    root = make_export(coco=coco)
    _expect_error(root, r"_annotations\.coco\.json: annotation id 0 .*odd number of coordinates")


def test_non_number_coordinate(make_export, coco):
    coco["annotations"][2]["segmentation"] = [[1, 2, "x", 2, 30, 30]]
    root = make_export(coco=coco)
    _expect_error(root, r"_annotations\.coco\.json: annotation id 2 .*non-numeric.*'x'")


def test_duplicate_image_id(make_export, coco):
    coco["images"][2]["id"] = 1
    root = make_export(coco=coco)
    _expect_error(root, r"_annotations\.coco\.json: image id 1 is listed twice")


def test_duplicate_annotation_id(make_export, coco):
    coco["annotations"][3]["id"] = 0
    root = make_export(coco=coco)
    _expect_error(root, r"_annotations\.coco\.json: annotation id 0 is listed twice")


def test_annotation_pointing_at_a_missing_image(make_export, coco):
    coco["annotations"][1]["image_id"] = 42
    root = make_export(coco=coco)
    _expect_error(root, r"_annotations\.coco\.json: annotation id 1 points at image id 42")


def test_detection_only_export_is_rejected(make_export, coco):
    for annotation in coco["annotations"]:
        annotation["segmentation"] = []
    root = make_export(coco=coco)
    _expect_error(root, r"none of the 4 annotations has a segmentation.*COCO Segmentation")


def test_two_point_polygon_is_dropped_and_counted(make_export, coco, roboflow_log):
    good = coco["annotations"][0]["segmentation"][0]
    coco["annotations"][0]["segmentation"] = [good, [1.0, 1.0, 5.0, 5.0]]
    coco["annotations"][2]["segmentation"].append([2, 2, 3, 3])
    coco["annotations"][1]["segmentation"] = [[1, 1, 3, 3]]  # nothing usable left
    root = make_export(coco=coco)
    dicts = _load(root)
    assert dicts[0]["annotations"][0]["segmentation"] == [[float(v) for v in good]]
    assert len(dicts[0]["annotations"]) == 1  # annotation 1 was dropped
    lines = [r.getMessage() for r in roboflow_log.records if "dropped" in r.getMessage()]
    assert lines == [
        "train/_annotations.coco.json: dropped 2 polygons with fewer than 3 points "
        "(annotation ids 0, 2)",
        "train/_annotations.coco.json: dropped 1 annotations whose every polygon has fewer "
        "than 3 points (annotation ids 1)",
    ]


def test_boxes_are_clipped_and_counted(make_export, coco, roboflow_log):
    coco["annotations"][0]["bbox"] = [-2.0, 4.0, 70.0, 10.0]  # image is 64 wide
    coco["annotations"][1]["bbox"] = [70.0, 4.0, 5.0, 5.0]  # entirely outside
    del coco["annotations"][2]["bbox"]
    root = make_export(coco=coco)
    split = load_roboflow_split(root / "train" / ANNOTATION_FILE)
    annotations = split.dataset_dicts[0]["annotations"]
    assert annotations[0]["bbox"] == [0.0, 4.0, 64.0, 10.0]
    assert len(annotations) == 1
    assert split.dataset_dicts[1]["annotations"][0]["bbox"] == [4.0, 4.0, 36.0, 36.0]
    assert split.repairs == [
        "clipped 1 boxes that extended outside their image (annotation ids 0)",
        "dropped 1 annotations whose box is empty inside the image (annotation ids 1)",
        "computed 1 missing boxes from the masks (annotation ids 2)",
    ]
    assert len([r for r in roboflow_log.records if r.levelno == logging.WARNING]) == 3


def test_rle_segmentations_pass_through(make_export, coco):
    mask = np.zeros((48, 64), np.uint8, order="F")
    mask[5:15, 5:25] = 1
    compressed = mask_util.encode(mask)
    compressed["counts"] = compressed["counts"].decode("ascii")
    coco["annotations"][0].update(segmentation=compressed, iscrowd=1)
    # Uncompressed RLE (counts as a list), as COCO writes for crowds.
    coco["annotations"][2].update(
        segmentation={"size": [48, 64], "counts": [100, 20, 2952]}, iscrowd=1
    )
    root = make_export(coco=coco)
    dicts = _load(root)
    first = dicts[0]["annotations"][0]
    assert first["iscrowd"] == 1
    assert mask_util.decode(first["segmentation"]).sum() == 200
    assert mask_util.decode(dicts[1]["annotations"][0]["segmentation"]).sum() == 20


def test_rle_of_the_wrong_size_is_an_error(make_export, coco):
    coco["annotations"][0]["segmentation"] = {"size": [10, 10], "counts": [0, 100]}
    root = make_export(coco=coco)
    _expect_error(root, r"annotation id 0 .*RLE mask of size \[10, 10\]")


def test_check_images_false_skips_decoding(make_export):
    root = make_export()
    (root / "train" / "img1.jpg").unlink()
    dicts = load_roboflow_json(root / "train" / ANNOTATION_FILE, check_images=False)
    assert len(dicts) == 3
