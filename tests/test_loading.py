"""The one loader: weights that carry their config, a config that does not fit them, weights that
leave parameters unloaded or only start a training, and each weights file read once."""

import builtins
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from PIL import Image
from support import CLASSES, tool_error_lines
from support import INSTANT_CONFIG as INSTANT

from dental_d2 import DentalError
from dental_d2.checkpoint import CLASS_NAMES_KEY, DentalCheckpointer
from dental_d2.checkpoint_contents import CONFIG_KEY, training_checkpointables
from dental_d2.config import build_config
from dental_d2.data.synthetic import generate_synthetic_dataset
from dental_d2.predictor import Predictor

pytestmark = pytest.mark.usefixtures("restore_loggers")

ROOT = Path(__file__).resolve().parents[1]
LITE0_DEMO = str(ROOT / "configs" / "quick_schedules" / "dental_lite0_demo_cpu.yaml")
LITE0 = str(ROOT / "configs" / "dental_lite0.yaml")
# What the trainer of the checkpoint below was given: the instant-test model with its classes,
# at most five detections per image (random weights find some at threshold 0).
TRAINED_WITH = [
    "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "DENTAL.CLASS_NAMES", str(CLASSES),
    "TEST.DETECTIONS_PER_IMAGE", "5",
]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> str:
    """A checkpoint as DentalTrainer writes it (its checkpointer and checkpointables): the
    instant-test model's weights, the class names and the config."""
    torch.manual_seed(0)
    cfg = build_config(INSTANT, TRAINED_WITH)
    folder = tmp_path_factory.mktemp("trained")
    DentalCheckpointer(build_model(cfg), str(folder), **training_checkpointables(cfg)).save(
        "model_final", iteration=7
    )
    return str(folder / "model_final.pth")


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    pixels = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


def _old_checkpoint(trained: str, folder: Path, class_names=True) -> str:
    """The same weights as a checkpoint that holds no config (another trainer's)."""
    checkpoint = torch.load(trained, map_location="cpu", weights_only=True)
    old = {"model": checkpoint["model"]}
    if class_names:
        old[CLASS_NAMES_KEY] = checkpoint[CLASS_NAMES_KEY]
    path = folder / "old.pth"
    torch.save(old, path)
    return str(path)


def test_the_weights_alone_predict_as_with_their_own_config(trained, photo, tmp_path, load_tool):
    alone = Predictor(None, weights=trained, confidence_threshold=0.0)
    configured = Predictor(INSTANT, weights=trained, opts=TRAINED_WITH, confidence_threshold=0.0)
    assert alone.class_names == CLASSES
    expected, actual = configured.predict(photo), alone.predict(photo)
    assert len(expected) > 0
    assert torch.equal(actual.pred_boxes.tensor, expected.pred_boxes.tensor)
    assert torch.equal(actual.scores, expected.scores)
    assert torch.equal(actual.pred_classes, expected.pred_classes)
    assert torch.equal(actual.pred_masks, expected.pred_masks)
    tool = load_tool("visualize")
    common = ["--input", photo, "--confidence-threshold", "0"]
    assert tool.main([*common, "--output", str(tmp_path / "a"), "MODEL.WEIGHTS", trained]) == 0
    assert (
        tool.main(
            [
                "--config-file",
                INSTANT,
                *common,
                "--output",
                str(tmp_path / "b"),
                *TRAINED_WITH,
                "MODEL.WEIGHTS",
                trained,
            ]
        )  # fmt: skip
        == 0
    )
    # The same detections: everything but the file's creation time.
    alone_json, configured_json = (
        json.loads((tmp_path / run / "predictions.coco.json").read_text()) for run in "ab"
    )
    del alone_json["info"], configured_json["info"]
    assert alone_json["annotations"] and alone_json == configured_json


