"""Overlays, predictions.coco.json and findings.json, GT-vs-prediction renders, and the tool."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data.catalog import Metadata
from detectron2.structures import Boxes, Instances
from PIL import Image
from pycocotools.coco import COCO
from support import CLASSES, RANDOM_DEMO_MODEL
from support import DEMO_CONFIG as CONFIG

from dental_d2 import DentalError
from dental_d2.coco_format import coco_dataset, instances_to_coco_annotations, masks_to_rles
from dental_d2.config import build_config
from dental_d2.data.categories import thing_colors
from dental_d2.data.image_files import collect_images, overlay_names
from dental_d2.drawing import class_colors, drawn_scale, label_chips, relative_luminance
from dental_d2.evaluation import report_images
from dental_d2.inference import FINDINGS_FILE, PREDICTIONS_FILE, predict_images
from dental_d2.predictor import Predictor
from dental_d2.visualize import build_metadata, draw_instances, render_saved_predictions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    *RANDOM_DEMO_MODEL,
    "TEST.DETECTIONS_PER_IMAGE", "5",
    "DENTAL.CLASS_NAMES", str(CLASSES),
]  # fmt: skip


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    return Predictor(CONFIG, opts=[*TINY, "TEST.IMS_PER_BATCH", "2"], confidence_threshold=0.0)


@pytest.fixture(scope="module")
def weights(predictor, tmp_path_factory):
    """The random model as a weights file: the tool refuses to run without one."""
    path = tmp_path_factory.mktemp("weights") / "model.pth"
    torch.save({"model": predictor.model.state_dict()}, path)
    return str(path)


def noise(height, width, channels=3, seed=0):
    shape = (height, width, channels) if channels else (height, width)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def write_image_kinds(folder):
    """Writes a grayscale, a 16-bit, an RGBA PNG and a JPEG rotated by EXIF; returns the sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(noise(48, 64, 0), "L").save(folder / "gray.png")
    deep = (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 20).astype(np.uint16)
    Image.fromarray(deep).save(folder / "deep16.png")
    assert Image.open(folder / "deep16.png").mode.startswith("I")
    Image.fromarray(noise(48, 64, 4), "RGBA").save(folder / "alpha.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display: 64x48 stored, 48x64 shown
    Image.fromarray(noise(48, 64)).save(folder / "rotated.jpg", exif=exif.tobytes())
    return {
        "gray.png": (48, 64),
        "deep16.png": (48, 64),
        "alpha.png": (48, 64),
        "rotated.jpg": (64, 48),
    }


def hand_built_instances(size=(64, 96)):
    instances = Instances(size)
    masks = torch.zeros((2, *size), dtype=torch.bool)
    masks[0, :, 10:40] = True  # a tooth
    masks[1, 20:30, 15:25] = True  # a caries on it
    instances.pred_masks = masks
    instances.pred_boxes = Boxes(torch.tensor([[10.0, 0.0, 40.0, 64.0], [15.0, 20.0, 25.0, 30.0]]))
    instances.pred_classes = torch.tensor([3, 0])
    instances.scores = torch.tensor([0.98, 0.91])
    return instances


def test_draw_instances_uses_class_colours_and_summary():
    image = np.full((64, 96, 3), 60, dtype=np.uint8)
    metadata = build_metadata(CLASSES)
    overlay = draw_instances(image, hand_built_instances(), metadata, summary="1 tooth; caries")
    # A small photo is drawn enlarged, by a whole factor.
    k = drawn_scale(64, 96)
    assert k > 1 and overlay.shape[1:] == (96 * k, 3) and overlay.dtype == np.uint8
    # The summary is on a band above the image: black with white text.
    band, drawn = overlay[: overlay.shape[0] - 64 * k], overlay[-64 * k :]
    assert len(band) >= 10 and band.min() < 30 and band.max() > 200
    # The caries is filled with its class colour (Okabe-Ito orange: red > blue) over the
    # tooth's blue.
    red, _, blue = drawn[25 * k, 20 * k].astype(int)
    tooth_red, _, tooth_blue = drawn[50 * k, 30 * k].astype(int)
    assert red - blue > tooth_red - tooth_blue + 60 and tooth_blue > tooth_red + 30
    # No mask at the right edge: the image shows through unchanged.
    np.testing.assert_array_equal(drawn[60 * k, 90 * k], [60, 60, 60])
    no_summary = draw_instances(image, hand_built_instances(), metadata)
    assert no_summary.shape == (64 * k, 96 * k, 3)


def test_overlays_and_report_images_take_one_colour_rule():
    expected = [tuple(v / 255 for v in color) for color in thing_colors(CLASSES)]
    # Without metadata colours (or with too few), the colours datasets are registered with.
    assert class_colors(CLASSES) == expected
    assert class_colors(CLASSES, [(255, 0, 0)]) == expected
    assert class_colors(CLASSES, [(255, 0, 0)] * 4) == [(1.0, 0.0, 0.0)] * 4
    image = np.full((64, 96, 3), 60, dtype=np.uint8)
    bare = Metadata(name="bare_dental_classes", thing_classes=CLASSES)
    np.testing.assert_array_equal(
        draw_instances(image, hand_built_instances(), bare),
        draw_instances(image, hand_built_instances(), build_metadata(CLASSES)),
    )
    # The report keys them by dataset category id.
    metrics = SimpleNamespace(class_names=CLASSES, category_ids=[2, 3, 5, 7])
    assert report_images._class_colors(metrics) == dict(zip([2, 3, 5, 7], expected))


def _contrast(rgb_a, rgb_b) -> float:
    """WCAG contrast ratio of two RGB 0-255 colours."""
    lighter, darker = sorted(
        (relative_luminance(np.asarray(c) / 255.0) for c in (rgb_a, rgb_b)), reverse=True
    )
    return (lighter + 0.05) / (darker + 0.05)


def test_tooth_outline_contrasts_with_white_enamel():
    enamel = (245, 243, 238)
    image = np.full((96, 160, 3), enamel, dtype=np.uint8)
    instances = Instances((96, 160))
    masks = torch.zeros((1, 96, 160), dtype=torch.bool)
    masks[0, 20:76, 40:100] = True
    instances.pred_masks = masks
    instances.pred_boxes = Boxes(torch.tensor([[40.0, 20.0, 100.0, 76.0]]))
    instances.pred_classes = torch.tensor([CLASSES.index("Tooth")])
    instances.scores = torch.tensor([0.97])
    overlay = draw_instances(image, instances, build_metadata(CLASSES), scale=1)
    # The outline across the mask's left edge: WCAG's 3:1 for graphics against the enamel.
    across_edge = overlay[48, 36:45]
    assert max(_contrast(pixel, enamel) for pixel in across_edge) >= 3.0, across_edge
    # Inside, the fill tints the enamel and leaves it visible.
    inside = overlay[60, 70].astype(int)
    assert inside.mean() > 120 and abs(inside - enamel).max() > 20, inside


def test_labels_keep_clear_of_each_other_and_of_the_image_edge():
    height, width = 160, 200
    # Four narrow teeth side by side, the last at the right edge, and a small lesion on it:
    # each label is wider than its tooth.
    boxes = [[72.0 + 32 * k, 50.0, 102.0 + 32 * k, 110.0] for k in range(4)] + [[188, 70, 198, 80]]
    labels = [f"Tooth T{k + 1} 9{k}%" for k in range(4)] + ["Cavity missed"]
    chips = label_chips(labels, np.array(boxes), (height, width))
    for label, (x0, y0, x1, y1) in zip(labels, chips):
        assert x1 - x0 > 30 and y1 - y0 > 8, (label, x0, y0, x1, y1)  # a chip, not a speck
        # inside the picture, nothing cut off at an edge
        assert x0 >= 0 and x1 <= width and y0 >= 0 and y1 <= height, (label, x0, y0, x1, y1)
    for i, a in enumerate(chips):
        for b in chips[i + 1 :]:
            overlap_x = min(a[2], b[2]) - max(a[0], b[0])
            overlap_y = min(a[3], b[3]) - max(a[1], b[1])
            assert overlap_x <= 0 or overlap_y <= 0, (a, b)


def test_coco_annotations_round_trip_through_pycocotools(tmp_path):
    instances = hand_built_instances()
    annotations = instances_to_coco_annotations(instances, image_id=7, first_id=3)
    assert [a["id"] for a in annotations] == [3, 4]
    assert annotations[1]["category_id"] == 1 and annotations[0]["category_id"] == 4
    assert annotations[1]["bbox"] == [15.0, 20.0, 10.0, 10.0]
    assert isinstance(annotations[0]["segmentation"]["counts"], str)
    images = [{"id": 7, "file_name": "a.png", "height": 64, "width": 96}]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(coco_dataset(images, annotations, CLASSES)))
    coco = COCO(str(path))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == CLASSES
    mask = coco.annToMask(coco.loadAnns([4])[0])
    np.testing.assert_array_equal(mask.astype(bool), instances.pred_masks[1].numpy())
    assert coco.loadAnns([4])[0]["area"] == 100


