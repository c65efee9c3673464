"""int8 export (tools/export_model.py --int8): ONNX Runtime's static quantization of a briefly
trained demo model, whose detections must overlap the float export's, run by Predictor,
tools/visualize.py and the service like any export."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.structures import pairwise_iou
from support import CLASSES, NO_EVAL, TRAIN_NET
from support import INSTANT_CONFIG as CONFIG

from dental_d2 import DentalError
from dental_d2.config import build_config
from dental_d2.data.synthetic import generate_synthetic_dataset
from dental_d2.export import METADATA_FILE, export_model
from dental_d2.export.quantize import FLOAT_MODULES, calibration_photos, export_int8, float_nodes
from dental_d2.predictor import Predictor
from dental_d2.runtime import Backend

pytestmark = pytest.mark.usefixtures("restore_loggers")
ROOT = Path(__file__).resolve().parents[1]
# Detections compared from this score (the one a clinic predicts at): 4 to 7 per photo.
SCORE = 0.5
CALIBRATION_COUNT = 6


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_dataset(str(root), num_train=12, num_valid=0, num_test=4, size=128, seed=3)
    return root


@pytest.fixture(scope="module")
def trained(synthetic, tmp_path_factory):
    """The demo model at 128 px after 60 iterations on the synthetic photos: it finds teeth."""
    output = tmp_path_factory.mktemp("train")
    result = subprocess.run(
        [sys.executable, TRAIN_NET, "--config-file", CONFIG,
         "DENTAL.DATA_ROOT", str(synthetic), "OUTPUT_DIR", str(output), "SOLVER.MAX_ITER", "60",
         "SOLVER.CHECKPOINT_PERIOD", "1000", *NO_EVAL],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return str(output / "model_final.pth")


def _config(weights: str):
    return build_config(
        CONFIG, ["MODEL.WEIGHTS", weights, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", str(SCORE)]
    )


@pytest.fixture(scope="module")
def exports(trained, synthetic, tmp_path_factory):
    """The float and the int8 export of the trained model."""
    folder = tmp_path_factory.mktemp("exports")
    cfg = _config(trained)
    float_path = export_model(cfg, str(folder / "float"))
    int8_path = export_int8(
        cfg, str(folder / "int8"), str(synthetic / "train"), Backend(cfg).model_input,
        count=CALIBRATION_COUNT,
    )  # fmt: skip
    return float_path, int8_path


def _mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum() / (a | b).sum().clamp(min=1))


@pytest.mark.slow
def test_int8_detections_overlap_the_float_models(exports, synthetic):
    import onnx

    float_path, int8_path = exports
    int8_graph = onnx.load(int8_path)
    operators = {node.op_type for node in int8_graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= operators
    assert os.path.getsize(int8_path) < 0.5 * os.path.getsize(float_path)
    float_model = Predictor(None, weights=float_path, confidence_threshold=SCORE)
    int8_model = Predictor(None, weights=int8_path, confidence_threshold=SCORE)
    assert int8_model.backend.name == "onnxruntime" and int8_model.model is None
    photos = sorted(str(p) for p in (synthetic / "test").glob("*.jpg"))
    matched, total, mask_ious = 0, 0, []
    pairs = zip(float_model.predict_batch(photos), int8_model.predict_batch(photos))
    for expected, actual in pairs:
        total += len(expected)
        if not len(expected) or not len(actual):
            continue
        ious = pairwise_iou(expected.pred_boxes, actual.pred_boxes)
        same_class = expected.pred_classes[:, None] == actual.pred_classes[None, :]
        best_iou, best = (ious * same_class).max(dim=1)
        for k in torch.nonzero(best_iou > 0.5).flatten().tolist():
            matched += 1
            mask_ious.append(_mask_iou(expected.pred_masks[k], actual.pred_masks[best[k]]))
    # A model that learned: detections on every photo, to compare.
    assert total >= 2 * len(photos), total
    assert matched >= 0.8 * total, (matched, total)
    assert np.median(mask_ious) > 0.8 and min(mask_ious) > 0.5, mask_ious


@pytest.mark.slow
def test_int8_metadata_names_the_calibration_photos(exports, synthetic):
    float_path, int8_path = exports
    with open(os.path.join(os.path.dirname(int8_path), METADATA_FILE)) as f:
        metadata = json.load(f)
    with open(os.path.join(os.path.dirname(float_path), METADATA_FILE)) as f:
        float_metadata = json.load(f)
    assert metadata["precision"] == "int8" and "precision" not in float_metadata
    assert metadata["class_names"] == float_metadata["class_names"] == CLASSES
    quantization = metadata["quantization"]
    assert quantization["format"] == "QDQ" and quantization["float_modules"] == list(FLOAT_MODULES)
    assert quantization["float_nodes"]
    calibration = quantization["calibration"]
    expected = calibration_photos(str(synthetic / "train"), CALIBRATION_COUNT)
    assert calibration["folder"] == str(synthetic / "train")
    assert calibration["count"] == CALIBRATION_COUNT == len(calibration["images"])
    assert calibration["sha256"] == expected.sha256
    assert calibration["images"] == [os.path.basename(p) for p in expected.paths]


@pytest.mark.slow
def test_visualize_and_the_service_run_the_int8_export(exports, synthetic, tmp_path, load_tool):
    """tools/visualize.py predicts with the int8 model without a config, and the service serves
    it: its answer for a photo is what tools/visualize.py wrote for it."""
    from fastapi.testclient import TestClient

    from dental_d2.serving import create_app
    from dental_d2.serving.server import ServeSettings, build_service

    int8_path = exports[1]
    photo = sorted((synthetic / "test").glob("*.jpg"))[0]
    output = tmp_path / "vis"
    code = load_tool("visualize").main(
        ["--input", str(photo), "--output", str(output), "--confidence-threshold", str(SCORE),
         "MODEL.WEIGHTS", int8_path]
    )  # fmt: skip
    assert code == 0 and (output / "predictions.coco.json").is_file()
    expected = json.loads((output / "predictions.coco.json").read_text())["annotations"]
    assert expected  # a trained model finds something to compare
    settings = ServeSettings(
        config_file=None, opts=("MODEL.WEIGHTS", int8_path), min_score=SCORE,
        confidence_threshold=SCORE, device="cpu",
    )  # fmt: skip
    with TestClient(create_app(build_service(settings))) as client:
        assert client.get("/model").json()["weights"] == int8_path
        response = client.post(
            "/predict", files={"file": ("photo.jpg", photo.read_bytes(), "image/jpeg")}
        )
    assert response.status_code == 200
    answer = response.json()["instances"]
    assert [{k: v for k, v in a.items() if k != "class"} for a in answer] == expected


@pytest.mark.parametrize("make", ["missing", "empty", "no photos"])
def test_int8_export_names_a_calibration_folder_without_photos(make, tmp_path, capsys, load_tool):
    folder = tmp_path / "calibration"
    if make != "missing":
        folder.mkdir()
    if make == "no photos":
        (folder / "notes.txt").write_text("not a photo")
    code = load_tool("export_model").main(
        ["--config-file", CONFIG, "--output", str(tmp_path / "out"), "--int8",
         "--calibration", str(folder), "MODEL.WEIGHTS", ""]
    )  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --calibration ") and str(folder) in err and "\n" not in err
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_float_nodes_must_name_a_module_of_the_graph():
    import onnx

    node = onnx.helper.make_node("Conv", ["x", "w"], ["y"], name="/backbone/stem/Conv")
    graph = onnx.helper.make_graph([node], "g", [], [])
    model = onnx.helper.make_model(graph)
    assert float_nodes(model, ["backbone"]) == ["/backbone/stem/Conv"]
    with pytest.raises(DentalError, match="roi_heads.box_predictr has no"):
        float_nodes(model, ["roi_heads.box_predictr"])


@pytest.mark.parametrize(
    "int8_segm, broken",
    [
        ({"all": 79.0, "Tooth": 89.0, "Caries": 8.0, "Crack": 0.0}, []),
        ({"all": 78.9, "Tooth": 90.0, "Caries": 10.0, "Crack": 0.0}, ["all"]),
        ({"all": 80.0, "Tooth": 88.9, "Caries": 10.0, "Crack": 0.0}, ["Tooth"]),
        ({"all": 80.0, "Tooth": 90.0, "Caries": 7.9, "Crack": 0.0}, ["Caries"]),
        ({"all": 80.0, "Tooth": 90.0, "Caries": float("nan"), "Crack": 0.0}, ["Caries"]),
    ],
)
def test_keep_rule_of_the_int8_ap_benchmark(int8_segm, broken, load_tool):
    """Kept when all-class and Tooth segm AP50 lose at most 1 point and each lesion class at
    most 2; a class without ground truth in the split (NaN for float) is not judged."""
    script = load_tool("bench_int8_ap", "benchmarks")
    float_segm = {"all": 80.0, "Tooth": 90.0, "Caries": 10.0, "Crack": 0.0, "Cavity": math.nan}
    keep, reasons = script.verdict(
        {"segm": float_segm}, {"segm": {**int8_segm, "Cavity": 5.0}}, ["Tooth"]
    )
    assert keep == (not broken)
    assert [reason.split(" ")[0] for reason in reasons] == broken
