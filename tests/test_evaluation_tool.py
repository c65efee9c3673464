"""tools/evaluate.py on a tiny Roboflow-style export: outputs written, bad input one error line."""

import datetime
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from support import assert_confusion_matrix_plot, assert_pr_curves_plot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "evaluate.py")


@pytest.fixture
def evaluate_tool(load_tool):
    return load_tool("evaluate")


def _square(x, y, w, h):
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


@pytest.fixture
def export(tmp_path):
    """A Roboflow export: superclass id 0, annotation ids from 0, three 64x64 images."""
    images_dir = tmp_path / "valid"
    images_dir.mkdir()
    images, annotations = [], []
    boxes = {0: [(1, [4, 4, 20, 20]), (2, [30, 30, 24, 24])], 1: [(1, [10, 10, 16, 16])], 2: []}
    for image_id, objects in boxes.items():
        file_name = f"img{image_id}.jpg"
        Image.fromarray(np.full((64, 64, 3), 90, dtype=np.uint8)).save(images_dir / file_name)
        images.append({"id": image_id, "file_name": file_name, "height": 64, "width": 64})
        for category_id, box in objects:
            annotations.append(
                {
                    "id": len(annotations),
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "segmentation": _square(*box),
                    "iscrowd": 0,
                }
            )
    gt = {
        "info": {},
        "categories": [
            {"id": 0, "name": "teeth-dx4k", "supercategory": "none"},
            {"id": 1, "name": "Caries", "supercategory": "teeth-dx4k"},
            {"id": 2, "name": "Tooth", "supercategory": "teeth-dx4k"},
        ],
        "images": images,
        "annotations": annotations,
    }
    gt_path = images_dir / "_annotations.coco.json"
    gt_path.write_text(json.dumps(gt))
    # Perfect predictions, as polygons, plus one false positive on the empty image.
    results = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "segmentation": a["segmentation"],
            "score": 0.9,
        }
        for a in annotations
    ]
    results.append(
        {
            "image_id": 2,
            "category_id": 2,
            "bbox": [0, 0, 10, 10],
            "segmentation": _square(0, 0, 10, 10),
            "score": 0.6,
        }
    )
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(results))
    return gt_path, results_path, images_dir, results


@pytest.mark.slow
def test_evaluate_tool_writes_metrics_plots_and_report(export, tmp_path):
    gt_path, results_path, images_dir, _ = export
    output = tmp_path / "out"
    command = [sys.executable, TOOL, "--gt", str(gt_path), "--predictions", str(results_path)]
    command += ["--output", str(output), "--images", str(images_dir)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=150, cwd=ROOT)
    assert completed.returncode == 0, completed.stderr
    for task in ("bbox", "segm"):
        assert f"{task}: AP " in completed.stdout
    assert "precision 0.750, recall 1.000, F1 0.857" in completed.stdout
    assert f"report: {output / 'report.html'}" in completed.stdout

    expected = ["metrics.json", "report.html"] + [
        f"{task}_{kind}.png"
        for task in ("bbox", "segm")
        for kind in ("pr_curves", "confusion_matrix")
    ]
    assert all((output / name).is_file() for name in expected)
    metrics = json.loads((output / "metrics.json").read_text())
    for task in ("bbox", "segm"):
        assert_pr_curves_plot(output / f"{task}_pr_curves.png", 2)
        counts = metrics[task]["confusion_matrix"]["counts"]
        assert_confusion_matrix_plot(output / f"{task}_confusion_matrix.png", counts)
    for task in ("bbox", "segm"):
        # The superclass is not a class; the annotation with id 0 still counts (AP 100).
        assert set(metrics[task]["per_class"]) == {"Caries", "Tooth"}
        assert metrics[task]["per_class"]["Caries"]["AP"] == pytest.approx(100.0)
        assert metrics[task]["per_class"]["Tooth"]["fp"] == 1
        assert metrics[task]["pooled"] == {
            "tp": 3, "fp": 1, "fn": 0, "precision": 0.75, "recall": 1.0, "f1": pytest.approx(6 / 7)
        }  # fmt: skip
    page = (output / "report.html").read_text(encoding="utf-8")
    assert page.count('src="data:image/jpeg') >= 2 and 'src="http' not in page
    # it says what it scored, when, at which thresholds, and what best-F1 means
    assert f"<th>Predictions</th><td>{results_path}</td>" in page
    assert f"<th>Ground truth</th><td>{gt_path}</td>" in page
    date = re.search(r"<th>Date</th><td>(\d{4}-\d\d-\d\d \d\d:\d\d) UTC</td>", page)
    assert date, page[:2000]
    written = datetime.datetime.strptime(date.group(1), "%Y-%m-%d %H:%M")
    age = datetime.datetime.now(datetime.UTC).replace(tzinfo=None) - written
    assert abs(age.total_seconds()) < 600
    assert "<th>Thresholds</th><td>a prediction counts at score &gt;= 0.5; it matches a " in page
    assert "keeping only the predictions scoring at least this gives the highest F1" in page


