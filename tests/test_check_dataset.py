"""Tests of tools/check_dataset.py and dental_d2.data.check on good and broken exports."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dental_d2.data.check import check_dataset, format_report
from dental_d2.data.image_io import read_image
from dental_d2.drawing import class_colors, drawn_scale

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
    # Drawn as every other picture: the findings band above the (enlarged) photo, masks tinted
    # with their class colour (not a random one) and outlined.
    photo = read_image(str(root / "train" / "img0.jpg"), format="RGB").astype(float)
    drawn = read_image(str(out / "check_good_train_img0.jpg"), format="RGB").astype(float)
    k = drawn_scale(48, 64)
    assert drawn.shape[1] == 64 * k and drawn.shape[0] > 48 * k
    band, drawn = drawn[: -48 * k], drawn[-48 * k :]
    assert band.max() > 200 and np.median(band) < 30  # white text on black
    tooth, caries = (np.array(c) * 255 for c in class_colors(["Tooth", "Caries"]))
    # conftest's tiny export: a tooth at x, y 4..40 with a caries at x 10..20, y 10..22 on it.
    tooth_only, under_caries = photo[24:38, 6:38].mean((0, 1)), photo[12:20, 12:18].mean((0, 1))
    tinted = 0.65 * tooth_only + 0.35 * tooth
    np.testing.assert_allclose(drawn[24 * k : 38 * k, 6 * k : 38 * k].mean((0, 1)), tinted, atol=6)
    twice = 0.65 * (0.65 * under_caries + 0.35 * tooth) + 0.35 * caries
    np.testing.assert_allclose(drawn[12 * k : 20 * k, 12 * k : 18 * k].mean((0, 1)), twice, atol=6)


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
