"""What the serving tests share (imported by test_serve_*.py): the model and a uvicorn server in
a thread."""

import contextlib
import os
import socket
import threading
import time

import torch
import uvicorn
from support import CLASSES, RANDOM_DEMO_MODEL
from support import DEMO_CONFIG as CONFIG

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


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serve_in_thread(app):
    """Runs `app` under uvicorn in a daemon thread; yields its URL, stops it on exit."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