@pytest.mark.slow
def test_evaluate_tool_bad_input_prints_one_line(export, tmp_path):
    gt_path, _, _, results = export
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([dict(results[0], image_id=99)]))
    command = [sys.executable, TOOL, "--gt", str(gt_path), "--predictions", str(bad)]
    # fvcore warns about torch.jit.script when detectron2 is imported: not this tool's output.
    env = dict(os.environ, PYTHONWARNINGS="ignore::FutureWarning")
    completed = subprocess.run(
        command + ["--output", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=150,
        env=env,
    )
    assert completed.returncode == 1
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in completed.stderr
    assert lines[0].startswith("error: ") and str(bad) in lines[0] and "image_id 99" in lines[0]


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing_results", "no such file"),
        ("broken_results", "not valid JSON"),
        ("superclass_category", "category_id 0"),
        ("results_not_a_list", "JSON list"),
        ("missing_gt", "no such file"),
        ("gt_not_coco", "has no 'annotations' list"),
        ("gt_empty_mask", "has no segmentation"),
        # the loader's lines, as training and cross-validation give them
        ("gt_unknown_image", "annotation id 1 points at image id 7, which is not in 'images'"),
        ("gt_unknown_category", "annotation id 1 (image id 0) has category_id 9, which is not"),
    ],
)
def test_evaluate_tool_errors_name_the_file(
    export, tmp_path, capsys, case, expected, evaluate_tool
):
    gt_path, results_path, _, results = export
    path = tmp_path / "input.json"
    if case == "missing_results":
        results_path = path
    elif case == "broken_results":
        path.write_text("[{")
        results_path = path
    elif case == "superclass_category":
        path.write_text(json.dumps([dict(results[0], category_id=0)]))
        results_path = path
    elif case == "results_not_a_list":
        path.write_text(json.dumps({"annotations": results}))
        results_path = path
    elif case == "missing_gt":
        gt_path = path
    elif case == "gt_not_coco":
        path.write_text(json.dumps({"images": []}))
        gt_path = path
    elif case.startswith("gt_"):
        gt = json.loads(gt_path.read_text())
        broken = {"gt_empty_mask": ("segmentation", []), "gt_unknown_image": ("image_id", 7)}
        key, value = broken.get(case, ("category_id", 9))
        gt["annotations"][1][key] = value
        path.write_text(json.dumps(gt))
        gt_path = path
    argv = ["--gt", str(gt_path), "--predictions", str(results_path), "--output", str(tmp_path)]
    assert evaluate_tool.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert str(path) in err[0] and expected in err[0]
    assert not (tmp_path / "metrics.json").exists()


def test_evaluate_tool_boxes_only_with_masks_missing(export, tmp_path, evaluate_tool):
    gt_path, _, _, results = export
    gt = json.loads(gt_path.read_text())
    for a in gt["annotations"]:
        a["segmentation"] = []
    gt_file = tmp_path / "boxes.json"
    gt_file.write_text(json.dumps(gt))
    boxes = tmp_path / "boxes_results.json"
    boxes.write_text(
        json.dumps([{k: v for k, v in r.items() if k != "segmentation"} for r in results])
    )
    output = tmp_path / "out"
    argv = ["--gt", str(gt_file), "--predictions", str(boxes), "--output", str(output)]
    assert evaluate_tool.main(argv) == 0
    metrics = json.loads((output / "metrics.json").read_text())
    assert set(metrics) == {"bbox"}
    assert metrics["bbox"]["pooled"]["tp"] == 3