def test_coco_annotations_take_masks_already_encoded():
    instances = hand_built_instances()
    rles = masks_to_rles(instances.pred_masks)
    assert [mask_util.area(rle) for rle in rles] == [64 * 30, 100]
    boxes_only = Instances(instances.image_size, **instances.get_fields())
    boxes_only.remove("pred_masks")
    encoded = instances_to_coco_annotations(boxes_only, image_id=7, first_id=3, rles=rles)
    assert encoded == instances_to_coco_annotations(instances, image_id=7, first_id=3)
    assert masks_to_rles(np.zeros((0, 4, 4), dtype=bool)) == []


def test_collect_images_from_files_dirs_and_globs(tmp_path):
    for name in ("b.png", "a.JPG", "notes.txt", "c.tiff"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.bmp").write_bytes(b"x")
    paths, problems = collect_images([str(tmp_path), str(tmp_path / "sub" / "*.bmp")])
    assert [os.path.basename(p) for p in paths] == ["a.JPG", "b.png", "c.tiff", "d.bmp"]
    assert problems == []
    gone = str(tmp_path / "gone.png")
    paths, problems = collect_images([str(tmp_path / "b.png"), gone])
    assert len(paths) == 1
    # the same words whether or not a real photo was given beside the missing one
    missing = f"{gone}: no such file; pass an existing image file, a folder or a glob pattern"
    assert problems == [missing]
    with pytest.raises(DentalError) as alone:
        collect_images([gone])
    assert str(alone.value) == missing
    with pytest.raises(DentalError, match=r"\*\.gif: matched no image file \(extensions"):
        collect_images([str(tmp_path / "*.gif")])


def test_overlay_names_do_not_collide():
    names = overlay_names(["x/a.png", "y/a.png", "x/b.png", "x/c.png", "x/c.jpg"])
    assert names == ["x__a.jpg", "y__a.jpg", "b.jpg", "c_png.jpg", "c_jpg.jpg"]
    assert overlay_names(["/data/one/p.png"]) == ["p.jpg"]


def test_predict_images_writes_overlays_coco_and_findings(predictor, tmp_path):
    sizes = write_image_kinds(tmp_path / "in")
    images, _ = collect_images([str(tmp_path / "in")])
    failures = predict_images(predictor, images, str(tmp_path / "out"))
    assert failures == []
    for name, (height, width) in sizes.items():
        overlay = cv2.imread(str(tmp_path / "out" / (os.path.splitext(name)[0] + ".jpg")))
        k = drawn_scale(height, width)  # small photos are drawn enlarged
        assert overlay.shape[1:] == (width * k, 3), name
        assert overlay.shape[0] > height * k, name  # the summary band above the image
    coco = COCO(str(tmp_path / "out" / PREDICTIONS_FILE))
    entries = {img["file_name"]: (img["height"], img["width"]) for img in coco.dataset["images"]}
    assert entries == sizes
    assert len(coco.getAnnIds()) > 0
    for annotation in coco.dataset["annotations"]:
        assert set(annotation) >= {"id", "image_id", "category_id", "bbox", "area", "score"}
        assert annotation["iscrowd"] == 0 and 1 <= annotation["category_id"] <= 4
    findings = json.loads((tmp_path / "out" / FINDINGS_FILE).read_text())
    assert findings["min_overlap"] == 0.1 and findings["tooth_classes"] == ["Tooth"]
    assert sorted(f["file"] for f in findings["images"]) == sorted(sizes)
    counted = sum(
        len(img["teeth"]) + len(img["unassigned"]) + sum(len(t["lesions"]) for t in img["teeth"])
        for img in findings["images"]
    )
    assert counted == len(coco.getAnnIds())


def test_tool_says_at_what_score_nothing_was_found(weights, load_tool, tmp_path):
    Image.fromarray(noise(48, 64)).save(tmp_path / "photo.jpg")
    visualize = load_tool("visualize")
    # Every class a tooth: whatever the random model finds, no lesion is among it.
    argv = [
        "--config-file", CONFIG, "--input", str(tmp_path / "photo.jpg"), *TINY,
        "MODEL.WEIGHTS", weights, "DENTAL.FINDINGS.TOOTH_CLASSES", str(CLASSES),
    ]  # fmt: skip
    summaries = {}
    for threshold in ("0.0", "0.999"):
        output = tmp_path / threshold
        assert (
            visualize.main([*argv, "--confidence-threshold", threshold, "--output", str(output)])
            == 0
        )
        findings = json.loads((output / FINDINGS_FILE).read_text())
        assert findings["score_threshold"] == float(threshold)
        summaries[threshold] = findings["images"][0]["summary"]
    assert summaries["0.0"].endswith(" teeth; no lesion found at score >= 0"), summaries
    assert summaries["0.999"] == "no tooth or lesion found at score >= 0.999", summaries


def test_render_saved_predictions_side_by_side(make_export, tmp_path):
    # conftest's tiny export: dataset ids 1 Caries and 2 Tooth, a tooth at x 4..40 in img0.
    root = make_export(splits=("test",))
    mask = np.zeros((48, 64), dtype=np.uint8)
    mask[5:40, 44:60] = 1
    rle = mask_util.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode("ascii")
    results = [
        {"image_id": 0, "category_id": 2, "bbox": [44, 5, 16, 35], "score": 0.9,
         "segmentation": rle},
        {"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.2},
    ]  # fmt: skip
    predictions = tmp_path / "coco_instances_results.json"
    predictions.write_text(json.dumps(results))
    cfg = build_config(None, ["DENTAL.DATA_ROOT", str(root), "DENTAL.DATASET_NAME", "vis_t"])
    failures = render_saved_predictions(cfg, str(predictions), "vis_t_test", str(tmp_path / "out"))
    assert failures == []
    assert sorted(os.listdir(tmp_path / "out")) == ["img0.jpg", "img1.jpg", "img2.jpg"]
    k = drawn_scale(48, 64)  # small photos are drawn enlarged
    left_right = cv2.imread(str(tmp_path / "out" / "img0.jpg"))[-48 * k :, :, ::-1].astype(int)
    assert left_right.shape == (48 * k, 64 * k + 4 + 64 * k, 3)
    left, right = left_right[:, : 64 * k], left_right[:, 64 * k + 4 :]

    # The predicted tooth (blue) is on the right panel only, the true one on the left only.
    def blueness(pixel):
        return pixel[2] - pixel[0]

    assert blueness(right[30 * k, 52 * k]) > blueness(left[30 * k, 52 * k]) + 20
    assert blueness(left[30 * k, 30 * k]) > blueness(right[30 * k, 30 * k]) + 20

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{**results[0], "category_id": 3}]))
    with pytest.raises(DentalError, match=r"category ids \[3\]"):
        render_saved_predictions(cfg, str(bad), "vis_t_test", str(tmp_path / "out"))
    with pytest.raises(DentalError, match="vis_t_nope"):
        render_saved_predictions(cfg, str(predictions), "vis_t_nope", str(tmp_path / "out"))


