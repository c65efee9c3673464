"""ONNX / TorchScript export of a briefly trained demo model, ONNX Runtime behind Predictor, and
output parity with PyTorch on synthetic and real photos."""

import json
import os

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from support import CLASSES, assert_same_detections, demo_photos
from support import DEMO_CONFIG as CONFIG
from support import PARITY_SCORE as SCORE
from support import PARITY_SIZE as SIZE

from dental_d2 import DentalError
from dental_d2.checkpoint import CLASS_NAMES_KEY
from dental_d2.config import build_config
from dental_d2.data import read_image
from dental_d2.data.synthetic import generate_synthetic_dataset
from dental_d2.export import METADATA_FILE, export_model
from dental_d2.predictor import Predictor
from dental_d2.runtime import ExportedBackend
from dental_d2.weights import WeightsFile

pytestmark = pytest.mark.usefixtures("restore_loggers")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_dataset(str(root), num_train=0, num_valid=0, num_test=4, size=160, seed=5)
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A checkpoint as the trainer writes it: random weights and the class names."""
    torch.manual_seed(0)
    model = build_model(build_config(CONFIG, [*SIZE, "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"]))
    path = str(tmp_path_factory.mktemp("weights") / "model_final.pth")
    torch.save({"model": model.state_dict(), CLASS_NAMES_KEY: {"thing_classes": CLASSES}}, path)
    return path


@pytest.fixture(scope="module")
def exported(weights, tmp_path_factory):
    cfg = build_config(CONFIG, [*SIZE, "MODEL.WEIGHTS", weights])
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = SCORE
    folder = tmp_path_factory.mktemp("export")
    return export_model(cfg, str(folder / "onnx")), export_model(
        cfg, str(folder / "ts"), "torchscript"
    )


@pytest.fixture(scope="module")
def eager(weights):
    return Predictor(CONFIG, weights, opts=SIZE, confidence_threshold=SCORE, device="cpu")


def _check_parity(eager, model_path, images):
    runtime = Predictor(None, weights=model_path, confidence_threshold=SCORE, device="cpu")
    expected, actual = eager.predict_batch(images), runtime.predict_batch(images)
    for image_expected, image_actual in zip(expected, actual):
        assert_same_detections(image_expected, image_actual)
    return expected


@pytest.mark.slow
def test_export_writes_a_valid_onnx_model_and_its_metadata(exported, weights):
    import onnx

    onnx_path, _ = exported
    model = onnx.load(onnx_path)
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["boxes", "scores", "classes", "masks"]
    with open(os.path.join(os.path.dirname(onnx_path), METADATA_FILE)) as f:
        metadata = json.load(f)
    assert metadata["class_names"] == CLASSES
    assert (metadata["min_size_test"], metadata["score_threshold"]) == (160, SCORE)
    assert metadata["input"]["format"] == "BGR" and metadata["weights"] == weights


@pytest.mark.slow
def test_onnx_matches_pytorch_on_synthetic_photos(exported, eager, synthetic):
    images = sorted(str(p) for p in (synthetic / "test").glob("*.jpg"))
    # Another size and aspect ratio than the traced one: shapes in the graph are dynamic.
    images.append(np.ascontiguousarray(read_image(images[0], format="BGR")[:120]))
    expected = _check_parity(eager, exported[0], images)
    assert sum(len(instances) for instances in expected) >= 10
    assert all(len(instances) > 0 for instances in expected)


@pytest.mark.slow
def test_onnx_matches_pytorch_on_real_photos(exported, eager):
    images = demo_photos(count=4)
    expected = _check_parity(eager, exported[0], images)
    assert sum(len(instances) for instances in expected) >= 4


@pytest.mark.slow
def test_torchscript_matches_pytorch(exported, eager, synthetic):
    images = sorted(str(p) for p in (synthetic / "test").glob("*.jpg"))[:2]
    expected = _check_parity(eager, exported[1], images)
    # Parity of empty outputs would check nothing: each photo has detections to compare.
    assert all(len(instances) > 0 for instances in expected)


@pytest.mark.slow
def test_sliced_inference_runs_every_runtime_alike(exported, weights, synthetic):
    """TEST.SLICED wraps ONNX Runtime and TorchScript as it wraps PyTorch: a photo twice a
    tile's width, predicted whole and in 3 tiles, gives the same merged detections."""
    files = sorted(str(p) for p in (synthetic / "test").glob("*.jpg"))[:2]
    photo = np.concatenate([read_image(f, format="BGR") for f in files], axis=1)
    sliced = ["TEST.SLICED.ENABLED", "True", "TEST.SLICED.TILE_SIZE", "160"]
    opts = {"pytorch": (CONFIG, weights), "onnx": (None, exported[0]), "ts": (None, exported[1])}
    results = {}
    for name, (config, model) in opts.items():
        predictor = Predictor(
            config, model, opts=[*SIZE, *sliced], confidence_threshold=SCORE, device="cpu"
        )
        assert predictor.backend.name.endswith(", sliced")
        calls = []
        real_run = predictor.backend.backend.run
        predictor.backend.backend.run = lambda inputs, real_run=real_run, calls=calls: (
            calls.append(len(inputs)) or real_run(inputs)
        )
        results[name] = predictor.predict(photo)
        assert sum(calls) == 4, name  # the whole photo and 3 tiles
    assert results["pytorch"].image_size == photo.shape[:2] and len(results["pytorch"]) > 0
    assert_same_detections(results["pytorch"], results["onnx"])
    assert_same_detections(results["pytorch"], results["ts"])


