"""The HTTP API and the web page: a FastAPI app around a `PredictionService`.

Every error is a 4xx/5xx with a one-line JSON body `{"error": "..."}`; the server stays up.
"""

import asyncio
import contextlib
import logging
import os
import resource
from importlib import resources
from typing import Annotated

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from ..data.image_io import ImageTooLargeError
from ..errors import DentalError
from .batching import QueueFull
from .security import PrivateByDefault, content_security_policy
from .service import PredictionService, safe_file_name

logger = logging.getLogger(__name__)

# The multipart field that carries the image.
UPLOAD_FIELD = "file"
# Multipart overhead allowed above --max-upload-mb before the body is refused unread.
_FORM_OVERHEAD = 64 << 10

Threshold = Annotated[
    float | None,
    Query(
        ge=0.0,
        le=1.0,
        description="drop instances scoring below this (a score equal to it is kept)",
    ),
]


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status, headers=headers)


def _peak_rss_mb() -> float:
    # ru_maxrss is in kB on Linux.
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def check_length(request: Request, max_bytes: int):
    """Refuses a body whose Content-Length is over the limit before reading it.

    Raises:
        HTTPException: 413.
    """
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes + _FORM_OVERHEAD:
        raise HTTPException(413, _too_large(int(length), max_bytes))


def upload_in(form) -> tuple[str, UploadFile]:
    """Returns the safe name and the file of the form's image field.

    Raises:
        HTTPException: 422 when the field is missing or is not a file.
    """
    upload = form.get(UPLOAD_FIELD)
    if not isinstance(upload, UploadFile):
        fields = ", ".join(repr(key) for key in form) or "none"
        raise HTTPException(
            422,
            f"no image in multipart field '{UPLOAD_FIELD}' (fields received: {fields}); send "
            f"the image as -F {UPLOAD_FIELD}=@photo.jpg",
        )
    return safe_file_name(upload.filename), upload


def _too_large(size: int, max_bytes: int) -> str:
    return (
        f"the upload is {size / (1 << 20):.1f} MB, over the limit of "
        f"{max_bytes / (1 << 20):.1f} MB; send a smaller image or start the server with a "
        "larger --max-upload-mb"
    )


def _add_error_handlers(app: FastAPI):
    @app.exception_handler(HTTPException)
    async def http_error(request, e: HTTPException):
        return _error(e.status_code, e.detail, headers=getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, e: RequestValidationError):
        first = e.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
        return _error(422, f"{where}: {first.get('msg', 'invalid value')}")

    @app.exception_handler(QueueFull)
    async def queue_full(request, e: QueueFull):
        headers = {"Retry-After": str(e.retry_after)}
        return _error(503, f"{e}; the server is busy", headers=headers)

    @app.exception_handler(ImageTooLargeError)
    async def too_large(request, e: ImageTooLargeError):
        return _error(413, str(e))

    @app.exception_handler(DentalError)
    async def bad_input(request, e: DentalError):
        return _error(400, str(e))


def create_app(service: PredictionService, token: str | None = None) -> FastAPI:
    """Builds the app: `GET /` (the page), `/health`, `/model`, `POST /predict`, `/results/*`.

    Every answer carries `Cache-Control: no-store` and a Content-Security-Policy that allows
    nothing from outside (see `PrivateByDefault`).

    Args:
        service (PredictionService): the model behind its queue; closed when the app shuts down.
        token (str | None): when set, every endpoint but `/health` and the page answers 401
            without `Authorization: Bearer <token>`.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        service.close()  # after the requests in flight, when uvicorn shuts down

    app = FastAPI(
        title="dental_d2",
        description="Mask R-CNN for teeth and dental lesions",
        lifespan=lifespan,
        # FastAPI's /docs and /redoc pages load their scripts from a CDN, which the
        # Content-Security-Policy forbids; /openapi.json describes the API.
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    page = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")
    app.add_middleware(PrivateByDefault, token=token, policy=content_security_policy(page))
    _add_error_handlers(app)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(page)

    @app.get("/health")
    async def health():
        """Liveness, queue counters and the process's peak memory."""
        stats = service.batches.stats()
        return {"status": "ok", "pid": os.getpid(), "queue": stats, "peak_rss_mb": _peak_rss_mb()}

    @app.get("/model")
    async def model():
        """The model's classes, config, weights (with a SHA-256 prefix) and device."""
        return service.model_info

    _add_predict_route(app, service)
    _add_result_routes(app, service)
    return app


