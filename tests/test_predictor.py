"""The notebook Predictor: config order, class names, errors, batching, drawing."""

import os

import numpy as np
import pytest
import torch
from detectron2.structures import Instances
from support import CLASSES, RANDOM_DEMO_MODEL, demo_photos
from support import DEMO_CONFIG as CONFIG

from dental_d2 import DentalError
from dental_d2.checkpoint import CLASS_NAMES_KEY
from dental_d2.drawing import drawn_scale, relative_luminance
from dental_d2.predictor import Predictor

# The demo's random-weight R18 at 128 px: fast on a CPU, and with detections at threshold 0.
TINY = [
    *RANDOM_DEMO_MODEL,
    "TEST.DETECTIONS_PER_IMAGE", "5",
]  # fmt: skip
WITH_CLASSES = [*TINY, "DENTAL.CLASS_NAMES", str(CLASSES)]


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    return Predictor(
        CONFIG, opts=[*WITH_CLASSES, "TEST.IMS_PER_BATCH", "2"], confidence_threshold=0.0
    )


def random_image(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_predict_returns_cpu_instances_at_the_image_size(predictor):
    instances = predictor.predict(random_image(60, 90))
    assert isinstance(instances, Instances)
    assert instances.image_size == (60, 90)
    assert len(instances) > 0
    assert instances.pred_masks.shape[1:] == (60, 90)
    assert instances.pred_boxes.tensor.device.type == "cpu"
    assert predictor.model.training is False


def test_predict_batch_matches_single_predictions(predictor):
    images = [random_image(64, 64, seed) for seed in range(3)]
    batched = predictor.predict_batch(images)
    assert len(batched) == 3
    for image, result in zip(images, batched):
        single = predictor.predict(image)
        # Batched convolutions sum in another order: equal up to float rounding.
        torch.testing.assert_close(
            result.pred_boxes.tensor, single.pred_boxes.tensor, atol=0.05, rtol=1e-3
        )
        assert result.pred_classes.tolist() == single.pred_classes.tolist()


def test_predict_reads_paths_and_grayscale_arrays(predictor, tmp_path):
    import cv2

    path = tmp_path / "gray.png"
    cv2.imwrite(str(path), random_image(40, 50)[:, :, 0])
    assert predictor.predict(str(path)).image_size == (40, 50)
    assert predictor.predict(random_image(40, 50)[:, :, 0]).image_size == (40, 50)
    with pytest.raises(ValueError, match="HxWx3"):
        predictor.predict(np.zeros((4, 4, 3), dtype=np.float32))


def test_draw_returns_an_rgb_overlay_and_findings(predictor):
    image = random_image(64, 96)
    instances = predictor.predict(image)
    overlay = predictor.draw(image, instances)
    k = drawn_scale(64, 96)  # a small photo is drawn enlarged
    assert overlay.shape[0] > 64 * k and overlay.shape[1:] == (96 * k, 3)  # summary band on top
    assert overlay.dtype == np.uint8
    findings = predictor.findings(instances)
    assert len(findings.teeth) + sum(len(t.lesions) for t in findings.teeth) + len(
        findings.unassigned
    ) == len(instances)


def test_metadata_colours_stand_out_on_white_enamel(predictor):
    assert predictor.metadata.thing_classes == CLASSES
    colors = predictor.metadata.thing_colors
    # WCAG contrast ratio against white: at least 3:1 for the teeth, 2:1 for lesions (whose
    # outlines lie on the teeth's blue as often as on enamel).
    white = relative_luminance((1.0, 1.0, 1.0))
    contrast = [(white + 0.05) / (relative_luminance(np.array(c) / 255) + 0.05) for c in colors]
    assert contrast[CLASSES.index("Tooth")] >= 3.0, colors
    assert min(contrast[:3]) >= 2.0, colors
    assert len(set(colors)) == 4


def test_missing_config_and_weights_are_named(tmp_path):
    with pytest.raises(DentalError, match="nope.yaml"):
        Predictor(str(tmp_path / "nope.yaml"))
    with pytest.raises(DentalError, match="missing.pth"):
        Predictor(CONFIG, weights=str(tmp_path / "missing.pth"), opts=WITH_CLASSES)


def test_class_names_must_match_num_classes():
    with pytest.raises(DentalError, match="NUM_CLASSES"):
        Predictor(CONFIG, opts=[*TINY, "DENTAL.CLASS_NAMES", "['Caries', 'Tooth']"])


def test_class_names_are_required():
    with pytest.raises(DentalError, match="DENTAL.CLASS_NAMES"):
        Predictor(CONFIG, opts=[*TINY, "DATASETS.TEST", "()", "DATASETS.TRAIN", "()"])


def test_bad_override_is_a_dental_error():
    with pytest.raises(DentalError, match="MODEL.NO_SUCH_KEY"):
        Predictor(CONFIG, opts=[*WITH_CLASSES, "MODEL.NO_SUCH_KEY", "1"])


def test_weights_and_class_names_come_from_the_checkpoint(predictor, tmp_path):
    weights = tmp_path / "model_final.pth"
    state = {k: v + 1 for k, v in predictor.model.state_dict().items()}
    saved = ["Caries", "Tooth", "Cavity", "Crack"]
    torch.save({"model": state, CLASS_NAMES_KEY: {"thing_classes": saved}}, weights)
    loaded = Predictor(CONFIG, weights=str(weights), opts=[*TINY, "MODEL.WEIGHTS", "unused"])
    assert loaded.class_names == saved
    assert str(weights) == loaded.cfg.MODEL.WEIGHTS
    name = "roi_heads.box_predictor.cls_score.weight"
    torch.testing.assert_close(loaded.model.state_dict()[name], state[name])


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the fallback without CUDA")
def test_cuda_falls_back_to_cpu_without_a_gpu():
    predictor = Predictor(CONFIG, opts=WITH_CLASSES, device="cuda")
    assert predictor.cfg.MODEL.DEVICE == "cpu"


def test_a_detection_scoring_exactly_the_threshold_is_kept(predictor, tmp_path):
    weights = tmp_path / "model_final.pth"
    state = predictor.model.state_dict()
    torch.save({"model": state, CLASS_NAMES_KEY: {"thing_classes": CLASSES}}, weights)
    image = random_image(64, 96)
    every = Predictor(CONFIG, weights=str(weights), opts=TINY, confidence_threshold=0.0)
    scores = every.predict(image).scores.tolist()
    threshold = scores[len(scores) // 2]  # a float32 score, exactly
    kept = Predictor(CONFIG, weights=str(weights), opts=TINY, confidence_threshold=threshold)
    assert kept.predict(image).scores.tolist() == [s for s in scores if s >= threshold]
    assert threshold in kept.predict(image).scores.tolist()


def test_the_checkpoint_is_read_once(predictor, tmp_path, monkeypatch):
    import builtins
    import hashlib

    weights = tmp_path / "model_final.pth"
    state = {k: v + 1 for k, v in predictor.model.state_dict().items()}
    torch.save({"model": state, CLASS_NAMES_KEY: {"thing_classes": CLASSES}}, weights)
    opened, real_open = [], builtins.open

    def recording_open(file, *args, **kwargs):
        if isinstance(file, str | os.PathLike) and os.fspath(file) == str(weights):
            opened.append(file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", recording_open)
    loaded = Predictor(CONFIG, weights=str(weights), opts=TINY)
    monkeypatch.undo()
    assert len(opened) == 1, opened
    assert loaded.class_names == CLASSES
    name = "roi_heads.box_predictor.cls_score.weight"
    torch.testing.assert_close(loaded.model.state_dict()[name], state[name])
    assert loaded.weights_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()[:12]


def test_draw_takes_the_findings_it_is_given(predictor, monkeypatch):
    image = random_image(64, 96)
    instances = predictor.predict(image)
    findings = predictor.findings(instances)
    expected = predictor.draw(image, instances)

    def not_again(_):
        raise AssertionError("draw computed the findings again")

    monkeypatch.setattr(predictor, "findings", not_again)
    np.testing.assert_array_equal(predictor.draw(image, instances, findings), expected)


@pytest.mark.parametrize("input_format", ["RGB", "BGR"])
def test_model_input_is_detectron2s_resize_of_the_photo_in_the_models_channel_order(input_format):
    """The runtime resizes first and reorders channels after: exactly the values of reordering
    the photo first and resizing it with ResizeShortestEdge, as DefaultPredictor does."""
    from detectron2.data import transforms as T

    from dental_d2.config import build_config
    from dental_d2.data import read_image
    from dental_d2.runtime import Backend

    sizes = ["INPUT.MIN_SIZE_TEST", "200", "INPUT.MAX_SIZE_TEST", "300"]
    backend = Backend(build_config(CONFIG, ["INPUT.FORMAT", input_format, *sizes]))
    photo = read_image(demo_photos()[0], format="BGR")
    photo = np.ascontiguousarray(photo[:, 40:])  # not square: both sides change
    image = photo[:, :, ::-1] if input_format == "RGB" else photo
    resized = T.ResizeShortestEdge([200, 200], 300).get_transform(image).apply_image(image)
    expected = torch.as_tensor(resized.transpose(2, 0, 1).astype("float32"))
    model_input = backend.model_input(photo)
    assert model_input["image"].is_contiguous() and model_input["image"].dtype == torch.float32
    assert torch.equal(model_input["image"], expected)
    assert (model_input["height"], model_input["width"]) == photo.shape[:2]
