"""One COCO reading layer: the offline evaluation and the saved-results renderer read a results
file with the same checks and messages, and both take segm-only results."""

import json

import numpy as np
import pycocotools.mask as mask_util
import pytest
from support import tiny_coco

from dental_d2 import DentalError
from dental_d2.data.coco_json import box_from_segmentation, read_coco_json
from dental_d2.evaluation.offline import load_ground_truth, load_results
from dental_d2.evaluation.saved_results import load_coco_results, results_to_instances


@pytest.fixture
def gt_path(tmp_path):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(tiny_coco()))
    return path


def square_rle(height=48, width=64, box=(44, 5, 16, 35)) -> dict:
    x, y, w, h = box
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[y : y + h, x : x + w] = 1
    rle = mask_util.encode(np.asfortranarray(mask))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


@pytest.mark.parametrize(
    "result, message",
    [
        (
            {"image_id": 0, "category_id": 2, "bbox": [1, 1, 5, 5]},
            "result 0 has no numeric 'score'",
        ),
        ({"image_id": 0, "category_id": 2, "score": 0.9}, "neither a [x, y, w, h] bbox nor"),
        ({"category_id": 2, "score": 0.9, "bbox": [1, 1, 5, 5]}, "no 'image_id' or 'category_id'"),
        ("not a detection", "result 0 is not an object"),
    ],
)
def test_both_readers_refuse_a_broken_result_with_the_same_message(
    tmp_path, gt_path, result, message
):
    path = tmp_path / "results.json"
    path.write_text(json.dumps([result]))
    with pytest.raises(DentalError) as offline:
        load_results(str(path), load_ground_truth(str(gt_path)))
    with pytest.raises(DentalError) as saved:
        load_coco_results(str(path))
    for error in (offline, saved):
        assert str(error.value).startswith(f"{path}: ") and message in str(error.value)


def test_segm_only_results_are_read_by_both_with_the_mask_box(tmp_path, gt_path):
    rle = square_rle()
    path = tmp_path / "results.json"
    path.write_text(
        json.dumps([{"image_id": 0, "category_id": 2, "score": 0.9, "segmentation": rle}])
    )
    (offline,) = load_results(str(path), load_ground_truth(str(gt_path)))
    assert offline["bbox"] == pytest.approx([44, 5, 16, 35])

    results = load_coco_results(str(path))  # the renderer takes the box from the mask
    instances = results_to_instances(results, (48, 64), {1: 0, 2: 1})
    assert instances.pred_boxes.tensor.tolist() == [[44.0, 5.0, 60.0, 40.0]]
    assert int(instances.pred_masks.sum()) == 16 * 35


def test_uncompressed_rle_results_are_drawn_with_the_mask_box():
    # Column-major runs on a 4x5 image: 6 off, 2 on (column 1, rows 2-3), 2 off, 2 on
    # (column 2, rows 2-3), 8 off.
    rle = {"size": [4, 5], "counts": [6, 2, 2, 2, 8]}
    assert box_from_segmentation(rle) == [1.0, 2.0, 2.0, 2.0]
    results = [{"image_id": 0, "category_id": 1, "score": 0.7, "segmentation": rle}]
    instances = results_to_instances(results, (4, 5), {1: 0})
    assert instances.pred_boxes.tensor.tolist() == [[1.0, 2.0, 3.0, 4.0]]
    assert int(instances.pred_masks.sum()) == 4


def test_polygon_results_become_masks_for_drawing():
    polygon = [[4, 4, 40, 4, 40, 40, 4, 40]]
    results = [{"image_id": 0, "category_id": 1, "score": 0.7, "segmentation": polygon}]
    instances = results_to_instances(results, (48, 64), {1: 0})
    assert instances.pred_masks.shape == (1, 48, 64)
    assert box_from_segmentation(polygon) == [4.0, 4.0, 36.0, 36.0]
    assert instances.pred_masks[0, 20, 20] and not instances.pred_masks[0, 45, 60]


def test_dataset_reader_names_the_file_the_record_and_the_fix(tmp_path):
    coco = tiny_coco()
    coco["categories"].append({"id": 2, "name": "Cavity"})
    path = tmp_path / "_annotations.coco.json"
    path.write_text(json.dumps(coco))
    with pytest.raises(DentalError, match=r"category id 2 is listed twice; give each category"):
        read_coco_json(str(path))
    with pytest.raises(DentalError, match=r"no such file; pass the GT"):
        read_coco_json(str(tmp_path / "missing.json"), "pass the GT")
