"""Starting the service on uvicorn: one process with one model and queue per `--workers`.

A worker process holds its own model, its own batching thread and its own bounded queue
(`--max-queue` slots), so N workers admit up to N x max-queue requests and hold N copies of
the model. Inside a worker, the batching thread runs the model with `--threads` intra-op
threads while the event loop accepts, decodes and answers other requests.
"""

import contextlib
import dataclasses
import inspect
import json
import logging
import os
from collections.abc import Sequence

import torch
import uvicorn

from ..config import DEFAULT_SCORE_THRESHOLD
from ..errors import DentalError
from ..loading import config_for_weights
from ..predictor import Predictor
from ..stop_signals import handling_stop_signals, signal_name
from .app import create_app
from .security import check_access, is_loopback, load_token
from .service import PredictionService

logger = logging.getLogger(__name__)

# How `run` hands the settings to worker processes (uvicorn imports the app by name in each).
SETTINGS_ENV = "DENTAL_D2_SERVE_SETTINGS"
# Seconds a worker process may take to start (import torch, load the model) and to answer
# the supervisor's health checks.
WORKER_STARTUP_S = 120


@dataclasses.dataclass
class ServeSettings:
    """What `tools/serve.py` is asked to serve, and how.

    Attributes:
        config_file (str | None): a dental YAML config; None for weights that carry their own
            (`dental_d2.loading.config_for_weights`).
        opts (Sequence[str]): KEY VALUE overrides, e.g. ("MODEL.WEIGHTS", "model_final.pth").
        host (str): the address to listen on; 127.0.0.1 keeps the server on this machine.
        port (int): the TCP port.
        workers (int): processes, each with its own model and queue.
        threads (int): PyTorch intra-op threads per worker; 0 keeps PyTorch's default.
        max_upload_mb (float): larger uploads get 413.
        max_queue (int): requests admitted at once per worker; more get 503 and Retry-After.
        max_megapixels (float): larger images get 413 before they are decoded.
        confidence_threshold (float): the default threshold of answers and of the page.
        min_score (float): the lowest score kept, the bottom of the page's slider.
        device (str | None): "cpu", "cuda", ...; None keeps MODEL.DEVICE.
        keep_minutes (float): answers (and their uploads) kept for re-filtering are forgotten
            this many minutes after they were made.
        token_file (str | None): a file holding the bearer token; None reads $DENTAL_D2_TOKEN.
        insecure_no_auth (bool): serve beyond loopback without a token.
        ssl_certfile (str | None): TLS certificate (PEM), passed to uvicorn.
        ssl_keyfile (str | None): its private key (PEM).
    """

    config_file: str | None
    opts: Sequence[str] = ()
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    threads: int = 0
    max_upload_mb: float = 20.0
    max_queue: int = 8
    max_megapixels: float = 25.0
    confidence_threshold: float = DEFAULT_SCORE_THRESHOLD
    min_score: float = 0.25
    device: str | None = None
    keep_minutes: float = 10.0
    token_file: str | None = None
    insecure_no_auth: bool = False
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None


def build_service(settings: ServeSettings) -> PredictionService:
    """Loads the model and puts it behind a bounded batching queue.

    Raises:
        DentalError: a bad config, override or weights file.
    """
    if settings.threads > 0:
        torch.set_num_threads(settings.threads)
    if not 0.0 <= settings.min_score <= settings.confidence_threshold <= 1.0:
        raise DentalError(
            f"--min-score {settings.min_score} and --confidence-threshold "
            f"{settings.confidence_threshold} must satisfy 0 <= min-score <= threshold <= 1"
        )
    predictor = Predictor(
        settings.config_file,
        opts=list(settings.opts),
        confidence_threshold=settings.min_score,
        device=settings.device,
        require_weights="serving",
    )
    return PredictionService(
        predictor,
        config_file=settings.config_file or "",
        score_threshold=settings.confidence_threshold,
        max_upload_bytes=int(settings.max_upload_mb * (1 << 20)),
        max_pixels=int(settings.max_megapixels * 1e6),
        capacity=settings.max_queue,
        keep_seconds=settings.keep_minutes * 60,
    )