async def _answer(service, stored, threshold: float, overlay: bool, image=None) -> dict:
    # CPU work (masks, findings, drawing): off the event loop.
    return await run_in_threadpool(service.answer, stored, threshold, overlay, image)


def _add_predict_route(app: FastAPI, service: PredictionService):
    @app.post("/predict")
    async def predict(request: Request, score_threshold: Threshold = None, overlay: bool = False):
        """Predicts the image in multipart field `file`.

        Returns instances (COCO annotations with `class`, `score`, `bbox` XYWH, RLE
        `segmentation`), counts per class and findings; with `overlay=true` also `overlay_png`
        (base64). The answer stays available at `/results/{id}` for re-filtering.
        """
        check_length(request, service.max_upload_bytes)
        threshold = service.threshold(score_threshold)
        # Files above 1 MB are spooled to disk by the parser: a waiting upload holds no memory.
        async with request.form(max_files=4, max_fields=16) as form:
            name, upload = upload_in(form)
            with service.batches.reserve() as slot:
                data = await upload.read(service.max_upload_bytes + 1)
                if len(data) > service.max_upload_bytes:
                    raise HTTPException(413, _too_large(len(data), service.max_upload_bytes))
                image = await run_in_threadpool(service.decode, data, name)
                compact = await asyncio.wrap_future(slot.submit(image))
                stored = service.store(name, data, image, compact)
                # The result id names the request: an upload's file name may be a patient's.
                logger.info(
                    "request %s: %dx%d image, %d detections",
                    stored.id,
                    stored.height,
                    stored.width,
                    len(stored.scores),
                )
                return await _answer(service, stored, threshold, overlay, image)


def _add_result_routes(app: FastAPI, service: PredictionService):
    def stored_or_404(prediction_id: str):
        try:
            return service.get(prediction_id)
        except KeyError:
            raise HTTPException(
                404, f"result {prediction_id} is unknown or expired; POST the image to /predict"
            ) from None

    @app.get("/results/{prediction_id}")
    async def result(prediction_id: str, score_threshold: Threshold = None, overlay: bool = False):
        """A previous answer, re-filtered at another threshold without re-uploading.

        Answers live in the memory of the worker process that made them, for the last 32
        images; a 404 means: POST the image again.
        """
        stored = stored_or_404(prediction_id)
        threshold = service.threshold(score_threshold)
        with service.batches.reserve():
            return await _answer(service, stored, threshold, overlay)

    @app.get("/results/{prediction_id}/overlay.png")
    async def overlay(prediction_id: str, score_threshold: Threshold = None):
        """The overlay of a previous answer at a threshold, drawn as tools/visualize.py does."""
        stored = stored_or_404(prediction_id)
        with service.batches.reserve():
            png = await run_in_threadpool(
                service.overlay_png, stored, service.threshold(score_threshold)
            )
        return Response(png, media_type="image/png")

    @app.get("/results/{prediction_id}/coco.json")
    async def coco_json(prediction_id: str, score_threshold: Threshold = None):
        """A previous answer as a COCO dataset file (the format of predictions.coco.json)."""
        stored = stored_or_404(prediction_id)
        data = service.coco_json(stored, service.threshold(score_threshold))
        stem = os.path.splitext(stored.file_name)[0]
        disposition = f'attachment; filename="{stem}.predictions.coco.json"'
        return JSONResponse(data, headers={"Content-Disposition": disposition})
