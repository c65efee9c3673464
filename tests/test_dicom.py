"""DICOM radiographs: how each kind is shown, one-line errors, and every tool that reads images."""

import base64
import io
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pydicom
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from dicom_support import (
    PATIENT_BIRTH_DATE,
    PATIENT_ID,
    PATIENT_NAME,
    write_dicom,
    write_jpeg_dicom,
)
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from serve_support import CONFIG, OPTS, ROOT, build_predictor
from support import tiny_coco

from dental_d2 import DentalError, add_dental_config
from dental_d2.data import DentalDatasetMapper, image_size, read_image
from dental_d2.data.image_files import collect_images
from dental_d2.data.image_io import decode_image
from dental_d2.drawing import drawn_scale
from dental_d2.serving import PredictionService, create_app
from dental_d2.serving.service import safe_file_name

# Marks of a photo's EXIF block (a GPS position and a camera serial) that must not be copied.
CAMERA_SERIAL = "SN-CAM-99731"
GPS_LATITUDE = (48.0, 8.0, 22.11)


def ramp(height=24, width=32, high=255, dtype=np.uint8):
    return np.linspace(0, high, height * width).reshape(height, width).round().astype(dtype)


def test_8bit_monochrome2_keeps_its_values(tmp_path):
    pixels = ramp()
    path = write_dicom(tmp_path / "eight.dcm", pixels)
    image = read_image(path, format="RGB")
    assert image.shape == (24, 32, 3) and image.dtype == np.uint8
    assert (image == pixels[:, :, None]).all()
    assert image_size(path) == (24, 32)


def test_16bit_without_a_window_is_stretched_over_its_own_range(tmp_path):
    pixels = ramp(high=4095, dtype=np.uint16) + 100
    image = read_image(write_dicom(tmp_path / "sixteen.dcm", pixels), format="RGB")[:, :, 0]
    assert image.min() == 0 and image.max() == 255
    expected = np.rint((pixels - 100.0) * 255 / 4095)
    assert np.abs(image - expected).max() <= 1


def test_monochrome1_is_inverted(tmp_path):
    pixels = ramp()
    image = read_image(write_dicom(tmp_path / "m1.dcm", pixels, "MONOCHROME1"), format="RGB")
    assert (image[:, :, 0] == 255 - pixels).all()


def test_windowed_16bit_radiograph_is_shown_through_rescale_then_window(tmp_path):
    pixels = ramp(high=4095, dtype=np.uint16)
    path = write_dicom(
        tmp_path / "windowed.dcm",
        pixels,
        RescaleSlope=1,
        RescaleIntercept=-1000,
        WindowCenter=500,
        WindowWidth=1000,
    )
    image = read_image(path, format="RGB")[:, :, 0].astype(float)
    # Stored s -> modality s - 1000 -> the window [0, 1000] spread over 0..255.
    expected = np.clip((pixels.astype(float) - 1000) * 255 / 1000, 0, 255)
    assert np.abs(image - expected).max() <= 1.5
    assert image[pixels <= 990].max() == 0 and image[pixels >= 2010].min() == 255


def test_voi_lut_is_applied_and_its_output_range_spans_black_to_white(tmp_path):
    pixels = ramp(high=4095, dtype=np.uint16)
    path = write_dicom(tmp_path / "lut.dcm", pixels)
    dataset = pydicom.dcmread(path)
    lut = Dataset()
    # 2048 entries from input 1000 on, falling from 60000 to 0: an inverting LUT.
    lut.LUTDescriptor = [2048, 1000, 16]
    lut.LUTData = np.linspace(60000, 0, 2048).astype(np.uint16).tobytes()
    dataset.VOILUTSequence = [lut]
    dataset.save_as(path)
    image = read_image(path, format="RGB")[:, :, 0].astype(float)
    expected = 255 - np.clip((pixels.astype(float) - 1000) * 255 / 2047, 0, 255)
    assert np.abs(image - expected).max() <= 1.5
    assert image[pixels < 1000].min() == 255 and image[pixels > 3047].max() == 0


