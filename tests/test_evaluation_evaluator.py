"""DentalEvaluator end to end on a tiny registered dataset, checked against pycocotools."""

import contextlib
import io
import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import convert_to_coco_dict
from detectron2.structures import Boxes, BoxMode, Instances
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from support import assert_confusion_matrix_plot, assert_pr_curves_plot

from dental_d2 import add_dental_config
from dental_d2.evaluation import DentalEvaluator

SIZE = 64
CLASSES = ["Caries", "Tooth"]
# Roboflow-like ids: 0 was the dropped superclass.
ID_MAP = {1: 0, 2: 1}

# Per image: ground truth and predictions as (contiguous class, [x0, y0, x1, y1], score).
GROUND_TRUTH = {
    1: [(0, [4, 4, 20, 20]), (1, [30, 30, 60, 60])],
    2: [(0, [10, 10, 30, 30])],
    3: [(1, [5, 5, 40, 40])],
}
PREDICTIONS = {
    1: [(0, [4, 4, 20, 20], 0.95), (1, [31, 30, 60, 60], 0.9)],  # both found
    2: [(1, [40, 40, 60, 60], 0.8), (0, [10, 10, 30, 30], 0.3)],  # Tooth FP; Caries too low
    3: [(0, [5, 5, 40, 40], 0.7)],  # wrong class: Caries FP, Tooth FN
}
# Caries: TP 1, FP 1, FN 1; Tooth: TP 1, FP 1, FN 1.


def _mask(box):
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = True
    return mask


@pytest.fixture
def dataset(tmp_path):
    name = f"dental_eval_test_{tmp_path.name}"
    records = []
    for image_id, objects in GROUND_TRUTH.items():
        file_name = str(tmp_path / f"{image_id}.png")
        Image.fromarray(np.full((SIZE, SIZE, 3), 40 * image_id, dtype=np.uint8)).save(file_name)
        annotations = []
        for category, (x0, y0, x1, y1) in objects:
            annotations.append(
                {
                    "bbox": [x0, y0, x1, y1],
                    "bbox_mode": BoxMode.XYXY_ABS,
                    "category_id": category,
                    "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
                    "iscrowd": 0,
                }
            )
        records.append(
            {
                "file_name": file_name,
                "image_id": image_id,
                "height": SIZE,
                "width": SIZE,
                "annotations": annotations,
            }
        )
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(
        thing_classes=CLASSES,
        thing_dataset_id_to_contiguous_id=ID_MAP,
        thing_colors=[(220, 40, 40), (40, 160, 220)],
    )
    yield name, records
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _run(evaluator, records):
    evaluator.reset()
    for record in records:
        objects = PREDICTIONS[record["image_id"]]
        instances = Instances((SIZE, SIZE))
        instances.pred_boxes = Boxes(
            torch.tensor([box for _, box, _ in objects], dtype=torch.float32)
        )
        instances.scores = torch.tensor([score for _, _, score in objects])
        instances.pred_classes = torch.tensor([category for category, _, _ in objects])
        instances.pred_masks = torch.from_numpy(np.stack([_mask(box) for _, box, _ in objects]))
        inputs = [{k: record[k] for k in ("file_name", "image_id", "height", "width")}]
        evaluator.process(inputs, [{"instances": instances}])
    return evaluator.evaluate()


def _direct_cocoeval(dataset_name, iou_type):
    """AP computed straight with pycocotools from our own encoding of the predictions."""
    coco_gt = COCO()
    coco_gt.dataset = convert_to_coco_dict(dataset_name)
    reverse = {v: k for k, v in ID_MAP.items()}
    results = []
    for image_id, objects in PREDICTIONS.items():
        for category, (x0, y0, x1, y1), score in objects:
            result = {"image_id": image_id, "category_id": reverse[category], "score": score}
            if iou_type == "segm":
                rle = mask_util.encode(np.asfortranarray(_mask([x0, y0, x1, y1]).astype(np.uint8)))
                result["segmentation"] = rle
            else:
                result["bbox"] = [x0, y0, x1 - x0, y1 - y0]
            results.append(result)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(results), iou_type)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval


