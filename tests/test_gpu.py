"""The GPU tier (marker `cuda`, `make test-gpu`): AMP training with gradient accumulation, the
GradScaler through a checkpoint, ONNX parity against CUDA eager, Predictor and the service on
CUDA, and the benchmark (tools/benchmark.py) --device cuda. Where CUDA is missing they are
collected and skipped with the reason (conftest.py); with DENTAL_D2_REQUIRE_CUDA=1 that is an
error instead."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model
from fastapi.testclient import TestClient
from serve_support import CLASSES, OPTS
from support import DEMO_CONFIG as DEMO
from support import INSTANT_CONFIG as INSTANT
from support import NO_EVAL as FAST
from support import PARITY_SCORE as SCORE
from support import PARITY_SIZE as SIZE
from support import TINY_INPUT as TINY
from support import TRAIN_NET, assert_same_detections

from dental_d2.checkpoint import CLASS_NAMES_KEY
from dental_d2.config import build_config
from dental_d2.data import read_image
from dental_d2.data.synthetic import generate_synthetic_dataset
from dental_d2.export import export_model
from dental_d2.predictor import Predictor
from dental_d2.serving import PredictionService, create_app

pytestmark = [pytest.mark.cuda, pytest.mark.usefixtures("restore_loggers")]

ROOT = Path(__file__).resolve().parents[1]
# The serving tests' options, on the GPU.
CUDA_OPTS = [value if value != "cpu" else "cuda" for value in OPTS]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_dataset(str(root), num_train=8, num_valid=2, num_test=4, size=160, seed=5)
    return root


@pytest.fixture
def exact_fp32():
    """Full fp32 matmuls and convolutions (no TF32), for comparisons with other runtimes."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _train(*args):
    result = subprocess.run(
        [sys.executable, TRAIN_NET, "--config-file", INSTANT, *args],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def _losses(output):
    with open(output / "metrics.json") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [row["total_loss"] for row in rows if "total_loss" in row]


# Not a power of two: a scale grown or backed off from it stays 3 x 2^k, while a fresh
# GradScaler starts at 2^16.
MARKED_SCALE = 3072.0


@pytest.mark.parametrize("accumulation", [2, 1], ids=["accumulating", "AMPTrainer"])
def test_amp_training_learns_and_resumes_with_its_grad_scaler(export, tmp_path, accumulation):
    output = tmp_path / "amp"
    opts = [*FAST, "MODEL.DEVICE", "cuda", "SOLVER.AMP.ENABLED", "True",
            "SOLVER.ACCUMULATION_STEPS", str(accumulation), "DENTAL.DATA_ROOT", str(export),
            "OUTPUT_DIR", str(output), "SOLVER.CHECKPOINT_PERIOD", "30"]  # fmt: skip
    log = _train(*opts, "SOLVER.MAX_ITER", "60")
    assert "Rank of current process: 0. World size: 1" in log
    losses = _losses(output)
    # metrics.json holds medians over the last 20 iterations.
    assert losses[-1] < 0.8 * losses[0], losses
    saved = output / "model_0000029.pth"
    state = torch.load(saved, map_location="cpu", weights_only=True)
    scaler = state["trainer"]["grad_scaler"]
    assert scaler["scale"] > 0 and math.isfinite(scaler["scale"])
    # Resume from the iteration-30 checkpoint with a scale only a restored scaler can hold.
    scaler["scale"] = MARKED_SCALE
    torch.save(state, saved)
    (output / "model_final.pth").unlink()
    (output / "last_checkpoint").write_text(saved.name)
    resumed = _train("--resume", *opts, "SOLVER.MAX_ITER", "40")
    assert "Starting training from iteration 30" in resumed
    final = torch.load(output / "model_final.pth", map_location="cpu", weights_only=True)
    ratio = final["trainer"]["grad_scaler"]["scale"] / MARKED_SCALE
    assert ratio > 0 and math.log2(ratio).is_integer(), final["trainer"]["grad_scaler"]
    assert final["iteration"] == 39


def _images(export):
    folder = export / "test"
    return [read_image(str(folder / n)) for n in sorted(os.listdir(folder)) if n.endswith(".jpg")]


def test_onnx_export_of_a_cuda_model_matches_cuda_eager(export, tmp_path, exact_fp32):
    torch.manual_seed(0)
    cfg = build_config(DEMO, [*SIZE, "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cuda"])
    model = build_model(cfg)
    assert next(model.parameters()).is_cuda
    weights = str(tmp_path / "model_final.pth")
    torch.save({"model": model.state_dict(), CLASS_NAMES_KEY: {"thing_classes": CLASSES}}, weights)
    cfg.MODEL.WEIGHTS = weights
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = SCORE
    onnx_model = export_model(cfg, str(tmp_path / "onnx"))
    eager = Predictor(DEMO, weights, opts=SIZE, confidence_threshold=SCORE, device="cuda")
    assert eager.cfg.MODEL.DEVICE == "cuda" and next(eager.model.parameters()).is_cuda
    runtime = Predictor(None, weights=onnx_model, confidence_threshold=SCORE, device="cuda")
    images = _images(export)
    expected, actual = eager.predict_batch(images), runtime.predict_batch(images)
    assert sum(len(e) for e in expected) > 0
    for image_expected, image_actual in zip(expected, actual, strict=True):
        assert_same_detections(image_expected.to("cpu"), image_actual.to("cpu"))


def test_predictor_and_the_service_run_on_cuda(export):
    predictor = Predictor(DEMO, opts=CUDA_OPTS, confidence_threshold=0.0, device="cuda")
    assert predictor.cfg.MODEL.DEVICE == "cuda" and next(predictor.model.parameters()).is_cuda
    photo = sorted((export / "test").glob("*.jpg"))[0]
    direct = predictor.predict(read_image(str(photo)))
    service = PredictionService(predictor, score_threshold=0.0)
    with TestClient(create_app(service)) as client:
        assert client.get("/model").json()["device"] == "cuda"
        answer = client.post(
            "/predict", files={"file": (photo.name, photo.read_bytes())}, params={"overlay": True}
        )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert len(body["instances"]) == len(direct) > 0 and body["overlay_png"]
    scores = [a["score"] for a in body["instances"]]
    assert scores == pytest.approx(direct.scores.cpu().tolist(), abs=1e-4)


def test_benchmark_on_cuda_prints_its_table(tmp_path, capsys, load_tool):
    output = tmp_path / "bench.json"
    code = load_tool("bench_runtimes", "benchmarks").main(
        ["--config-file", DEMO, "--device", "cuda", "--output", str(output), "--repeats", "1",
         "--train-iters", "1", "--only", "pytorch,onnxruntime,training", *TINY]
    )  # fmt: skip
    assert code == 0
    report = json.loads(output.read_text())
    assert report["machine"]["gpu"] == torch.cuda.get_device_name()
    table = capsys.readouterr().out
    assert "GPU MiB" in table
    for row in report["rows"]:
        assert row["name"] in table and row["images_per_s"] > 0
    assert any(row.get("gpu_peak_mib") for row in report["rows"])