def run_tool(*args):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "visualize.py"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


@pytest.mark.slow
def test_tool_skips_a_corrupt_image_and_exits_1(weights, tmp_path):
    folder = tmp_path / "in"
    write_image_kinds(folder)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = tmp_path / "out"
    result = run_tool(
        "--config-file", CONFIG, "--input", str(folder), "--output", str(out),
        "--confidence-threshold", "0.0", *TINY, "MODEL.WEIGHTS", weights,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    naming = [line for line in result.stderr.splitlines() if "broken.png" in line]
    assert len(naming) == 1 and naming[0].startswith("error: ")
    written = sorted(os.listdir(out))
    assert written == sorted(
        ["alpha.jpg", "deep16.jpg", "gray.jpg", "rotated.jpg", PREDICTIONS_FILE, FINDINGS_FILE]
    )
    coco = COCO(str(out / PREDICTIONS_FILE))
    assert len(coco.dataset["images"]) == 4


def test_tool_reports_no_images_in_one_line(weights, load_tool, tmp_path, capsys):
    argv = [
        "--config-file", CONFIG, "--input", str(tmp_path / "*.png"),
        "--output", str(tmp_path / "out"), *TINY, "MODEL.WEIGHTS", weights,
    ]  # fmt: skip
    assert load_tool("visualize").main(argv) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "*.png: matched no image file" in errors[0]
    assert "Traceback" not in err