def test_rgb_and_jpeg_compressed_colour(tmp_path):
    rng = np.random.default_rng(0)
    colours = np.zeros((32, 48, 3), np.uint8)
    colours[:16] = (200, 30, 60)
    colours[16:] = (20, 180, 90)
    noisy = colours.copy()
    noisy[::4, ::4] = rng.integers(0, 256, noisy[::4, ::4].shape, dtype=np.uint8)
    rgb = read_image(write_dicom(tmp_path / "rgb.dcm", noisy, "RGB"), format="RGB")
    assert (rgb == noisy).all()
    bgr = read_image(write_jpeg_dicom(tmp_path / "jpeg.dcm", colours))
    assert bgr.shape == (32, 48, 3)
    # Lossy, so close: the colours of both halves survive YBR and JPEG.
    assert np.abs(bgr[:, :, ::-1].astype(int) - colours).mean() < 6


def test_broken_and_multiframe_files_are_one_line_naming_the_file(tmp_path):
    path = write_jpeg_dicom(tmp_path / "broken.dcm", np.zeros((16, 16, 3), np.uint8))
    dataset = pydicom.dcmread(path)
    dataset.PixelData = encapsulate([b"\xff\xd8" + b"not a jpeg" * 8])
    dataset.save_as(path)
    with pytest.raises(DentalError) as raised:
        read_image(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert "JPEG Baseline" in message and "1.2.840.10008.1.2.4.50" in message

    frames = np.zeros((2, 8, 8), np.uint8)
    multi = write_dicom(tmp_path / "cine.dcm", frames[0])
    dataset = pydicom.dcmread(multi)
    dataset.NumberOfFrames = 2
    dataset.PixelData = frames.tobytes()
    dataset.save_as(multi)
    with pytest.raises(DentalError, match=r"cine\.dcm: a multi-frame DICOM file \(2 frames\)"):
        read_image(multi)


def test_files_without_suffix_are_found_by_their_preamble(tmp_path):
    folder = tmp_path / "pacs"
    folder.mkdir()
    write_dicom(folder / "1.2.840.99.7", ramp())
    write_dicom(folder / "IMG0001", ramp())
    (folder / "notes.txt").write_text("not an image")
    found, problems = collect_images([str(folder)])
    assert [os.path.basename(p) for p in found] == ["1.2.840.99.7", "IMG0001"] and not problems
    assert read_image(found[0]).shape == (24, 32, 3)
    data = (folder / "IMG0001").read_bytes()
    assert (decode_image(data, "upload") == read_image(folder / "IMG0001")).all()


def exif_photo(path):
    """A JPEG photo whose EXIF holds a GPS position and a camera serial number."""
    exif = Image.Exif()
    exif[0xA431] = CAMERA_SERIAL  # BodySerialNumber
    exif.get_ifd(0x8825).update({1: "N", 2: GPS_LATITUDE})
    Image.fromarray(ramp(48, 64)).convert("RGB").save(path, "JPEG", exif=exif)
    assert CAMERA_SERIAL.encode() in path.read_bytes()
    return path


def radiographs(folder):
    """A folder as a clinic has it: windowed 16-bit, MONOCHROME1 and extensionless DICOM
    files and an intraoral photo with EXIF."""
    folder.mkdir()
    sixteen = ramp(64, 80, 4095, np.uint16)
    write_dicom(folder / "bitewing.dcm", sixteen, WindowCenter=2000, WindowWidth=3000)
    write_dicom(folder / "periapical.dcm", ramp(72, 56), "MONOCHROME1")
    write_dicom(folder / "IM000017", sixteen)
    exif_photo(folder / "intraoral.jpg")
    return folder


PRIVATE = (PATIENT_NAME, PATIENT_NAME.split("^")[0], PATIENT_BIRTH_DATE, PATIENT_ID, CAMERA_SERIAL)


def assert_no_patient_data(folder, *texts):
    """Nothing under `folder` (nor in `texts`, a run's logs) holds the headers' private fields;
    the images written there carry no metadata at all."""
    written = [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files]
    assert written
    for path in written:
        with open(path, "rb") as f:
            data = f.read()
        for secret in PRIVATE:
            assert secret.encode() not in data, (path, secret)
        if path.endswith((".jpg", ".png")):
            with Image.open(path) as image:
                assert not image.getexif() and not image.info.get("exif"), path
    for text in texts:
        for secret in PRIVATE:
            assert secret not in text


def trained_weights(folder) -> list[str]:
    """MODEL.WEIGHTS pointing at a checkpoint of the test model (the tools refuse none)."""
    import torch

    path = folder / "model_final.pth"
    torch.save({"model": build_predictor().model.state_dict()}, path)
    return ["MODEL.WEIGHTS", str(path)]


@pytest.mark.slow
def test_visualize_predicts_a_folder_of_radiographs_and_keeps_patient_data_out(tmp_path):
    folder = radiographs(tmp_path / "xrays")
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "visualize.py"), "--config-file", CONFIG,
         "--input", str(folder), "--output", str(out), "--confidence-threshold", "0.0", *OPTS,
         *trained_weights(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out)) == [
        "IM000017.jpg",
        "bitewing.jpg",
        "findings.json",
        "intraoral.jpg",
        "periapical.jpg",
        "predictions.coco.json",
    ]
    coco = json.loads((out / "predictions.coco.json").read_text())
    sizes = {i["file_name"]: (i["height"], i["width"]) for i in coco["images"]}
    assert sizes == {
        "IM000017": (64, 80),
        "bitewing.dcm": (64, 80),
        "intraoral.jpg": (48, 64),
        "periapical.dcm": (72, 56),
    }
    assert all(set(image) == {"id", "file_name", "height", "width"} for image in coco["images"])
    assert_no_patient_data(out, result.stdout, result.stderr)


