"""RLE masks (as CVAT and other tools export them) in a Roboflow-layout export: checked at load
time, reported by tools/check_dataset.py, and trained through tools/train_net.py."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.structures import BitMasks, PolygonMasks
from pycocotools import mask as mask_util

# The tiny training set-up of tests/test_train_net.py: the demo model at 128 px, no workers.
from support import INSTANT_CONFIG as CONFIG
from support import REPO_ROOT as ROOT
from support import TRAIN_NET

from dental_d2 import add_dental_config
from dental_d2.data import DentalDatasetMapper, load_roboflow_json
from dental_d2.data.rle import rle_string_counts
from dental_d2.data.synthetic import generate_synthetic_dataset


def uncompressed_counts(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE of a binary mask: run lengths in column-major order, first run 0s."""
    flat = mask.flatten(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    return runs if flat[0] == 0 else [0, *runs]


def to_rle(annotation: dict, height: int, width: int, compressed: bool) -> dict:
    """The annotation's polygons as one RLE mask: a `counts` string or an uncompressed list."""
    rle = mask_util.merge(mask_util.frPyObjects(annotation["segmentation"], height, width))
    if compressed:
        return {"size": [height, width], "counts": rle["counts"].decode("ascii")}
    mask = mask_util.decode(rle)
    uncompressed = {"size": [height, width], "counts": uncompressed_counts(mask)}
    assert np.array_equal(
        mask_util.decode(mask_util.frPyObjects(uncompressed, height, width)), mask
    )
    return uncompressed


def convert_export_to_rle(root: Path) -> int:
    """Rewrites every split's polygons as RLE, alternating compressed and uncompressed."""
    converted = 0
    for split in ("train", "valid", "test"):
        json_file = root / split / "_annotations.coco.json"
        coco = json.loads(json_file.read_text())
        sizes = {image["id"]: (image["height"], image["width"]) for image in coco["images"]}
        for annotation in coco["annotations"]:
            height, width = sizes[annotation["image_id"]]
            annotation["segmentation"] = to_rle(annotation, height, width, converted % 2 == 0)
            converted += 1
        json_file.write_text(json.dumps(coco))
    return converted


@pytest.fixture(scope="module")
def rle_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("rle_export")
    generate_synthetic_dataset(str(root), num_train=12, num_valid=4, num_test=4, size=128, seed=3)
    assert convert_export_to_rle(root) > 20
    return root


@pytest.fixture
def check_tool(load_tool):
    return load_tool("check_dataset")


def test_rle_string_counts_match_pycocotools():
    rng = np.random.default_rng(0)
    for trial in range(60):
        height, width = rng.integers(1, 200, 2)
        if trial % 3 == 0:  # noise: many short runs
            mask = (rng.random((height, width)) < 0.5).astype(np.uint8)
        else:  # a block: a few long runs, some starting with foreground
            mask = np.zeros((height, width), np.uint8)
            mask[rng.integers(0, height) :, : rng.integers(0, width + 1)] = 1
        counts = mask_util.encode(np.asfortranarray(mask))["counts"].decode("ascii")
        assert rle_string_counts(counts) == uncompressed_counts(mask), trial


@pytest.mark.parametrize(
    "segmentation, problem",
    [
        ({"size": [48, 64], "counts": [100, 20, 5000]}, "counts summing past the mask"),
        ({"size": [48, 64], "counts": [100, -20, 2992]}, "a negative run"),
        ({"size": [48, 64], "counts": "PPYo1{"}, "a character outside the code"),
        ({"size": [48, 64], "counts": "52"}, "runs of another mask size"),
        ({"size": [48, 64], "counts": "0P"}, "a run cut short"),
    ],
    ids=["long", "negative", "bad-char", "short", "cut"],
)
def test_malformed_rle_is_one_line_error(
    check_tool, make_export, coco, capsys, segmentation, problem
):
    coco["annotations"][1]["segmentation"] = segmentation
    root = make_export(coco=coco)
    assert check_tool.main([str(root), "--name", "rle_bad"]) == 1, problem
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert "annotation id 1 (image id 0) has a malformed RLE mask" in errors[0], errors


def test_check_dataset_reports_rle_masks(rle_export, check_tool, capsys):
    assert check_tool.main([str(rle_export), "--name", "rle_check"]) == 0
    stdout = capsys.readouterr().out
    assert "masks: 0 polygon, " in stdout and " RLE (trained as bitmasks)" in stdout


@pytest.mark.slow
def test_rle_export_trains_and_evaluates(rle_export, tmp_path):
    output = tmp_path / "train"
    result = subprocess.run(
        [sys.executable, TRAIN_NET, "--config-file", CONFIG,
         "DENTAL.DATA_ROOT", str(rle_export), "OUTPUT_DIR", str(output), "DENTAL.LOG_PERIOD", "4",
         "SOLVER.MAX_ITER", "12", "TEST.EVAL_PERIOD", "12", "SOLVER.CHECKPOINT_PERIOD", "1000",
         "DATASETS.TEST", "()"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    with open(output / "metrics.json") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    trained = [row for row in rows if "loss_mask" in row]
    assert len(trained) >= 3
    # learning happened, the mask head's loss included
    assert trained[-1]["total_loss"] < 0.85 * trained[0]["total_loss"], trained
    assert trained[-1]["loss_mask"] < trained[0]["loss_mask"], trained
    assert any("validation_loss" in row for row in rows)
    # the valid split's RLE ground truth reached COCO evaluation
    metrics = json.loads((output / "eval" / "dental_valid" / "metrics.json").read_text())
    assert sum(v["num_gt"] for v in metrics["segm"]["per_class"].values()) > 0


def test_mapper_gives_bitmasks_to_images_with_rle(make_export, coco):
    # image 0: its Tooth as RLE, its Caries as a polygon; image 1: polygons only
    coco["annotations"][0]["segmentation"] = to_rle(coco["annotations"][0], 48, 64, True)
    root = make_export(coco=coco)
    records = load_roboflow_json(root / "train" / "_annotations.coco.json")
    cfg = get_cfg()
    add_dental_config(cfg)
    cfg.merge_from_list(["MODEL.MASK_ON", "True", "INPUT.MASK_FORMAT", "polygon"])
    cfg.merge_from_list(["INPUT.MIN_SIZE_TRAIN", "(48,)", "INPUT.RANDOM_FLIP", "none"])
    mapper = DentalDatasetMapper(cfg, is_train=True)
    mixed, plain = mapper(records[0])["instances"], mapper(records[1])["instances"]
    assert isinstance(mixed.gt_masks, BitMasks) and isinstance(plain.gt_masks, PolygonMasks)
    # the RLE square (36x36) and the polygon square (10x12), at the image's own size
    assert mixed.gt_masks.tensor.sum(dim=(1, 2)).tolist() == [36 * 36, 10 * 12]