def test_a_config_that_does_not_fit_the_weights_is_refused_naming_the_keys(
    trained, photo, tmp_path, load_tool, capsys
):
    tool = load_tool("visualize")
    argv = ["--config-file", LITE0_DEMO, "--input", photo, "--output", str(tmp_path / "out"),
            "MODEL.WEIGHTS", trained]  # fmt: skip
    assert tool.main(argv) == 1
    (line,) = tool_error_lines(capsys.readouterr().err)
    assert line.startswith(f"error: --config-file {LITE0_DEMO} does not fit MODEL.WEIGHTS")
    assert "MODEL.BACKBONE.NAME build_timm_fpn_backbone there, build_resnet_fpn_backbone" in line
    assert "drop --config-file" in line
    assert not (tmp_path / "out" / "predictions.coco.json").exists()
    with pytest.raises(DentalError, match="MODEL.BACKBONE.NAME"):
        Predictor(LITE0_DEMO, weights=trained)
    # Overrides apply to both configs: they never make the two disagree.
    agreeing = Predictor(INSTANT, weights=trained, opts=["INPUT.MIN_SIZE_TEST", "96"])
    assert agreeing.cfg.INPUT.MIN_SIZE_TEST == 96


def test_imagenet_weights_are_refused_for_inference(photo, tmp_path, load_tool, capsys):
    tool = load_tool("visualize")
    argv = ["--config-file", LITE0, "--input", photo, "--output", str(tmp_path / "out")]
    assert tool.main(argv) == 1
    (line,) = tool_error_lines(capsys.readouterr().err)
    assert line.startswith("error: MODEL.WEIGHTS efficientnet-lite://lite0 (ImageNet backbone)")
    assert "needs a trained model" in line and "OUTPUT_DIR" in line and "model_final.pth" in line
    with pytest.raises(DentalError, match="ImageNet backbone"):
        Predictor(LITE0, opts=["MODEL.DEVICE", "cpu"])
    from dental_d2.engine.launch import argument_parser, main

    args = argument_parser().parse_args(
        ["--config-file", LITE0, "--eval-only", "OUTPUT_DIR", str(tmp_path / "eval")]
    )
    with pytest.raises(DentalError, match="evaluating .--eval-only. needs a trained model"):
        main(args)


def test_an_older_checkpoint_needs_its_config_file(trained, photo, tmp_path):
    old = _old_checkpoint(trained, tmp_path)
    with pytest.raises(DentalError, match="holds no config of its own.*pass --config-file") as e:
        Predictor(None, weights=old)
    assert "config.yaml" not in str(e.value)
    (tmp_path / "config.yaml").write_text(build_config(INSTANT, TRAINED_WITH).dump())
    with pytest.raises(DentalError, match=re.escape(f"its training saved {tmp_path}/config.yaml")):
        Predictor(None, weights=old)
    with_config = Predictor(INSTANT, weights=old, opts=TRAINED_WITH, confidence_threshold=0.0)
    alone = Predictor(None, weights=trained, confidence_threshold=0.0)
    expected = alone.predict(photo).scores
    assert len(expected) and torch.equal(with_config.predict(photo).scores, expected)


def test_weights_that_leave_parameters_unloaded_are_refused(trained, tmp_path):
    old = _old_checkpoint(trained, tmp_path, class_names=False)
    two_classes = ["MODEL.ROI_HEADS.NUM_CLASSES", "2", "DENTAL.CLASS_NAMES", "['Caries', 'Tooth']"]
    with pytest.raises(DentalError) as e:
        Predictor(INSTANT, weights=old, opts=[*TRAINED_WITH, *two_classes])
    message = str(e.value)
    assert message.startswith(f"MODEL.WEIGHTS {old} does not fit the model built from the config")
    assert "of another shape (roi_heads.box_predictor.cls_score.weight" in message
    assert "pass --config-file with the config they were trained with" in message
    with pytest.raises(DentalError, match=r"parameters not in them \(roi_heads.mask_head"):
        Predictor(None, weights=trained, opts=["MODEL.ROI_MASK_HEAD.NUM_CONV", "3"])