def test_rank_for_labeling_reads_radiographs(tmp_path, load_tool, capsys, restore_loggers):
    folder = radiographs(tmp_path / "xrays")
    tool = load_tool("rank_for_labeling")
    out = tmp_path / "ranking"
    argv = ["--config-file", CONFIG, "--input", str(folder), "--output", str(out / "rank.csv")]
    assert tool.main([*argv, "--top", "4", *OPTS, *trained_weights(tmp_path)]) == 0
    ranking = (out / "rank.csv").read_text()
    assert all(name in ranking for name in ("bitewing.dcm", "IM000017", "periapical.dcm"))
    captured = capsys.readouterr()
    assert_no_patient_data(out, captured.out, captured.err)


def test_service_answers_a_dicom_upload_and_logs_only_a_request_id(tmp_path):
    service = PredictionService(build_predictor(), config_file=CONFIG, score_threshold=0.5)
    path = write_dicom(tmp_path / "x.dcm", ramp(40, 60, 4095, np.uint16), WindowCenter=2000,
                       WindowWidth=2000)  # fmt: skip
    records = io.StringIO()
    handler = logging.StreamHandler(records)
    logger = logging.getLogger("dental_d2")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    upload_name = f"{PATIENT_NAME}_{PATIENT_BIRTH_DATE}.dcm"
    try:
        with TestClient(create_app(service)) as client:
            files = {"file": (upload_name, path.read_bytes(), "application/dicom")}
            response = client.post("/predict", files=files, params={"overlay": "true"})
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["height"], answer["width"]) == (40, 60)
    log = records.getvalue()
    assert f"request {answer['id']}" in log
    for name in (upload_name, safe_file_name(upload_name), PATIENT_NAME, PATIENT_BIRTH_DATE):
        assert name not in log
    # The answer names the upload (the user's own choice of name) and holds nothing of the header.
    body = json.dumps({k: v for k, v in answer.items() if k != "file_name"})
    for secret in (PATIENT_NAME, PATIENT_BIRTH_DATE, PATIENT_ID):
        assert secret not in body
    overlay = Image.open(io.BytesIO(base64.b64decode(answer["overlay_png"])))
    assert not overlay.getexif() and overlay.size[0] == 60 * drawn_scale(40, 60)


def test_a_coco_export_of_radiographs_checks_and_maps_for_training(tmp_path, capsys, load_tool):
    coco = tiny_coco()
    root = tmp_path / "export" / "train"
    root.mkdir(parents=True)
    for image in coco["images"]:
        image["file_name"] = image["file_name"].replace(".jpg", ".dcm")
        write_dicom(root / image["file_name"], ramp(48, 64, 4095, np.uint16))
    (root / "_annotations.coco.json").write_text(json.dumps(coco))
    tool = load_tool("check_dataset")
    render = tmp_path / "render"
    assert tool.main([str(root.parent), "--name", "dicom_export", "--render", str(render)]) == 0
    assert "3 images, 4 annotations" in capsys.readouterr().out
    assert len(list(render.iterdir())) == 3
    cfg = get_cfg()
    add_dental_config(cfg)
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.MODEL.MASK_ON = (48,), 64, True
    record = DatasetCatalog.get("dicom_export_train")[0]
    mapped = DentalDatasetMapper(cfg, is_train=True)(record)
    assert mapped["image"].shape == (3, 48, 64) and len(mapped["instances"]) == 2
    assert_no_patient_data(render)