@pytest.mark.slow
def test_confidence_threshold_filters_the_exported_detections(exported, eager, weights, synthetic):
    images = sorted(str(p) for p in (synthetic / "test").glob("*.jpg"))
    # Above the exported threshold: ONNX Runtime filters what the graph kept, like PyTorch does.
    # The threshold lies midway in the widest gap among the middle half of the scores: a score
    # that the two runtimes round differently stays on the same side of it.
    scores = torch.cat([i.scores for i in eager.predict_batch(images)]).sort().values
    middle = scores[len(scores) // 4 : 3 * len(scores) // 4]
    widest = int((middle[1:] - middle[:-1]).argmax())
    threshold = float((middle[widest] + middle[widest + 1]) / 2)
    eager = Predictor(CONFIG, weights, opts=SIZE, confidence_threshold=threshold, device="cpu")
    runtime = Predictor(None, weights=exported[0], confidence_threshold=threshold, device="cpu")
    assert runtime.model is None and runtime.backend.name == "onnxruntime"
    expected, actual = eager.predict_batch(images), runtime.predict_batch(images)
    assert len(scores) // 4 < sum(map(len, expected)) <= 3 * len(scores) // 4
    for image_expected, image_actual in zip(expected, actual):
        assert bool((image_actual.scores >= threshold).all())
        assert_same_detections(image_expected, image_actual)


@pytest.mark.slow
def test_visualize_tool_runs_the_onnx_model_without_a_config(
    exported, synthetic, tmp_path, load_tool
):
    output = tmp_path / "vis"
    code = load_tool("visualize").main(
        ["--input", str(synthetic / "test"), "--output", str(output),
         "--confidence-threshold", "0.2", "MODEL.WEIGHTS", exported[0], "MODEL.DEVICE", "cpu"]
    )  # fmt: skip
    assert code == 0
    assert len(list(output.glob("*.jpg"))) == 4
    with open(output / "predictions.coco.json") as f:
        predictions = json.load(f)
    assert [c["name"] for c in predictions["categories"]] == CLASSES
    assert predictions["annotations"]


def test_export_tool_names_missing_weights(tmp_path, capsys, load_tool):
    missing = str(tmp_path / "missing.pth")
    code = load_tool("export_model").main(
        ["--config-file", CONFIG, "--output", str(tmp_path / "out"), "MODEL.WEIGHTS", missing]
    )
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "missing.pth" in err and "\n" not in err


def test_exported_model_without_its_metadata_is_named(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not read")
    with pytest.raises(DentalError, match=METADATA_FILE):
        Predictor(None, weights=str(model))


def test_export_needs_class_names():
    cfg = build_config(CONFIG, ["MODEL.WEIGHTS", ""])
    with pytest.raises(DentalError, match="DENTAL.CLASS_NAMES"):
        export_model(cfg, "unused")


class ScriptedGraph(ExportedBackend):
    """An exported graph that returns fixed detections, with no ONNX Runtime behind it."""

    def load(self, weights, device):
        pass

    def graph(self, image):
        scores = torch.tensor([0.9, 0.5, 0.3])
        boxes = torch.tensor([[10.0, 10.0, 40.0, 40.0]] * 3)
        return boxes, scores, torch.tensor([3, 0, 1]), torch.ones(3, 1, 28, 28)


def test_exported_runtime_keeps_a_detection_scoring_exactly_the_threshold():
    cfg = build_config(CONFIG, [*SIZE, "MODEL.DEVICE", "cpu"])
    graph = ScriptedGraph(cfg, WeightsFile("model.onnx"), {"score_threshold": SCORE}, 0.5)
    (instances,) = graph([np.zeros((80, 80, 3), dtype=np.uint8)])
    assert instances.image_size == (80, 80)
    assert instances.scores.tolist() == torch.tensor([0.9, 0.5]).tolist()


@pytest.mark.slow
def test_an_exported_model_answers_a_photo_without_detections(weights, synthetic, tmp_path):
    # The demo model's mask head has GroupNorm, whose default export cannot run on zero
    # detections; at a threshold no random detection reaches, every photo has none.
    cfg = build_config(CONFIG, [*SIZE, "MODEL.WEIGHTS", weights])
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.999
    path = export_model(cfg, str(tmp_path / "onnx"))
    predictor = Predictor(None, path, device="cpu", confidence_threshold=0.999)
    image = read_image(str(next((synthetic / "test").glob("*.jpg"))), format="BGR")
    instances = predictor.predict(image)
    assert len(instances) == 0 and instances.pred_masks.shape[1:] == image.shape[:2]