def test_imagenet_initialisation_for_training_says_the_missing_heads_are_expected():
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("dental_d2.checkpoint")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        cfg = build_config(LITE0, ["MODEL.DEVICE", "cpu"])
        DentalCheckpointer(build_model(cfg)).load(cfg.MODEL.WEIGHTS)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    lines = [record.getMessage() for record in records]
    expected = "listed above as missing or skipped are expected with efficientnet-lite://lite0"
    assert any(expected in line for line in lines), lines


class _Reads:
    """Records every `.pth` file opened for reading, and every `torch.load`."""

    def __init__(self, monkeypatch):
        self.opened, self.loads = [], []
        real_open, real_load = builtins.open, torch.load

        def recording_open(file, mode="r", *args, **kwargs):
            path = os.fspath(file) if isinstance(file, str | os.PathLike) else ""
            if path.endswith(".pth") and "r" in mode:
                self.opened.append(os.path.abspath(path))
            return real_open(file, mode, *args, **kwargs)

        def recording_load(f, *args, **kwargs):
            self.loads.append(f)
            return real_load(f, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", recording_open)
        monkeypatch.setattr(torch, "load", recording_load)

    def count(self, path) -> int:
        return self.opened.count(os.path.abspath(path))


@pytest.mark.slow
def test_weights_are_read_once_on_eval_only_training_and_resume(tmp_path, monkeypatch):
    from dental_d2.engine.launch import argument_parser, main

    data = tmp_path / "data"
    generate_synthetic_dataset(str(data), num_train=4, num_valid=2, num_test=2, size=64, seed=2)
    # Evaluated once, after training: at most five detections on each of two test images.
    common = ["DENTAL.DATA_ROOT", str(data), "SOLVER.CHECKPOINT_PERIOD", "1000",
              "TEST.EVAL_PERIOD", "0", "TEST.VALIDATION_LOSS", "False",
              "DENTAL.EVAL.NUM_VIS_IMAGES", "0", "TEST.DETECTIONS_PER_IMAGE", "5"]  # fmt: skip

    def run(*argv):
        return main(argument_parser().parse_args(["--config-file", INSTANT, *argv, *common]))

    first, second = tmp_path / "first", tmp_path / "second"
    run("OUTPUT_DIR", str(first), "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()")
    weights = first / "model_final.pth"

    reads = _Reads(monkeypatch)
    run("--eval-only", "MODEL.WEIGHTS", str(weights), "OUTPUT_DIR", str(tmp_path / "eval"))
    assert reads.count(weights) == 1 and len(reads.loads) == 1, (reads.opened, reads.loads)

    reads = _Reads(monkeypatch)
    run("MODEL.WEIGHTS", str(weights), "OUTPUT_DIR", str(second), "SOLVER.MAX_ITER", "2")
    assert reads.count(weights) == 1, reads.opened
    assert all(reads.opened.count(path) == 1 for path in reads.opened), reads.opened

    resumed_from = second / "model_final.pth"
    reads = _Reads(monkeypatch)
    run("--resume", "OUTPUT_DIR", str(second), "SOLVER.MAX_ITER", "3")
    assert reads.count(resumed_from) == 1, reads.opened
    assert all(reads.opened.count(path) == 1 for path in reads.opened), reads.opened
    # --eval-only --resume evaluates the checkpoint OUTPUT_DIR's last_checkpoint names.
    reads = _Reads(monkeypatch)
    run("--eval-only", "--resume", "OUTPUT_DIR", str(second))
    assert reads.opened == [str(resumed_from)] and len(reads.loads) == 1, reads.opened
    monkeypatch.undo()
    stored = torch.load(resumed_from, map_location="cpu", weights_only=True)
    assert stored["iteration"] == 2 and CONFIG_KEY in stored


@pytest.mark.slow
def test_the_runtimes_read_the_export_contract_without_the_tracer():
    import subprocess
    import sys

    code = (
        "import sys, dental_d2.runtime, dental_d2.export.metadata; "
        "print(sorted(m for m in sys.modules if m.split('.')[:2] == ['detectron2', 'export'] "
        "or m == 'dental_d2.export.exporter'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout
