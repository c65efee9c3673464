"""Tests of dataset registration: splits, metadata, re-registration, class checks, real data."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import convert_to_coco_dict

from dental_d2 import DentalError, add_dental_config
from dental_d2.data import check_num_classes, register_dental_splits, register_from_config
from dental_d2.data.categories import LESION_COLORS, TOOTH_COLOR, is_tooth_class, thing_colors

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_registers_present_splits_with_metadata(make_export, dataset_name):
    root = make_export(splits=("train", "test"))
    names = register_dental_splits(root, dataset_name)
    assert names == {"train": f"{dataset_name}_train", "test": f"{dataset_name}_test"}
    assert f"{dataset_name}_valid" not in DatasetCatalog.list()
    metadata = MetadataCatalog.get(f"{dataset_name}_train")
    assert metadata.thing_classes == ["Caries", "Tooth"]
    assert metadata.thing_colors == [LESION_COLORS[0], TOOTH_COLOR]
    assert metadata.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1}
    assert metadata.image_root == str(root / "train")
    assert metadata.roboflow_json == str(root / "train" / "_annotations.coco.json")
    assert metadata.evaluator_type == "coco"
    assert metadata.dental_root == str(root)
    # COCOEvaluator must convert our cleaned dicts, not read the raw file with its superclass.
    assert not hasattr(metadata, "json_file")
    dicts = DatasetCatalog.get(f"{dataset_name}_test")
    assert len(dicts) == 3 and dicts[0]["annotations"][0]["category_id"] == 1


def test_images_are_checked_on_load_not_on_registration(make_export, dataset_name):
    root = make_export()
    (root / "train" / "img0.jpg").unlink()
    names = register_dental_splits(root, dataset_name)
    with pytest.raises(DentalError, match=r"image id 0: .*img0\.jpg not found"):
        DatasetCatalog.get(names["train"])


def test_malformed_json_fails_at_registration(make_export, dataset_name):
    root = make_export(splits=("train", "valid"))
    (root / "valid" / "_annotations.coco.json").write_text('{"images": [')
    with pytest.raises(DentalError, match=r"valid/_annotations\.coco\.json: not valid JSON"):
        register_dental_splits(root, dataset_name)


def test_register_twice_is_harmless(make_export, dataset_name):
    root = make_export(splits=("train", "valid"))
    first = register_dental_splits(root, dataset_name)
    loader = DatasetCatalog[first["train"]]
    assert register_dental_splits(root, dataset_name) == first
    assert DatasetCatalog[first["train"]] is loader  # no-op: nothing re-registered

    other = make_export(splits=("train",), name="other")
    second = register_dental_splits(other, dataset_name)
    assert second == {"train": f"{dataset_name}_train"}
    assert MetadataCatalog.get(f"{dataset_name}_train").dental_root == str(other)
    # The split the new root lacks is gone from both catalogs.
    assert f"{dataset_name}_valid" not in DatasetCatalog.list()
    assert f"{dataset_name}_valid" not in MetadataCatalog.list()
    assert DatasetCatalog.get(f"{dataset_name}_train")[0]["file_name"].startswith(str(other))


def test_a_name_taken_by_other_code_is_not_overwritten(make_export, dataset_name):
    DatasetCatalog.register(f"{dataset_name}_train", lambda: [])
    with pytest.raises(DentalError, match=f"{dataset_name}_train is already registered"):
        register_dental_splits(make_export(), dataset_name)


def test_root_without_splits(tmp_path, dataset_name):
    (tmp_path / "images").mkdir()
    with pytest.raises(DentalError, match=r"neither a COCO export .* nor a YOLO-seg export"):
        register_dental_splits(tmp_path, dataset_name)
    with pytest.raises(DentalError, match="data root not found"):
        register_dental_splits(tmp_path / "missing", dataset_name)


def test_a_split_folder_as_root_names_its_parent(make_export, dataset_name):
    root = make_export(splits=("train", "valid"))
    with pytest.raises(DentalError) as error:
        register_dental_splits(root / "train", dataset_name)
    assert str(error.value) == (
        f"{root / 'train'}: this is one split of an export; set DENTAL.DATA_ROOT to the "
        f"export's folder, {root}, which holds the splits"
    )


def test_split_folder_without_json(make_export, dataset_name):
    root = make_export()
    (root / "valid").mkdir()
    with pytest.raises(DentalError, match=r"valid/_annotations\.coco\.json: not found"):
        register_dental_splits(root, dataset_name)


def test_splits_with_different_classes(make_export, coco, dataset_name):
    root = make_export(splits=("train",))
    coco["categories"][1]["name"] = "Calculus"
    (root / "valid").mkdir()
    (root / "valid" / "_annotations.coco.json").write_text(json.dumps(coco))
    with pytest.raises(DentalError) as info:
        register_dental_splits(root, dataset_name)
    message = str(info.value)
    assert "valid/_annotations.coco.json has classes ['Calculus', 'Tooth']" in message
    assert "train/_annotations.coco.json has ['Caries', 'Tooth']" in message


def test_register_from_config_and_num_classes(make_export, dataset_name):
    cfg = get_cfg()
    add_dental_config(cfg)
    cfg.DENTAL.DATA_ROOT = str(make_export())
    cfg.DENTAL.DATASET_NAME = dataset_name
    thing_classes = register_from_config(cfg)
    assert thing_classes == ["Caries", "Tooth"]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 4
    with pytest.raises(DentalError, match="set MODEL.ROI_HEADS.NUM_CLASSES 2$"):
        check_num_classes(cfg, thing_classes)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    check_num_classes(cfg, thing_classes)


def test_thing_colors():
    colors = thing_colors(["Caries", "Tooth", "Cavity", "teeth-upper", "Crack"])
    assert colors == [
        LESION_COLORS[0],
        TOOTH_COLOR,
        LESION_COLORS[1],
        TOOTH_COLOR,
        LESION_COLORS[2],
    ]
    assert len(set(thing_colors([f"lesion{i}" for i in range(5)]))) == 5


def test_is_tooth_class_uses_the_configured_names_else_the_name():
    # No config at hand (dataset colours): any name that mentions a tooth.
    assert is_tooth_class("molar-tooth") and is_tooth_class("Teeth")
    assert not is_tooth_class("Caries")
    # DENTAL.FINDINGS.TOOTH_CLASSES: exactly those names, in any case.
    assert is_tooth_class("tooth", ["Tooth"]) and is_tooth_class("Incisor", ["incisor", "Tooth"])
    assert not is_tooth_class("molar-tooth", ["Tooth"]) and not is_tooth_class("Tooth", [])


def test_calculus_export(calculus_root, dataset_name):
    names = register_dental_splits(calculus_root, dataset_name)
    assert set(names) == {"train", "valid", "test"}
    total = 0
    for dataset in names.values():
        metadata = MetadataCatalog.get(dataset)
        assert metadata.thing_classes == ["Calculus"]
        assert metadata.thing_dataset_id_to_contiguous_id == {1: 0}
        dicts = DatasetCatalog.get(dataset)
        total += len(dicts)
        assert all((d["height"], d["width"]) == (640, 640) for d in dicts)
        assert {a["category_id"] for d in dicts for a in d["annotations"]} == {0}
    assert total == 247


@pytest.mark.slow
def test_importing_the_package_registers_nothing():
    code = (
        "import dental_d2.data\n"
        "from detectron2.data import DatasetCatalog\n"
        "print([n for n in DatasetCatalog.list() if n.startswith('dental')])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_coco_evaluator_conversion_keeps_the_dataset_ids(make_export, dataset_name):
    # Without a json_file in the metadata, COCOEvaluator converts our dicts with this function.
    names = register_dental_splits(make_export(), dataset_name)
    coco = convert_to_coco_dict(names["train"])
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [(1, "Caries"), (2, "Tooth")]
    assert sorted(a["category_id"] for a in coco["annotations"]) == [1, 1, 2, 2]
    assert len(coco["images"]) == 3
