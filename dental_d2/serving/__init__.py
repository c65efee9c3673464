"""Serving a model over HTTP: a bounded batching queue, the FastAPI app and its web page."""

from .app import create_app
from .batching import BatchQueue, QueueFull
from .server import ServeSettings, build_service, run
from .service import PredictionService

__all__ = [
    "BatchQueue",
    "PredictionService",
    "QueueFull",
    "ServeSettings",
    "build_service",
    "create_app",
    "run",
]