def test_dental_evaluator_end_to_end(dataset, tmp_path):
    name, records = dataset
    output_dir = str(tmp_path / "eval")
    evaluator = DentalEvaluator(name, output_dir=output_dir, score_threshold=0.5, iou_threshold=0.5)
    results = _run(evaluator, records)

    assert set(results) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        flat = results[task]
        coco_eval = _direct_cocoeval(name, task)
        assert flat["AP"] == pytest.approx(coco_eval.stats[0] * 100)
        assert flat["AP50"] == pytest.approx(coco_eval.stats[1] * 100)
        for name_ in CLASSES:
            assert flat[f"precision-{name_}"] == pytest.approx(0.5)
            assert flat[f"recall-{name_}"] == pytest.approx(0.5)
            assert flat[f"f1-{name_}"] == pytest.approx(0.5)
        assert (flat["precision"], flat["recall"], flat["f1"]) == pytest.approx((0.5, 0.5, 0.5))
        assert "AP-Caries" in flat and all(isinstance(v, float) for v in flat.values())

    with open(os.path.join(output_dir, "metrics.json")) as f:
        metrics = json.load(f)
    assert set(metrics) == {"bbox", "segm"}
    for task, entry in metrics.items():
        assert {"coco", "per_class", "pooled", "score_threshold", "iou_threshold"} <= set(entry)
        assert entry["score_threshold"] == 0.5 and entry["iou_threshold"] == 0.5
        assert {"AP", "AP50", "AP75"} <= set(entry["coco"])
        assert set(entry["per_class"]) == set(CLASSES)
        coco_eval = _direct_cocoeval(name, task)
        for k, class_name in enumerate(CLASSES):
            values = entry["per_class"][class_name]
            assert {"tp", "fp", "fn", "precision", "recall", "f1", "AP", "AP50"} <= set(values)
            assert "best_f1_threshold" in values
            assert (values["tp"], values["fp"], values["fn"]) == (1, 1, 1)
            precision = coco_eval.eval["precision"]
            ap50 = precision[0, :, k, 0, -1]
            assert values["AP50"] == pytest.approx(float(np.mean(ap50[ap50 > -1]) * 100))
            assert values["AP"] == pytest.approx(results[task][f"AP-{class_name}"])
        assert entry["pooled"] == {
            "tp": 2,
            "fp": 2,
            "fn": 2,
            "precision": 0.5,
            "recall": 0.5,
            "f1": 0.5,
        }
        # Caries: lowering the threshold to 0.3 finds the 0.3 prediction: P 2/3, R 1 -> F1 0.8.
        assert entry["per_class"]["Caries"]["best_f1_threshold"] == pytest.approx(0.3)
        # Rows = ground truth, columns = prediction; the Tooth predicted as Caries is off-diagonal.
        assert entry["confusion_matrix"]["counts"] == [[1, 0, 1], [1, 1, 0], [0, 1, 0]]

    assert_pr_curves_plot(os.path.join(output_dir, "bbox_pr_curves.png"), len(CLASSES))
    segm_counts = metrics["segm"]["confusion_matrix"]["counts"]
    assert_confusion_matrix_plot(os.path.join(output_dir, "segm_confusion_matrix.png"), segm_counts)
    assert os.path.getsize(os.path.join(output_dir, "report.html")) > 1000
    with open(os.path.join(output_dir, "report.html"), encoding="utf-8") as f:
        page = f.read()
    sources = page.split('src="')[1:]
    assert len(sources) >= 4 + 2 * 3  # plots of two tasks, three images drawn twice
    assert all(s.startswith("data:image/") for s in sources)  # self-contained
    assert "Caries" in page and "Best" in page and "Worst" in page


def test_dental_evaluator_counts_on_detectron2s_coco_eval(
    dataset, tmp_path, count_cross_class_ious
):
    """P/R/F1 take the IoUs of the COCOeval behind COCOEvaluator's AP; only the cross-class
    pass computes IoUs of its own."""
    name, records = dataset
    cross_class_rows = count_cross_class_ious()
    evaluator = DentalEvaluator(name, output_dir=str(tmp_path / "eval"), draw_images=False)
    results = _run(evaluator, records)
    for task in ("bbox", "segm"):
        assert (results[task]["precision"], results[task]["recall"]) == (0.5, 0.5)
    # Per task: the Tooth false alarm of image 2 and the Caries on a Tooth of image 3.
    assert cross_class_rows == [1, 1, 1, 1]


def test_dental_evaluator_from_config_and_no_predictions(dataset, tmp_path):
    name, records = dataset
    cfg = get_cfg()
    add_dental_config(cfg)
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    cfg.MODEL.MASK_ON = True
    cfg.DENTAL.EVAL.SCORE_THRESHOLD = 0.25
    # detectron2's meaning of from_config: the constructor's arguments, used by @configurable.
    kwargs = DentalEvaluator.from_config(cfg, name)
    assert kwargs["score_threshold"] == 0.25 and kwargs["tasks"] == ("bbox", "segm")
    evaluator = DentalEvaluator(cfg, name)
    assert evaluator._output_dir == os.path.join(cfg.OUTPUT_DIR, "eval", name)
    assert evaluator._score_threshold == 0.25

    evaluator.reset()
    for record in records:
        inputs = [{k: record[k] for k in ("file_name", "image_id", "height", "width")}]
        evaluator.process(inputs, [{"instances": Instances((SIZE, SIZE), **_empty_fields())}])
    results = evaluator.evaluate()
    assert results["segm"]["recall"] == 0.0
    assert np.isnan(results["segm"]["AP"])
    with open(os.path.join(evaluator._output_dir, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["segm"]["per_class"]["Tooth"]["fn"] == 2
    assert metrics["segm"]["coco"]["AP"] is None  # NaN written as null


def _empty_fields():
    return {
        "pred_boxes": Boxes(torch.zeros((0, 4))),
        "scores": torch.zeros(0),
        "pred_classes": torch.zeros(0, dtype=torch.int64),
        "pred_masks": torch.zeros((0, SIZE, SIZE), dtype=torch.bool),
    }
