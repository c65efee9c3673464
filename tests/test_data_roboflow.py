"""Tests of dental_d2.data.roboflow: loading, every validation error, repairs and the cache."""

import json
import logging

import numpy as np
import pytest
from detectron2.structures import BoxMode
from PIL import Image
from pycocotools import mask as mask_util
from support import ANNOTATION_FILE

from dental_d2 import DentalError
from dental_d2.data import image_io as image_io_module
from dental_d2.data import load_roboflow_json, load_roboflow_split


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


def _truncate(path, size):
    path.write_bytes(path.read_bytes()[:size])


# Broken files of the export's train folder, and the one-line error each must give.
BROKEN_FILES = [
    pytest.param(lambda d: (d / "img1.jpg").unlink(), r"image id 1: .*img1\.jpg not found",
                 id="missing-image"),
    pytest.param(lambda d: (d / "img0.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken"),
                 r"image id 0: .*img0\.jpg", id="corrupt-jpeg"),
    # The header intact, the pixels cut.
    pytest.param(lambda d: _truncate(d / "img2.jpg", 2 * (d / "img2.jpg").stat().st_size // 3),
                 r"image id 2: .*img2\.jpg.*truncated", id="truncated-jpeg"),
    pytest.param(lambda d: Image.fromarray(np.zeros((30, 64, 3), np.uint8)).save(d / "img1.jpg"),
                 r"image id 1: .*30x64 .* JSON says 48x64", id="size-mismatch"),
    pytest.param(lambda d: _truncate(d / ANNOTATION_FILE, 100),
                 r"not valid JSON \(line 1 column", id="truncated-json"),
    pytest.param(lambda d: (d / ANNOTATION_FILE).write_text("  \n"), r"the file is empty",
                 id="empty-json"),
    pytest.param(lambda d: (d / ANNOTATION_FILE).write_text("[1, 2]"),
                 r"top level is not a JSON object", id="json-not-coco"),
]  # fmt: skip
# Broken records of the export's COCO JSON (`tiny_coco`: 3 images, 4 annotations), and the
# one-line error each must give.
BROKEN_RECORDS = [
    pytest.param(lambda c: c.update(images=[], annotations=[]), r"lists no images",
                 id="no-images"),
    pytest.param(lambda c: c["annotations"][1].update(category_id=7),
                 r"annotation id 1 .*category_id 7", id="unknown-category"),
    pytest.param(lambda c: c["annotations"][0].update(segmentation=[[1, 2, 30, 2, 30, 30, 5]]),
                 r"annotation id 0 .*odd number of coordinates", id="odd-coordinate-count"),
    pytest.param(lambda c: c["annotations"][2].update(segmentation=[[1, 2, "x", 2, 30, 30]]),
                 r"annotation id 2 .*non-numeric.*'x'", id="non-number-coordinate"),
    pytest.param(lambda c: c["images"][2].update(id=1), r"image id 1 is listed twice",
                 id="duplicate-image-id"),
    pytest.param(lambda c: c["annotations"][3].update(id=0), r"annotation id 0 is listed twice",
                 id="duplicate-annotation-id"),
    pytest.param(lambda c: c["annotations"][1].update(image_id=42),
                 r"annotation id 1 points at image id 42", id="annotation-of-a-missing-image"),
    pytest.param(lambda c: [a.update(segmentation=[]) for a in c["annotations"]],
                 r"none of the 4 annotations has a segmentation.*COCO Segmentation",
                 id="detection-only-export"),
    pytest.param(lambda c: c["annotations"][0].update(
                     segmentation={"size": [10, 10], "counts": [0, 100]}),
                 r"annotation id 0 .*RLE mask of size \[10, 10\]", id="rle-of-the-wrong-size"),
]  # fmt: skip


def _expect_error(root, pattern):
    """The loader's error: one line that names the JSON file, then says what is wrong."""
    with pytest.raises(DentalError, match=rf"train/_annotations\.coco\.json: {pattern}") as info:
        _load(root)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("damage, pattern", BROKEN_FILES)
def test_a_broken_file_is_one_line_naming_it(make_export, damage, pattern):
    root = make_export()
    damage(root / "train")
    _expect_error(root, pattern)


@pytest.mark.parametrize("damage, pattern", BROKEN_RECORDS)
def test_a_broken_record_is_one_line_naming_it(make_export, coco, damage, pattern):
    damage(coco)
    _expect_error(make_export(coco=coco), pattern)


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


def test_check_images_false_skips_decoding(make_export):
    root = make_export()
    (root / "train" / "img1.jpg").unlink()
    dicts = load_roboflow_json(root / "train" / ANNOTATION_FILE, check_images=False)
    assert len(dicts) == 3
