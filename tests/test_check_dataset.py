"""Tests of tools/check_dataset.py and dental_d2.data.check on good and broken exports."""

import subprocess
import sys
from pathlib import Path

import pytest

from dental_d2.data.check import check_dataset, format_report

REPO_ROOT = Path(__file__).resolve().parents[1]
TOOL = REPO_ROOT / "tools" / "check_dataset.py"


@pytest.fixture
def tool(load_tool):
    """The tool's module, run in-process by calling `main(argv)`."""
    return load_tool("check_dataset")


def test_report_counts(make_export, coco):
    coco["annotations"][0]["segmentation"].append([1, 1, 2, 2])
    root = make_export(splits=("train", "valid"), coco=coco)
    reports = check_dataset(root, name="check_counts")
    assert [r.split for r in reports] == ["train", "valid"]
    train = reports[0]
    assert (train.num_images, train.num_annotations, train.num_empty_images) == (3, 4, 1)
    assert train.class_counts == {"Caries": (2, 2), "Tooth": (2, 2)}
    assert train.image_sizes == {(48, 64): 3}
    assert train.repairs == ["dropped 1 polygons with fewer than 3 points (annotation ids 0)"]
    text = format_report(train)
    assert "3 images, 4 annotations, 1 images without annotations" in text
    assert "48x64 (3)" in text
    assert "| Caries" in text and "| Tooth" in text


def test_good_export_exits_zero_and_renders(tool, make_export, tmp_path, capsys):
    root = make_export(splits=("train", "test"))
    out = tmp_path / "render"
    assert tool.main([str(root), "--render", str(out), "--name", "check_good"]) == 0
    stdout = capsys.readouterr().out
    assert "usable (2 splits)" in stdout
    drawings = sorted(p.name for p in out.iterdir())
    assert len(drawings) == 6 and all(name.endswith(".jpg") for name in drawings)


def test_broken_export_exits_nonzero_with_one_line(tool, make_export, coco, capsys):
    coco["annotations"][2]["category_id"] = 9
    root = make_export(coco=coco)
    assert tool.main([str(root), "--name", "check_broken"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert "train/_annotations.coco.json: annotation id 2" in err


@pytest.mark.slow
def test_subprocess_has_no_traceback(make_export):
    root = make_export()
    (root / "train" / "img1.jpg").unlink()
    result = subprocess.run(
        [sys.executable, str(TOOL), str(root)], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "image id 1" in errors[0] and "img1.jpg" in errors[0]


def test_calculus_export_is_usable(calculus_root, tool, capsys):
    assert tool.main([str(calculus_root), "--name", "check_calculus"]) == 0
    stdout = capsys.readouterr().out
    assert "train (check_calculus_train, train/_annotations.coco.json): 173 images" in stdout
    assert "| Calculus" in stdout
