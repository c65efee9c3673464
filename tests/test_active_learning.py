"""Ranking for labelling: a Predictor whose model's outputs are scripted ranks images in the
order its behaviour implies, with the right reasons; the tool writes the CSV and pre-labels."""

import csv
import json
import os

import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, Instances
from PIL import Image
from pycocotools.coco import COCO
from support import CLASSES, tool_error_lines
from support import DEMO_CONFIG as CONFIG
from torch import nn

from dental_d2.active_learning import flip_back, rank_images, score_image, write_ranking
from dental_d2.predictor import Predictor

CARIES, CAVITY, CRACK, TOOTH = range(4)
TINY = [
    "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "64", "DENTAL.CLASS_NAMES", str(CLASSES),
]  # fmt: skip
SIZE = 64


@pytest.fixture
def rank_tool(load_tool):
    return load_tool("rank_for_labeling")


@pytest.fixture
def merge_tool(load_tool):
    return load_tool("merge_labels")


# Each scenario: image code -> detections (class, score, box x0, y0, x1, y1) of the plain image,
# and of the flipped image (in the flipped image's own coordinates) unless None: mirrored.
SCENARIOS = {
    40: ([(TOOTH, 0.98, 4, 4, 28, 40), (TOOTH, 0.97, 34, 4, 60, 40)], None),  # calm
    80: ([(CARIES, 0.60, 10, 10, 30, 30), (CAVITY, 0.58, 11, 10, 30, 31)], None),  # confused
    120: ([(CRACK, 0.45, 20, 20, 44, 28)], None),  # borderline
    160: ([(TOOTH, 0.95, 8, 8, 30, 50)], []),  # gone when flipped
}


def _instances(detections, height, width, mirror=False):
    boxes = torch.tensor([d[2:] for d in detections], dtype=torch.float32).reshape(-1, 4)
    if mirror:
        boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)
    masks = torch.zeros(len(detections), height, width, dtype=torch.bool)
    for k, (x0, y0, x1, y1) in enumerate(boxes.round().int().tolist()):
        masks[k, y0:y1, x0:x1] = True
    return Instances(
        (height, width),
        pred_boxes=Boxes(boxes),
        scores=torch.tensor([d[1] for d in detections], dtype=torch.float32),
        pred_classes=torch.tensor([d[0] for d in detections], dtype=torch.int64),
        pred_masks=masks,
    )


class ScriptedModel(nn.Module):
    """Returns the scenario of each image: its code is the left half's value (right half when
    the image is flipped)."""

    def forward(self, inputs):
        outputs = []
        for item in inputs:
            image, height, width = item["image"], item["height"], item["width"]
            half = image.shape[2] // 2
            left, right = float(image[:, :, :half].mean()), float(image[:, :, half:].mean())
            flipped = right > left
            plain, mirrored = SCENARIOS[round(max(left, right) * 2 / 40) * 20]
            if not flipped:
                outputs.append({"instances": _instances(plain, height, width)})
            elif mirrored is None:
                outputs.append({"instances": _instances(plain, height, width, mirror=True)})
            else:
                outputs.append({"instances": _instances(mirrored, height, width)})
        return outputs


