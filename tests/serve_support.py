"""The model and images that the serving tests share (imported by test_serve_*.py)."""

import os

import torch
from conftest import CLASSES, RANDOM_DEMO_MODEL
from conftest import DEMO_CONFIG as CONFIG

from dental_d2.predictor import Predictor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The demo's R18 with random weights at 128 px: fast on a CPU.
OPTS = [
    *RANDOM_DEMO_MODEL,
    "TEST.DETECTIONS_PER_IMAGE", "12",
    "TEST.IMS_PER_BATCH", "2",
    "DENTAL.CLASS_NAMES", str(CLASSES),
]  # fmt: skip
# The lowest score the test service keeps.
MIN_SCORE = 0.3


def build_predictor(confidence_threshold: float = MIN_SCORE) -> Predictor:
    """A random-weight demo model whose detections score from about 0.5 to 0.65.

    A fresh classifier layer starts at std 0.01, so every score is close to 1/(K+1); redrawing
    it at std 0.1 spreads the scores, so that a threshold between them filters some out.
    """
    torch.manual_seed(0)
    predictor = Predictor(CONFIG, opts=OPTS, confidence_threshold=confidence_threshold)
    torch.manual_seed(1)
    with torch.no_grad():
        predictor.model.roi_heads.box_predictor.cls_score.weight.normal_(0, 0.1)
    return predictor


def copy_predictor(source: Predictor, confidence_threshold: float) -> Predictor:
    """The same weights as `source` behind another confidence threshold."""
    predictor = Predictor(CONFIG, opts=OPTS, confidence_threshold=confidence_threshold)
    predictor.model.load_state_dict(source.model.state_dict())
    return predictor


def calculus_photos(calculus_root, count: int = 1) -> list[str]:
    """The first `count` photos of the real export's test split."""
    folder = os.path.join(calculus_root, "test")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith((".jpg", ".jpeg", ".png")))
    return [os.path.join(folder, n) for n in names[:count]]
