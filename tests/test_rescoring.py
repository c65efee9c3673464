"""The benchmarks that re-score an evaluation's folder: recall_by_size.py (the share of objects
found and AP50 per class and size) and outline_fallback.py (AP50 with and without outlines
drawn from a faint mask's peak)."""

import json

import numpy as np
import pytest
from pycocotools import mask as mask_util

from dental_d2.modeling.postprocessing import MASK_FROM_PEAK

# Squares (x, y, side) in a 200x200 photo: caries of 10 and 40 px, a tooth of 50 px.
CARIES_SMALL, CARIES_LARGE, TOOTH = (10, 10, 10), (60, 60, 40), (120, 120, 50)


def _square(x, y, side):
    return [[x, y, x + side, y, x + side, y + side, x, y + side]]


def _detection(category_id, square, score):
    x, y, side = square
    mask = np.zeros((200, 200), dtype=np.uint8, order="F")
    mask[y : y + side, x : x + side] = 1
    rle = mask_util.encode(mask)
    return {"image_id": 1, "category_id": category_id, "score": score, "bbox": [x, y, side, side],
            "segmentation": {"size": [200, 200], "counts": rle["counts"].decode()}}  # fmt: skip


@pytest.fixture
def eval_dir(tmp_path):
    """An evaluation folder: the small caries found confidently, the large one faintly (0.3,
    its outline drawn from the mask's peak), the tooth not at all."""
    objects = [(1, CARIES_SMALL), (1, CARIES_LARGE), (2, TOOTH)]
    annotations = [
        {"id": k + 1, "image_id": 1, "category_id": category_id, "iscrowd": 0,
         "bbox": [x, y, side, side], "area": float(side**2), "segmentation": _square(x, y, side)}
        for k, (category_id, (x, y, side)) in enumerate(objects)
    ]  # fmt: skip
    ground_truth = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 200, "width": 200}],
        "categories": [{"id": 1, "name": "Caries"}, {"id": 2, "name": "Tooth"}],
        "annotations": annotations,
    }
    (tmp_path / "dental_test_coco_format.json").write_text(json.dumps(ground_truth))
    detections = [_detection(1, CARIES_SMALL, 0.9), _detection(1, CARIES_LARGE, 0.3)]
    detections[1][MASK_FROM_PEAK] = True
    (tmp_path / "coco_instances_results.json").write_text(json.dumps(detections))
    return tmp_path


def _table(out: str) -> list[list[str]]:
    """The cells of a printed markdown table, its header first."""
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_rows_per_class_and_size(eval_dir, capsys, load_tool):
    tool = load_tool("recall_by_size", "benchmarks")
    assert tool.main([str(eval_dir), "--sides", "16,32,64"]) == 0
    assert _table(capsys.readouterr().out) == [
        ["class", "size", "objects", "found, any score", "found, score >= 0.5", "AP50"],
        ["Caries", "< 16", "1", "100%", "100%", "100.0"],
        ["Caries", "32-64", "1", "100%", "0%", "100.0"],
        ["Tooth", "32-64", "1", "0%", "0%", "0.0"],
    ]


def test_ap50_with_the_peak_outlines_and_without(eval_dir, capsys, load_tool):
    tool = load_tool("outline_fallback", "benchmarks")
    assert tool.main([str(eval_dir)]) == 0
    assert _table(capsys.readouterr().out) == [
        ["class", "detections", "no pixel at 0.5", "their median score", "AP50 outlined",
         "AP50 empty"],
        # Emptied, the large caries is missed: precision 1 up to recall 0.5 (51 of COCO's 101
        # recall points).
        ["Caries", "2", "1", "0.30", "100.0", "50.5"],
        ["Tooth", "0", "0", "–", "0.0", "0.0"],
    ]  # fmt: skip


@pytest.mark.parametrize("script", ["recall_by_size", "outline_fallback"])
def test_a_folder_without_an_evaluation_is_one_line(script, tmp_path, capsys, load_tool):
    assert load_tool(script, "benchmarks").main([str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {tmp_path}: no coco_instances_results.json") and "\n" not in err


def test_sizes_must_increase(eval_dir, capsys, load_tool):
    assert load_tool("recall_by_size", "benchmarks").main([str(eval_dir), "--sides", "32,16"]) == 1
    assert "--sides 32,16: give increasing positive sizes" in capsys.readouterr().err
