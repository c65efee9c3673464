"""The HTTP API in-process: endpoints, answers equal to tools/visualize.py, bad input, overload."""

import asyncio
import base64
import io
import json
import re
import struct
import time
import zlib

import cv2
import httpx
import numpy as np
import pycocotools.mask as mask_util
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pycocotools.coco import COCO
from serve_support import (
    CLASSES,
    CONFIG,
    MIN_SCORE,
    OPTS,
    build_predictor,
    copy_predictor,
)
from support import demo_photos

from dental_d2.data import read_image
from dental_d2.inference import FINDINGS_FILE, PREDICTIONS_FILE, predict_images
from dental_d2.serving import PredictionService, create_app


@pytest.fixture(scope="module")
def predictor():
    return build_predictor()


@pytest.fixture(scope="module")
def client(predictor):
    service = PredictionService(predictor, config_file=CONFIG, score_threshold=0.5)
    with TestClient(create_app(service)) as client:
        yield client


@pytest.fixture
def photo():
    return demo_photos()[0]


OPTS_ARGS = ["--config-file", CONFIG, *OPTS]


def post(client, data: bytes, name="photo.jpg", field="file", **params):
    return client.post("/predict", files={field: (name, data, "image/jpeg")}, params=params)


def png_bytes(array: np.ndarray, **save_options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG", **save_options)
    return buffer.getvalue()


def test_model_and_health_describe_the_service(client):
    model = client.get("/model").json()
    assert model["classes"] == CLASSES
    assert (model["config_file"], model["weights"], model["device"]) == (CONFIG, "", "cpu")
    assert (model["min_score"], model["score_threshold"]) == (MIN_SCORE, 0.5)
    assert model["batch_size"] == 2
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["queue"]["capacity"] == 8
    assert health["peak_rss_mb"] > 0


def test_page_is_one_offline_file(client):
    response = client.get("/")
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    page = response.text
    for element in ('id="file"', 'id="threshold"', 'id="overlay"', 'id="findings"', 'id="counts"'):
        assert element in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing from a CDN
    assert "/predict" in page and "/model" in page


@pytest.mark.slow
def test_answers_equal_tools_visualize_output(client, predictor, photo, tmp_path):
    threshold = 0.55
    with open(photo, "rb") as f:
        response = post(client, f.read(), name="photo.jpg", score_threshold=threshold, overlay=True)
    assert response.status_code == 200
    answer = response.json()
    # What tools/visualize.py writes for the same image with --confidence-threshold 0.55.
    reference = copy_predictor(predictor, threshold)
    predict_images(reference, [photo], str(tmp_path))
    with open(tmp_path / PREDICTIONS_FILE) as f:
        expected = json.load(f)["annotations"]
    with open(tmp_path / FINDINGS_FILE) as f:
        expected_findings = json.load(f)["images"][0]
    assert 0 < len(expected) < len(client.get(f"/results/{answer['id']}").json()["instances"])
    assert [{k: v for k, v in a.items() if k != "class"} for a in answer["instances"]] == expected
    assert [a["class"] for a in answer["instances"]] == [
        CLASSES[a["category_id"] - 1] for a in expected
    ]
    assert answer["findings"]["summary"] == expected_findings["summary"]
    assert answer["findings"]["unassigned"] == expected_findings["unassigned"]
    assert sum(answer["counts"].values()) == len(expected)
    overlay = cv2.imdecode(np.frombuffer(base64.b64decode(answer["overlay_png"]), np.uint8), 1)
    image = read_image(photo)
    drawn = reference.draw(image, reference.predict(image))
    np.testing.assert_array_equal(overlay[:, :, ::-1], drawn)


def test_masks_are_encoded_once_and_a_score_equal_to_the_threshold_is_kept(
    client, photo, monkeypatch
):
    encodes, encode = [], mask_util.encode

    def counting_encode(*args, **kwargs):
        encodes.append(1)
        return encode(*args, **kwargs)

    monkeypatch.setattr(mask_util, "encode", counting_encode)
    with open(photo, "rb") as f:
        answer = post(client, f.read(), score_threshold=0, overlay=True).json()
    assert len(encodes) == 1  # the model's masks, as they leave the batching queue
    stored = client.app.state.service.get(answer["id"])
    middle = len(stored.scores) // 2
    exact = float(stored.scores[middle])  # a stored float32 score, exactly
    params = {"score_threshold": exact, "overlay": True}
    again = client.get(f"/results/{answer['id']}", params=params).json()
    client.get(f"/results/{answer['id']}/coco.json", params={"score_threshold": exact})
    assert len(encodes) == 1
    kept = int((stored.scores >= stored.scores[middle]).sum())
    assert len(again["instances"]) == kept > middle
    assert again["instances"][-1]["score"] == round(exact, 4)
    assert again["instances"] == answer["instances"][: len(again["instances"])]


def test_results_refilter_without_reuploading(client, photo, tmp_path):
    with open(photo, "rb") as f:
        first = post(client, f.read(), name="IMG 1.jpg", score_threshold=0).json()
    assert first["score_threshold"] == MIN_SCORE  # never below the lowest score kept
    scores = [a["score"] for a in first["instances"]]
    assert scores == sorted(scores, reverse=True) and min(scores) > MIN_SCORE
    middle = float(np.median(scores))
    higher = client.get(f"/results/{first['id']}", params={"score_threshold": middle}).json()
    assert 0 < len(higher["instances"]) < len(first["instances"])
    assert all(a["score"] > middle for a in higher["instances"])
    overlay = client.get(f"/results/{first['id']}/overlay.png", params={"score_threshold": middle})
    assert overlay.headers["content-type"] == "image/png" and overlay.content[:4] == b"\x89PNG"
    with_overlay = client.get(
        f"/results/{first['id']}", params={"score_threshold": middle, "overlay": True}
    ).json()
    assert base64.b64decode(with_overlay["overlay_png"]) == overlay.content
    download = client.get(f"/results/{first['id']}/coco.json", params={"score_threshold": middle})
    assert 'filename="IMG 1.predictions.coco.json"' in download.headers["content-disposition"]
    (tmp_path / "p.json").write_bytes(download.content)
    coco = COCO(str(tmp_path / "p.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == CLASSES
    assert len(coco.getAnnIds(imgIds=[1])) == len(higher["instances"])
    assert coco.imgs[1]["file_name"] == "IMG 1.jpg"


def test_image_kinds_decode_as_read_image_does(client, tmp_path):
    rng = np.random.default_rng(0)
    sixteen = (rng.integers(0, 4096, (40, 60))).astype(np.uint16)
    rgba = rng.integers(0, 256, (40, 60, 4), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: the answer is 60 high, 40 wide
    rotated = io.BytesIO()
    Image.fromarray(rgba[:, :, :3]).save(rotated, "JPEG", exif=exif)
    for data, size in (
        (png_bytes(sixteen), (40, 60)),
        (png_bytes(rgba[:, :, 0]), (40, 60)),
        (png_bytes(rgba), (40, 60)),
        (rotated.getvalue(), (60, 40)),
    ):
        answer = post(client, data).json()
        assert (answer["height"], answer["width"]) == size
        for instance in answer["instances"]:
            assert instance["segmentation"]["size"] == list(size)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels in a few dozen bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


@pytest.fixture(scope="module")
def strict_client(predictor):
    """The same model behind limits small enough to test cheaply: 64 kB, 1 megapixel."""
    service = PredictionService(predictor, max_upload_bytes=64 << 10, max_pixels=1_000_000)
    with TestClient(create_app(service)) as client:
        yield client


@pytest.mark.parametrize(
    "case, status, message",
    [
        ("not an image", 400, "notes.txt: not a readable image"),
        ("truncated", 400, "photo.jpg: image is corrupt or truncated"),
        ("empty", 400, "photo.jpg: the file is empty"),
        ("too large", 413, "over the limit of 0.1 MB"),
        ("too large for its header", 413, "over the limit of 0.1 MB"),
        ("bomb", 413, "photo.jpg: 2000x2000 is 4.0 megapixels, over the limit of 1.0"),
        ("huge bomb", 413, "decompression bomb"),
        ("wrong field", 422, "no image in multipart field 'file' (fields received: 'image')"),
        ("bad threshold", 422, "score_threshold: Input should be less than or equal to 1"),
    ],
)
def test_bad_input_is_a_one_line_4xx_and_the_server_stays_up(strict_client, case, status, message):
    small = png_bytes(np.full((30, 40, 3), 128, dtype=np.uint8))
    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(
        jpeg, "JPEG"
    )
    requests = {
        "not an image": lambda: post(strict_client, b"tooth notes", name="notes.txt"),
        "truncated": lambda: post(strict_client, jpeg.getvalue()[: len(jpeg.getvalue()) // 2]),
        "empty": lambda: post(strict_client, b""),
        "too large": lambda: post(strict_client, b"\xff" * (200 << 10)),
        # Within the allowance for multipart overhead: refused when the file is read.
        "too large for its header": lambda: post(strict_client, b"\xff" * ((64 << 10) + 100)),
        "bomb": lambda: post(strict_client, png_bytes(np.zeros((2000, 2000), np.uint8))),
        "huge bomb": lambda: post(strict_client, png_header_only(30000, 30000)),
        "wrong field": lambda: post(strict_client, small, field="image"),
        "bad threshold": lambda: post(strict_client, small, score_threshold=2),
    }
    response = requests[case]()
    assert response.status_code == status
    body = response.json()
    assert list(body) == ["error"] and "\n" not in body["error"]
    assert message in body["error"]
    assert post(strict_client, small).status_code == 200
    assert strict_client.get("/health").json()["queue"]["in_use"] == 0


def test_unknown_result_is_404(client):
    response = client.get("/results/0123abcd/overlay.png")
    assert response.status_code == 404 and "POST the image to /predict" in response.json()["error"]


def test_overload_gets_503_with_retry_after_and_every_accepted_request_an_answer(predictor):
    service = PredictionService(predictor, capacity=2)
    real_forward = service.batches.forward

    def slow_forward(images):
        time.sleep(0.5)
        return real_forward(images)

    service.batches.forward = slow_forward
    app = create_app(service)
    image = png_bytes(np.random.default_rng(0).integers(0, 256, (64, 80, 3), np.uint8))

    async def burst(n):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            files = {"file": ("a.png", image, "image/png")}
            return await asyncio.gather(*(http.post("/predict", files=files) for _ in range(n)))

    responses = asyncio.run(burst(8))
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 503}
    for response in responses:
        if response.status_code == 503:
            assert int(response.headers["Retry-After"]) >= 1
            assert "queue is full" in response.json()["error"]
        else:
            answer = response.json()
            assert (answer["height"], answer["width"]) == (64, 80)
            assert len(answer["instances"]) == sum(answer["counts"].values())
    stats = service.batches.stats()
    assert stats["admitted"] == statuses.count(200) >= 2
    assert stats["rejected"] == statuses.count(503)
    assert stats["in_use"] == 0
    service.close()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--config-file", "nope.yaml"], "error: nope.yaml: config file not found"),
        (["--min-score", "0.6", *OPTS_ARGS], "error: --min-score 0.6 and --confidence-threshold"),
        (
            ["--workers", "2", *OPTS_ARGS, "MODEL.WEIGHTS", "gone.pth"],
            "error: MODEL.WEIGHTS gone.pth: no such file",
        ),
    ],
)
def test_serve_tool_reports_bad_settings_in_one_line(argv, message, capsys, load_tool):
    tool = load_tool("serve")
    assert tool.main(argv) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith(message) and "\n" not in error


def test_a_failing_model_is_a_one_line_500_and_the_next_request_is_served(predictor):
    service = PredictionService(predictor)
    real_forward = service.batches.forward
    failures = iter([RuntimeError("CUDA out of memory\nTried to allocate 2 GiB")])

    def flaky_forward(images):
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return real_forward(images)

    service.batches.forward = flaky_forward
    image = png_bytes(np.zeros((32, 48, 3), np.uint8))
    with TestClient(create_app(service), raise_server_exceptions=False) as client:
        failed = post(client, image)
        assert failed.status_code == 500
        assert failed.json() == {
            "error": "internal error (RuntimeError: CUDA out of memory Tried to allocate 2 GiB); "
            "see the server log"
        }
        # The private-by-default headers are on a 500 too.
        assert failed.headers["Cache-Control"] == "no-store"
        assert "Content-Security-Policy" in failed.headers
        assert post(client, image).status_code == 200
        assert client.get("/health").json()["queue"]["in_use"] == 0