def app_from_environment():
    """The app factory uvicorn calls in each worker process (settings from SETTINGS_ENV; the
    token from its file or $DENTAL_D2_TOKEN, never from the settings)."""
    settings = ServeSettings(**json.loads(os.environ[SETTINGS_ENV]))
    return create_app(build_service(settings), token=load_token(settings.token_file))


def _check_tls(settings: ServeSettings) -> dict:
    """uvicorn's TLS options, after checking that both files are given and exist."""
    files = {"--ssl-certfile": settings.ssl_certfile, "--ssl-keyfile": settings.ssl_keyfile}
    given = {flag: path for flag, path in files.items() if path}
    if not given:
        return {}
    if len(given) == 1:
        missing = next(flag for flag in files if flag not in given)
        raise DentalError(f"{next(iter(given))} needs {missing} too (the certificate's key)")
    for flag, path in given.items():
        if not os.path.isfile(path):
            raise DentalError(f"{flag} {path}: file not found; pass a PEM file")
    return {"ssl_certfile": settings.ssl_certfile, "ssl_keyfile": settings.ssl_keyfile}


@contextlib.contextmanager
def _signals_end_cleanly():
    """uvicorn finishes the requests in flight on SIGTERM or SIGINT, then raises the signal
    again for the handler it found; that handler is this no-op, so a stop asked for by a
    signal ends with exit status 0."""

    def stopped(signal_number, frame):
        logger.info(f"{signal_name(signal_number)}: the server has stopped")

    with handling_stop_signals(stopped):
        yield


def run(settings: ServeSettings):
    """Serves until interrupted (Ctrl-C or SIGTERM finish the requests in flight, then stop;
    the exit status is 0).

    Off loopback, a token (`token_file` or $DENTAL_D2_TOKEN) or `insecure_no_auth` is needed.

    Args:
        settings (ServeSettings): what to serve and how.

    Raises:
        DentalError: a bad config, override, weights file, token or option.
    """
    if settings.workers < 1 or settings.max_queue < 1:
        raise DentalError("--workers and --max-queue must be at least 1")
    if settings.keep_minutes <= 0:
        raise DentalError(f"--keep-minutes {settings.keep_minutes}: must be above 0")
    token = load_token(settings.token_file)
    check_access(settings.host, token, settings.insecure_no_auth)
    tls = _check_tls(settings)
    if not is_loopback(settings.host):
        if not token:
            logger.warning(
                "listening on %s without authentication (--insecure-no-auth): anyone who "
                "reaches this port can send and see images",
                settings.host,
            )
        elif not tls:
            logger.warning(
                "listening on %s without TLS: the token and the images cross the network "
                "unencrypted; pass --ssl-certfile and --ssl-keyfile, or serve behind a TLS proxy",
                settings.host,
            )
    # uvicorn's own 503 is a backstop for connections that never reach the queue.
    options = {
        "host": settings.host,
        "port": settings.port,
        "limit_concurrency": 4 * settings.max_queue + 16,  # per worker process
        "timeout_graceful_shutdown": 30,
        **tls,
    }
    if settings.workers == 1:
        # Load the model here so a bad config is one line before anything listens.
        app = create_app(build_service(settings), token=token)
        with _signals_end_cleanly():
            uvicorn.run(app, **options)
        return
    # Fail here, in one line, on what would make every worker fail.
    config_for_weights(settings.config_file, settings.opts, doing="serving")
    os.environ[SETTINGS_ENV] = json.dumps(dataclasses.asdict(settings))
    if "timeout_worker_healthcheck" in inspect.signature(uvicorn.run).parameters:
        # A worker imports torch and loads the model before it answers pings: on a busy CPU
        # that takes longer than uvicorn's default 5 s, and the worker would be killed.
        options["timeout_worker_healthcheck"] = WORKER_STARTUP_S
    uvicorn.run(
        f"{__name__}:app_from_environment", factory=True, workers=settings.workers, **options
    )
