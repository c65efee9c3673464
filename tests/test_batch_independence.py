"""A photo's detections are the same alone and batched beside photos of other sizes: eager
(GroupNorm and frozen-BN models), ONNX Runtime and the service under concurrent requests."""

import asyncio
import io
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from serve_support import build_predictor
from support import CLASSES

from dental_d2.checkpoint import CLASS_NAMES_KEY
from dental_d2.config import build_config
from dental_d2.export import export_model
from dental_d2.modeling.meta_arch import padded_shape
from dental_d2.predictor import Predictor
from dental_d2.serving import PredictionService, create_app

pytestmark = pytest.mark.usefixtures("restore_loggers")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEMO = str(CONFIGS / "quick_schedules" / "dental_demo_cpu.yaml")
LITE0 = str(CONFIGS / "dental_lite0.yaml")
# Small inputs keep each model at a fraction of a second per photo.
SIZE = ["INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "224", "MODEL.DEVICE", "cpu"]
# Random heads score every class near 1/5: a low threshold keeps detections to compare.
SCORE = 0.05


def photos() -> list[np.ndarray]:
    """Three BGR photos of different sizes and aspect ratios (landscape, portrait, wide)."""
    rng = np.random.default_rng(3)
    shapes = [(150, 200), (200, 130), (90, 210)]
    images = []
    for height, width in shapes:
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        # A bright "tooth" on each, so that the models' detections are not all at the edges.
        image[height // 4 : height // 2, width // 4 : width // 2] = 230
        images.append(image)
    return images


def assert_same_detections(expected, actual):
    """Same count and classes, boxes within 1 px, scores within 1e-3, masks that differ in at
    most 1% of their pixels (2 pixels for the tiny masks of random heads)."""
    assert len(actual) == len(expected) > 0
    assert actual.pred_classes.tolist() == expected.pred_classes.tolist()
    torch.testing.assert_close(actual.scores, expected.scores, atol=1e-3, rtol=0)
    torch.testing.assert_close(
        actual.pred_boxes.tensor, expected.pred_boxes.tensor, atol=1.0, rtol=0
    )
    intersection = (actual.pred_masks & expected.pred_masks).flatten(1).sum(1)
    union = (actual.pred_masks | expected.pred_masks).flatten(1).sum(1)
    assert bool((union - intersection <= (0.01 * union).clamp(min=2)).all())


def random_checkpoint(config: str, path, opts=()) -> str:
    """A checkpoint as the trainer writes it, of `config`'s model with random (or, for the
    Lite0 config, ImageNet-backbone) weights."""
    from detectron2.modeling import build_model

    from dental_d2.checkpoint import DentalCheckpointer

    torch.manual_seed(0)
    cfg = build_config(config, [*SIZE, *opts])
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        DentalCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    torch.save({"model": model.state_dict(), CLASS_NAMES_KEY: {"thing_classes": CLASSES}}, path)
    return str(path)


@pytest.fixture(scope="module", params=[DEMO, LITE0], ids=["groupnorm", "frozen-bn"])
def checkpoint(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "model_final.pth"
    return request.param, random_checkpoint(request.param, path)


def test_a_photo_alone_and_in_a_batch_of_other_sizes_gets_the_same_detections(checkpoint):
    config, weights = checkpoint
    batched = Predictor(
        config, weights, opts=[*SIZE, "TEST.IMS_PER_BATCH", "3"], confidence_threshold=SCORE
    )
    images = photos()
    together = batched.predict_batch(images)
    for image, in_batch in zip(images, together):
        assert_same_detections(batched.predict(image), in_batch)


def test_photos_of_one_padded_size_still_share_a_batch(checkpoint, monkeypatch):
    config, weights = checkpoint
    predictor = Predictor(
        config, weights, opts=[*SIZE, "TEST.IMS_PER_BATCH", "3"], confidence_threshold=SCORE
    )
    model = predictor.model
    sizes = []
    real_backbone_forward = model.backbone.forward

    def recording_forward(tensor):
        sizes.append(tuple(tensor.shape))
        return real_backbone_forward(tensor)

    monkeypatch.setattr(model.backbone, "forward", recording_forward)
    image = photos()[0]
    predictor.predict_batch([image, image[:, :-5], photos()[1]])
    # The first two pad to one shape and run as one batch; the portrait runs apart.
    assert [shape[0] for shape in sizes] == [2, 1]


def test_padded_shape_follows_detectron2s_image_list():
    from detectron2.structures import ImageList

    for height, width, divisibility, constraints in [
        (150, 200, 32, None),
        (97, 31, 32, {}),
        (64, 64, 32, None),
        (70, 50, 1, None),
        (70, 50, 32, {"size_divisibility": 16}),
        (70, 50, 32, {"square_size": 128}),
    ]:
        image = torch.zeros(3, height, width)
        expected = ImageList.from_tensors([image], divisibility, padding_constraints=constraints)
        shape = padded_shape(height, width, divisibility, constraints)
        assert shape == tuple(expected.tensor.shape[-2:])


@pytest.mark.slow
def test_onnx_alone_matches_eager_in_a_batch_of_other_sizes(tmp_path):
    weights = random_checkpoint(DEMO, tmp_path / "model_final.pth")
    cfg = build_config(DEMO, [*SIZE, "MODEL.WEIGHTS", weights])
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = SCORE
    onnx_path = export_model(cfg, str(tmp_path / "onnx"))
    eager = Predictor(
        DEMO, weights, opts=[*SIZE, "TEST.IMS_PER_BATCH", "3"], confidence_threshold=SCORE
    )
    runtime = Predictor(None, weights=onnx_path, confidence_threshold=SCORE, device="cpu")
    images = photos()
    for in_batch, alone in zip(eager.predict_batch(images), runtime.predict_batch(images)):
        assert_same_detections(alone, in_batch)


def png_bytes(image_bgr: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image_bgr[:, :, ::-1])).save(buffer, "PNG")
    return buffer.getvalue()


def test_concurrent_requests_batched_together_get_the_answers_of_single_requests():
    predictor = build_predictor(confidence_threshold=SCORE)
    service = PredictionService(predictor, capacity=8, score_threshold=SCORE)
    batch_sizes = []
    real_forward = service.batches.forward

    def slow_forward(images):
        # Holds the model long enough for the other requests to queue behind it.
        time.sleep(0.3)
        batch_sizes.append(len(images))
        return real_forward(images)

    service.batches.forward = slow_forward
    app = create_app(service)
    uploads = [png_bytes(image) for image in photos()]

    async def send(bodies):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await asyncio.gather(
                *(http.post("/predict", files={"file": ("p.png", b, "image/png")}) for b in bodies)
            )

    alone = [asyncio.run(send([body]))[0].json() for body in uploads]
    together = [response.json() for response in asyncio.run(send(uploads * 2))]
    service.close()
    assert max(batch_sizes) == 2  # the service's batch size: requests did share a batch
    for index, answer in enumerate(together):
        expected = alone[index % len(uploads)]["instances"]
        assert len(answer["instances"]) == len(expected) > 0
        for got, want in zip(answer["instances"], expected):
            assert got["class"] == want["class"]
            assert abs(got["score"] - want["score"]) <= 1e-3
            assert np.allclose(got["bbox"], want["bbox"], atol=1.0)
