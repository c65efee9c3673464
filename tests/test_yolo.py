"""YOLO-seg exports: registration, check_dataset's checks and messages, and convert_dataset's
COCO <-> YOLO round trip on the in-repository DentalAI demo."""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pycocotools.mask as mask_util
import pytest
import yaml
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import convert_to_coco_dict
from PIL import Image
from support import DENTALAI_DEMO, INSTANT_CONFIG, REPO_ROOT, TRAIN_NET, tool_error_lines

from dental_d2 import DentalError, add_dental_config
from dental_d2.cross_validation.splits import pool_images
from dental_d2.data import register_dental_splits, register_from_config
from dental_d2.data.roboflow import load_roboflow_split
from dental_d2.data.synthetic import generate_synthetic_dataset
from dental_d2.data.yolo import load_yolo_split

# Image a: a Tooth square (4,4)-(40,40) and a Caries triangle, on 64x48 (WxH).
TOOTH = "1 0.0625 0.083333 0.625 0.083333 0.625 0.833333 0.0625 0.833333"
CARIES = "0 0.15625 0.208333 0.3125 0.208333 0.3125 0.458333"


def write_image(path, size=(64, 48)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def make_yolo(root, a_labels=f"{TOOTH}\n{CARIES}\n"):
    """A YOLO-seg export as Ultralytics documents it: names as an id map, train a folder, val a
    list file. Train: a (two polygons), b (a box line and a polygon, Windows line endings), c
    (no label file), d (an empty label file), and a label file without its image."""
    data = {
        "path": ".",
        "train": "images/train",
        "val": "val.txt",
        "names": {0: "Caries", 1: "Tooth"},
    }
    (root / "labels" / "train").mkdir(parents=True)
    (root / "data.yaml").write_text(yaml.safe_dump(data))
    for name in ("a.jpg", "b.png", "c.jpg", "d.jpg"):
        write_image(root / "images" / "train" / name)
    (root / "labels" / "train" / "a.txt").write_text(a_labels)
    (root / "labels" / "train" / "b.txt").write_bytes(b"1 0.5 0.5 0.25 0.5\r\n" + CARIES.encode())
    (root / "labels" / "train" / "d.txt").write_text("")
    (root / "labels" / "train" / "zz_orphan.txt").write_text(CARIES)
    write_image(root / "images" / "val" / "e.jpg", size=(40, 30))
    (root / "labels" / "val").mkdir(parents=True)
    (root / "labels" / "val" / "e.txt").write_text(TOOTH)
    (root / "val.txt").write_text("./images/val/e.jpg\n")
    return root


@pytest.fixture
def check_tool(load_tool):
    return load_tool("check_dataset")


@pytest.fixture
def convert_tool(load_tool):
    return load_tool("convert_dataset")


def test_check_dataset_reads_a_yolo_export_and_draws_it(check_tool, dataset_name, tmp_path, capsys):
    root = make_yolo(tmp_path / "yolo")
    out = tmp_path / "render"
    assert check_tool.main([str(root), "--name", dataset_name, "--render", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert (
        f"train ({dataset_name}_train, yolo/data.yaml): 4 images, 3 annotations, 2 images "
        in stdout
    )
    assert f"valid ({dataset_name}_valid, yolo/data.yaml): 1 images, 1 annotations" in stdout
    assert "image sizes (HxW): 48x64 (4)" in stdout
    for note in (
        "ignored 1 label files without an image (zz_orphan.txt)",
        "kept 1 images without a label file as negatives (c.jpg)",
        "kept 1 images with an empty label file as negatives (d.txt)",
        "read 1 label files with Windows line endings (b.txt)",
        "dropped 1 annotations without a segmentation (annotation ids b.txt:1)",
    ):
        assert note in stdout
    assert "usable (2 splits)" in stdout
    assert len(list(out.iterdir())) == 4  # 3 drawings of train (2 annotated first), 1 of valid


def test_records_are_the_coco_loaders_in_pixels(dataset_name, tmp_path):
    root = make_yolo(tmp_path / "yolo")
    split = load_yolo_split(root / "data.yaml", "train")
    record = split.dataset_dicts[0]
    assert record["file_name"] == str(root / "images" / "train" / "a.jpg")
    assert (record["height"], record["width"], record["image_id"]) == (48, 64, 0)
    tooth, caries = record["annotations"]
    assert tooth["category_id"] == 1 and caries["category_id"] == 0
    assert np.allclose(tooth["segmentation"], [[4, 4, 40, 4, 40, 40, 4, 40]], atol=1e-3)
    assert np.allclose(tooth["bbox"], [4, 4, 36, 36], atol=1e-3)
    assert int(tooth["bbox_mode"]) == 1 and tooth["iscrowd"] == 0  # XYWH_ABS
    assert split.thing_classes == ["Caries", "Tooth"]


@pytest.mark.parametrize(
    "line, message",
    [
        ("5 0.1 0.1 0.2 0.1 0.2 0.2", r"a\.txt line 2: class id 5 is not in data\.yaml's names"),
        ("0 0.1 0.1 0.2 0.1 0.2", r"a\.txt line 2: an odd number of coordinates \(5\)"),
        ("0 0.1 0.1 1.3 0.1 0.2 0.2", r"a\.txt line 2: coordinate 1\.3 is outside 0\.\.1"),
        ("0 0.1 x 0.2 0.1 0.2 0.2", r"a\.txt line 2: 'x' is not a number"),
    ],
)
def test_broken_label_lines_are_one_line_naming_file_and_line(
    check_tool, dataset_name, tmp_path, capsys, line, message
):
    root = make_yolo(tmp_path / "yolo", a_labels=f"{TOOTH}\n{line}\n")
    assert check_tool.main([str(root), "--name", dataset_name]) == 1
    errors = tool_error_lines(capsys.readouterr().err)
    assert len(errors) == 1
    assert re.search(message, errors[0]), errors[0]


def test_a_detection_export_is_refused_as_the_coco_loader_refuses_it(tmp_path):
    root = make_yolo(tmp_path / "yolo", a_labels="1 0.5 0.5 0.25 0.5\n")
    (root / "labels" / "train" / "b.txt").write_text("0 0.5 0.5 0.25 0.5\n")
    with pytest.raises(DentalError, match=r"data\.yaml: none of the 2 annotations has a segm") as e:
        load_yolo_split(root / "data.yaml", "train")
    assert "export the dataset in YOLO segmentation (polygons" in str(e.value)


def test_coordinates_just_outside_are_clipped(tmp_path):
    root = make_yolo(tmp_path / "yolo", a_labels="0 -0.005 0.1 1.005 0.1 0.5 0.5\n")
    (polygon,) = load_yolo_split(root / "data.yaml", "train").dataset_dicts[0]["annotations"]
    assert polygon["segmentation"][0][0] == 0 and polygon["segmentation"][0][2] == 64


def test_a_folder_of_neither_layout_is_one_line(check_tool, tmp_path, capsys):
    write_image(tmp_path / "photos" / "a.jpg")
    assert check_tool.main([str(tmp_path / "photos")]) == 1
    (error,) = tool_error_lines(capsys.readouterr().err)
    assert "neither a COCO export (train/, valid/ or test/ with _annotations.coco.json)" in error
    assert "nor a YOLO-seg export (data.yaml)" in error


def test_registration_reads_no_image_and_sizes_come_from_headers(dataset_name, tmp_path):
    root = make_yolo(tmp_path / "yolo")
    # Registration reads data.yaml only; a load reads the images' headers and, by default,
    # decodes them.
    (root / "images" / "train" / "c.jpg").write_bytes(b"not an image")
    cut = root / "images" / "train" / "d.jpg"
    cut.write_bytes(cut.read_bytes()[:-1500])  # the header survives, the pixels do not
    cfg = get_cfg()
    add_dental_config(cfg)
    cfg.DENTAL.DATA_ROOT, cfg.DENTAL.DATASET_NAME = str(root), dataset_name
    assert register_from_config(cfg) == ["Caries", "Tooth"]
    metadata = MetadataCatalog.get(f"{dataset_name}_train")
    assert metadata.thing_dataset_id_to_contiguous_id == {0: 0, 1: 1}
    assert metadata.evaluator_type == "coco" and not hasattr(metadata, "json_file")
    with pytest.raises(DentalError, match=r"c\.jpg: not a readable image"):
        DatasetCatalog.get(f"{dataset_name}_train")
    write_image(root / "images" / "train" / "c.jpg")
    sizes = [
        (d["height"], d["width"])
        for d in load_yolo_split(root / "data.yaml", "train", check_images=False).dataset_dicts
    ]
    assert sizes == [(48, 64)] * 4
    with pytest.raises(DentalError, match=r"d\.jpg: image is corrupt or truncated"):
        DatasetCatalog.get(f"{dataset_name}_train")
    # What COCOEvaluator evaluates against: the records converted back to COCO.
    write_image(cut)
    coco = convert_to_coco_dict(f"{dataset_name}_valid")
    assert [c["name"] for c in coco["categories"]] == ["Caries", "Tooth"]
    assert len(coco["annotations"]) == 1 and coco["annotations"][0]["category_id"] == 1


def dentalai_subset(folder, per_split=3):
    """The first images of the in-repository DentalAI demo's train and valid splits, as a COCO
    export."""
    for split in ("train", "valid"):
        coco = json.loads((DENTALAI_DEMO / split / "_annotations.coco.json").read_text())
        coco["images"] = coco["images"][:per_split]
        kept = {image["id"] for image in coco["images"]}
        coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in kept]
        (folder / split).mkdir(parents=True)
        for image in coco["images"]:
            shutil.copy(DENTALAI_DEMO / split / image["file_name"], folder / split)
        (folder / split / "_annotations.coco.json").write_text(json.dumps(coco))
    return folder


def test_dentalai_round_trip_keeps_every_polygon_within_half_a_pixel(
    check_tool, convert_tool, dataset_name, tmp_path, capsys
):
    source = dentalai_subset(tmp_path / "coco")
    yolo, back = tmp_path / "yolo", tmp_path / "back"
    assert convert_tool.main([str(source), "--to", "yolo", "--output", str(yolo)]) == 0
    data = yaml.safe_load((yolo / "data.yaml").read_text())
    assert data["names"] == ["Caries", "Cavity", "Crack", "Tooth"] and data["val"] == "images/val"
    assert check_tool.main([str(yolo), "--name", dataset_name]) == 0
    assert convert_tool.main([str(yolo), "--to", "coco", "--output", str(back)]) == 0
    assert "usable (2 splits)" in capsys.readouterr().out
    compared = 0
    for split in ("train", "valid"):
        original = load_roboflow_split(source / split / "_annotations.coco.json")
        returned = load_roboflow_split(back / split / "_annotations.coco.json")
        assert returned.thing_classes == original.thing_classes
        by_name = {d["file_name"].rsplit("/", 1)[1]: d for d in returned.dataset_dicts}
        assert len(by_name) == len(original.dataset_dicts) == 3
        for record in original.dataset_dicts:
            other = by_name[record["file_name"].rsplit("/", 1)[1]]
            assert (other["height"], other["width"]) == (record["height"], record["width"])
            assert len(other["annotations"]) == len(record["annotations"])
            for a, b in zip(record["annotations"], other["annotations"]):
                assert a["category_id"] == b["category_id"]
                assert len(a["segmentation"]) == len(b["segmentation"])
                for p, q in zip(a["segmentation"], b["segmentation"]):
                    assert np.abs(np.subtract(p, q)).max() <= 0.5
                assert np.abs(np.subtract(a["bbox"], b["bbox"])).max() <= 0.5
                compared += 1
    assert compared > 20


def test_cross_validation_asks_for_a_coco_export(dataset_name, tmp_path):
    root = make_yolo(tmp_path / "yolo")
    with pytest.raises(DentalError, match=r"convert this YOLO export first: .* --to coco"):
        pool_images(str(root), name=dataset_name)


def test_roboflow_yolo_layout_with_parent_relative_paths(dataset_name, tmp_path):
    # Roboflow's YOLO export: split folders holding images/ and labels/, and paths in
    # data.yaml written relative to a folder above the export.
    root = tmp_path / "roboflow"
    data = {"train": "../train/images", "val": "../valid/images", "nc": 2, "names": ["a", "b"]}
    for split in ("train", "valid"):
        write_image(root / split / "images" / "x.jpg")
        (root / split / "labels").mkdir()
        (root / split / "labels" / "x.txt").write_text(TOOTH)
    (root / "data.yaml").write_text(yaml.safe_dump(data))
    assert register_dental_splits(root, dataset_name) == {
        "train": f"{dataset_name}_train",
        "valid": f"{dataset_name}_valid",
    }
    (record,) = DatasetCatalog.get(f"{dataset_name}_valid")
    assert record["file_name"] == str(root / "valid" / "images" / "x.jpg")
    assert record["annotations"][0]["category_id"] == 1


@pytest.mark.slow
def test_train_net_learns_from_a_yolo_export(convert_tool, tmp_path):
    coco = tmp_path / "coco"
    generate_synthetic_dataset(str(coco), num_train=12, num_valid=4, num_test=4, size=128, seed=3)
    yolo, output = tmp_path / "yolo", tmp_path / "train"
    assert convert_tool.main([str(coco), "--to", "yolo", "--output", str(yolo)]) == 0
    result = subprocess.run(
        [sys.executable, TRAIN_NET, "--config-file", INSTANT_CONFIG,
         "DENTAL.DATA_ROOT", str(yolo), "OUTPUT_DIR", str(output), "SOLVER.MAX_ITER", "30",
         "TEST.EVAL_PERIOD", "0", "SOLVER.CHECKPOINT_PERIOD", "1000"],
        capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    with open(output / "metrics.json") as f:
        rows = [row for row in map(json.loads, f) if "total_loss" in row]
    assert rows[-1]["total_loss"] < 0.8 * rows[0]["total_loss"], rows
    # The test split was evaluated against the YOLO labels, all four classes present.
    truth = json.loads(
        (output / "eval" / "dental_test" / "dental_test_coco_format.json").read_text()
    )
    source = json.loads((coco / "test" / "_annotations.coco.json").read_text())
    assert len(truth["annotations"]) == len(source["annotations"])
    metrics = json.loads((output / "eval" / "dental_test" / "metrics.json").read_text())
    assert set(metrics["segm"]["per_class"]) == {"Caries", "Cavity", "Crack", "Tooth"}


def test_rle_masks_and_multi_polygon_objects_become_polygon_lines(convert_tool, make_export, coco):
    mask = np.zeros((48, 64), np.uint8)
    mask[4:40, 4:40] = 1
    rle = mask_util.encode(np.asfortranarray(mask))
    coco["annotations"][0]["segmentation"] = {"size": [48, 64], "counts": rle["counts"].decode()}
    coco["annotations"][1]["segmentation"].append([30, 30, 40, 30, 40, 40])
    root = make_export(coco=coco)
    yolo = root.parent / "yolo"
    assert convert_tool.main([str(root), "--to", "yolo", "--output", str(yolo)]) == 0
    lines = (yolo / "labels" / "train" / "img0.txt").read_text().splitlines()
    assert len(lines) == 3  # the RLE's outline, and one line per polygon of the other object
    traced = load_yolo_split(yolo / "data.yaml", "train").dataset_dicts[0]["annotations"][0]
    outline = mask_util.frPyObjects(traced["segmentation"], 48, 64)
    iou = mask_util.iou(outline, [rle], [0])[0][0]
    assert iou > 0.9 and traced["category_id"] == 1  # Tooth
