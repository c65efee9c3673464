"""Test-time augmentation (TEST.AUG.*): the Predictor's output at the image's size from flips and
several sizes, on the CPU, and an --eval-only run that also scores the TTA model."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.modeling import GeneralizedRCNNWithTTA
from support import CLASSES
from support import DEMO_CONFIG as CONFIG

from dental_d2 import DentalError
from dental_d2.data.synthetic import generate_synthetic_dataset
from dental_d2.predictor import Predictor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The demo's random-weight model, small sizes; TTA at two sizes with flips.
TTA = [
    "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "DENTAL.CLASS_NAMES", str(CLASSES),
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128", "TEST.DETECTIONS_PER_IMAGE", "5",
    "TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", "(64, 96)", "TEST.AUG.MAX_SIZE", "192",
    "TEST.AUG.FLIP", "True",
]  # fmt: skip


def test_tta_predictor_returns_instances_at_the_image_size_from_four_views():
    torch.manual_seed(0)
    predictor = Predictor(CONFIG, opts=TTA, confidence_threshold=0.0)
    assert isinstance(predictor.model, GeneralizedRCNNWithTTA)
    inner = predictor.model.model
    seen, preprocess = [], inner.preprocess_image

    def recording_preprocess(batched_inputs):
        images = preprocess(batched_inputs)
        seen.extend(images.image_sizes)
        return images

    inner.preprocess_image = recording_preprocess
    image = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    instances = predictor.predict(image)
    assert instances.image_size == (60, 90)
    assert len(instances) > 0
    assert instances.pred_masks.shape == (len(instances), 60, 90)
    assert instances.pred_boxes.tensor.device.type == "cpu"
    assert instances.scores.shape == instances.pred_classes.shape == (len(instances),)
    # boxes from 2 sizes x (plain, flipped), then masks for the merged boxes on the same views
    assert sorted(seen) == [(64, 96)] * 4 + [(96, 144)] * 4, seen


def test_tta_needs_a_generalized_rcnn():
    opts = [*TTA, "MODEL.META_ARCHITECTURE", "ProposalNetwork"]
    message = "TEST.AUG.ENABLED needs a PyTorch GeneralizedRCNN .not ProposalNetwork"
    with pytest.raises(DentalError, match=message):
        Predictor(CONFIG, opts=opts)


@pytest.mark.slow
def test_eval_only_with_tta_scores_plain_and_augmented(tmp_path):
    export = tmp_path / "export"
    generate_synthetic_dataset(str(export), num_train=2, num_valid=1, num_test=2, size=96, seed=2)
    output = tmp_path / "eval"
    # --eval-only needs a weights file: the demo model's random weights.
    weights = tmp_path / "model.pth"
    # The model inside the TTA wrapper: the wrapper's own keys carry a "model." prefix.
    torch.save({"model": Predictor(CONFIG, opts=TTA).model.model.state_dict()}, weights)
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tools", "train_net.py"),
            "--config-file",
            CONFIG,
            "--eval-only",
            *TTA,
            "MODEL.WEIGHTS",
            str(weights),
            "DENTAL.DATA_ROOT",
            str(export),
            "OUTPUT_DIR",
            str(output),
            "TEST.IMS_PER_BATCH",
            "2",
            "DATALOADER.NUM_WORKERS",
            "0",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Evaluating with test-time augmentation" in result.stdout + result.stderr
    # --eval-only reports go to a folder named after the weights, model.pth here
    plain = json.loads((output / "eval" / "model" / "dental_test" / "metrics.json").read_text())
    tta = json.loads(
        (output / "eval" / "model" / "TTA" / "dental_test" / "metrics.json").read_text()
    )
    for metrics in (plain, tta):
        assert set(metrics) == {"bbox", "segm"}
        assert set(metrics["segm"]["per_class"]) == set(CLASSES)