def _image(code):
    image = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    image[:, : SIZE // 2] = code
    return image


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("unlabelled")
    paths = []
    for name, code in (("calm", 40), ("confused", 80), ("borderline", 120), ("unstable", 160)):
        path = folder / f"{name}.png"
        Image.fromarray(_image(code)).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def scripted_predictor():
    predictor = Predictor(CONFIG, opts=TINY, confidence_threshold=0.3)
    # The PyTorch backend runs its model; the scripted one stands in for it.
    predictor.backend.model = predictor.model = ScriptedModel()
    return predictor


def test_flip_back_mirrors_boxes_and_masks():
    flipped = _instances([(TOOTH, 0.9, 4, 8, 20, 30)], 40, SIZE)
    back = flip_back(flipped)
    assert back.pred_boxes.tensor.tolist() == [[SIZE - 20, 8, SIZE - 4, 30]]
    assert torch.equal(back.pred_masks, flipped.pred_masks.flip(-1))
    assert back.scores.tolist() == flipped.scores.tolist()


def test_ranking_follows_the_models_behaviour(scripted_predictor, images):
    ranked, failures = rank_images(scripted_predictor, images, threshold=0.5, band=0.2)
    assert failures == []
    order = [os.path.basename(r.path) for r in ranked]
    assert order == ["unstable.png", "confused.png", "borderline.png", "calm.png"]
    by_name = {os.path.basename(r.path): r for r in ranked}

    unstable = by_name["unstable.png"]
    assert unstable.signals["flip_disagreement"] == pytest.approx(1.0)
    assert unstable.signals["unsure_teeth"] == pytest.approx(1.0)
    assert "flipped prediction overlaps the plain one by mean IoU 0.00" in unstable.reasons[0]
    assert "1 of 1 teeth without a confident outline" in unstable.reasons

    confused = by_name["confused.png"]
    assert confused.signals["class_confusion"] == pytest.approx(0.98, abs=1e-3)
    assert confused.reasons[0] == "class confusion: Caries 0.60 vs Cavity 0.58 on one region"
    assert confused.signals["flip_disagreement"] == pytest.approx(0.0)

    borderline = by_name["borderline.png"]
    assert borderline.signals["near_threshold"] == pytest.approx(0.75, abs=1e-3)
    assert "closest: Crack 0.45" in borderline.reasons[0]
    assert set(borderline.signals.values()) - {0.0} == {borderline.signals["near_threshold"]}

    calm = by_name["calm.png"]
    assert calm.score == 0.0 and calm.reasons == ["confident and consistent"]


def test_near_threshold_is_strongest_at_the_threshold():
    def score(value):
        plain = _instances([(CRACK, value, 4, 4, 20, 20)], SIZE, SIZE)
        return score_image(plain, flip_back(flip_back(plain)), CLASSES)[1]["near_threshold"]

    assert score(0.5) == pytest.approx(1.0)
    assert score(0.4) == pytest.approx(0.5, abs=1e-3) == score(0.6)
    assert score(0.2) == score(0.9) == 0.0


def test_tooth_classes_match_class_names_in_any_case():
    # A confident tooth that the flipped image does not find has no confident outline.
    plain = _instances([(TOOTH, 0.95, 8, 8, 30, 50)], SIZE, SIZE)
    lowercase = [name.lower() for name in CLASSES]  # "tooth" against TOOTH_CLASSES ["Tooth"]
    signals = score_image(plain, _instances([], SIZE, SIZE), lowercase)[1]
    assert signals["unsure_teeth"] == 1.0


def test_prelabels_hold_the_top_images_confident_detections(scripted_predictor, images, tmp_path):
    ranked, _ = rank_images(scripted_predictor, images)
    names = {path: os.path.basename(path) for path in images}
    csv_path, coco_path = tmp_path / "rank.csv", tmp_path / "pre.coco.json"
    write_ranking(str(csv_path), str(coco_path), ranked, names, CLASSES, top=2)
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert [row["image"] for row in rows][:2] == ["unstable.png", "confused.png"]
    assert [int(row["rank"]) for row in rows] == [1, 2, 3, 4]
    assert float(rows[0]["flip_disagreement"]) == pytest.approx(1.0)
    coco = COCO(str(coco_path))
    assert [image["file_name"] for image in coco.dataset["images"]] == [
        "unstable.png",
        "confused.png",
    ]
    # unstable: its tooth; confused: Caries 0.60 and Cavity 0.58 (both above 0.5)
    categories = [coco.cats[a["category_id"]]["name"] for a in coco.dataset["annotations"]]
    assert categories == ["Tooth", "Caries", "Cavity"]
    assert all("segmentation" in a for a in coco.dataset["annotations"])


def test_tool_writes_ranking_and_prelabels(images, tmp_path, rank_tool):
    # The tool needs a weights file: the demo model's random weights.
    weights = tmp_path / "model.pth"
    torch.save({"model": Predictor(CONFIG, opts=TINY).model.state_dict()}, weights)
    output = tmp_path / "out" / "ranking.csv"
    argv = ["--config-file", CONFIG, "--input", os.path.dirname(images[0]), "--output",
            str(output), "--top", "3", *TINY, "MODEL.WEIGHTS", str(weights)]  # fmt: skip
    assert rank_tool.main(argv) == 0
    with open(output) as f:
        rows = list(csv.DictReader(f))
    assert sorted(row["image"] for row in rows) == sorted(os.path.basename(p) for p in images)
    scores = [float(row["score"]) for row in rows]
    assert scores == sorted(scores, reverse=True)
    prelabels = json.loads((tmp_path / "out" / "prelabels.coco.json").read_text())
    assert len(prelabels["images"]) == 3
    assert [c["name"] for c in prelabels["categories"]] == CLASSES


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--top", "0"], "--top 0: must be at least 1"),
        (["--band", "0.6"], "need 0 < band < threshold <= 1"),
    ],
)
def test_tool_bad_arguments_are_one_line(images, tmp_path, capsys, extra, message, rank_tool):
    argv = ["--config-file", CONFIG, "--input", images[0], "--output", str(tmp_path / "r.csv"),
            *extra, *TINY]  # fmt: skip
    assert rank_tool.main(argv) == 1
    err = tool_error_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_tool_no_images_is_one_line(tmp_path, capsys, rank_tool):
    argv = ["--config-file", CONFIG, "--input", str(tmp_path), "--output", str(tmp_path / "r.csv"),
            *TINY]  # fmt: skip
    assert rank_tool.main(argv) == 1
    err = tool_error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "no image in this folder" in err[0], err


def _corrected(folder, names, class_name="Tooth"):
    """A CVAT-style COCO export: its own category ids (1 Tooth, 2 Caries), one box per image."""
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for k, name in enumerate(names, start=1):
        Image.fromarray(_image(40 * k)[:48]).save(folder / name)
        images.append({"id": k, "file_name": name, "height": 48, "width": SIZE})
        annotations.append(
            {"id": k, "image_id": k, "category_id": 1 if class_name == "Tooth" else 3,
             "bbox": [4, 4, 20, 20], "area": 400.0, "iscrowd": 0,
             "segmentation": [[4, 4, 24, 4, 24, 24, 4, 24]]}
        )  # fmt: skip
    categories = [{"id": 1, "name": "Tooth"}, {"id": 2, "name": "Caries"}, {"id": 3, "name": "X"}]
    path = folder / "instances_default.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return path


def test_merge_adds_corrected_images_with_classes_matched_by_name(
    make_export, tmp_path, merge_tool
):
    from dental_d2.data import load_roboflow_json

    export = make_export(splits=("train",))
    corrected = _corrected(tmp_path / "cvat", ["new_a.png", "new_b.png"])
    assert merge_tool.main(["--coco", str(corrected), "--images", str(tmp_path / "cvat"),
                            "--into", str(export / "train")]) == 0  # fmt: skip
    records = load_roboflow_json(export / "train" / "_annotations.coco.json")
    assert len(records) == 5
    added = [r for r in records if os.path.basename(r["file_name"]).startswith("new_")]
    assert [os.path.basename(r["file_name"]) for r in added] == ["new_a.png", "new_b.png"]
    # "Tooth" is contiguous id 1 in the export (Caries 0, Tooth 1), though id 1 in CVAT's file
    assert [[a["category_id"] for a in r["annotations"]] for r in added] == [[1], [1]]
    assert len({r["image_id"] for r in records}) == 5


def test_merge_refuses_unknown_classes_and_images_it_has(make_export, tmp_path, capsys, merge_tool):
    export = make_export(splits=("train",))
    split_json = export / "train" / "_annotations.coco.json"
    before = split_json.read_text()
    unknown = _corrected(tmp_path / "a", ["new.png"], class_name="X")
    argv = [
        "--coco",
        str(unknown),
        "--images",
        str(tmp_path / "a"),
        "--into",
        str(export / "train"),
    ]
    assert merge_tool.main(argv) == 1
    err = tool_error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "class 'X', which the export does not have" in err[0], err
    # a record training's loader refuses is refused with its line
    orphan = _corrected(tmp_path / "c", ["new.png"])
    data = json.loads(orphan.read_text())
    data["annotations"][0]["image_id"] = 5
    orphan.write_text(json.dumps(data))
    argv = ["--coco", str(orphan), "--images", str(tmp_path / "c"), "--into", str(export / "train")]
    assert merge_tool.main(argv) == 1
    err = tool_error_lines(capsys.readouterr().err)
    assert err == [
        f"error: {orphan}: annotation id 1 points at image id 5, which is not in 'images'; "
        "delete the annotation or re-export"
    ], err
    again = _corrected(tmp_path / "b", ["img0.jpg"])
    argv = ["--coco", str(again), "--images", str(tmp_path / "b"), "--into", str(export / "train")]
    assert merge_tool.main(argv) == 1
    assert "img0.jpg is already in" in capsys.readouterr().err
    assert split_json.read_text() == before
