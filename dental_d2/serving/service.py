"""The service behind the web app: uploads in; instances, findings, overlays and COCO out.

Everything the page and the API show comes from `Predictor`, `dental_d2.coco_format` and
`dental_d2.visualize`, so an answer at a threshold is what `tools/visualize.py
--confidence-threshold` writes for the image:
the same overlay, the same `predictions.coco.json` annotations, the same findings.
"""

import base64
import logging
import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.structures import Boxes, Instances

from ..coco_format import coco_dataset, instances_to_coco_annotations, masks_to_rles
from ..config import DEFAULT_SCORE_THRESHOLD
from ..data.image_io import decode_image
from ..errors import DentalError
from ..findings import findings_to_dict
from .answer_cache import AnswerCache
from .batching import BatchQueue

logger = logging.getLogger(__name__)

# Characters kept in an uploaded file's name (it appears in messages and in the COCO file).
_UNSAFE_NAME = re.compile(r"[^\w.\- ]+")


@dataclass
class StoredPrediction:
    """One image's predictions at the service's lowest score, kept so they can be re-filtered.

    Masks are kept as COCO RLE and the upload as its encoded bytes: a few kB per image instead
    of a dense mask per detection.

    Attributes:
        id (str): the key of `/results/{id}`.
        file_name (str): the uploaded file's name.
        data (bytes): the uploaded file.
        height (int): image height after EXIF orientation.
        width (int): image width after EXIF orientation.
        boxes (np.ndarray): Nx4 XYXY float32.
        scores (np.ndarray): N float32, descending.
        classes (np.ndarray): N int64 contiguous class ids.
        rles (list[dict] | None): N COCO RLEs from `masks_to_rles`, encoded once when the image
            was predicted; None for a box-only model.
    """

    id: str
    file_name: str
    data: bytes
    height: int
    width: int
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    rles: list | None

    def nbytes(self) -> int:
        """Approximate memory held, for the cache's budget."""
        masks = sum(len(rle["counts"]) for rle in self.rles or [])
        return len(self.data) + masks + self.boxes.nbytes + 16 * len(self.scores)


def safe_file_name(name: str | None) -> str:
    """Returns an upload's base name with only word characters, dots, dashes and spaces."""
    base = os.path.basename((name or "").replace("\\", "/"))
    return _UNSAFE_NAME.sub("_", base)[:120] or "upload"


def compact_instances(instances: Instances) -> dict:
    """Turns one image's CPU predictions into arrays and RLE masks (dense masks are dropped).

    Args:
        instances (Instances): the predictions of one image.
    """
    rles = masks_to_rles(instances.pred_masks) if instances.has("pred_masks") else None
    return {
        "boxes": instances.pred_boxes.tensor.numpy().astype(np.float32),
        "scores": instances.scores.numpy().astype(np.float32),
        "classes": instances.pred_classes.numpy().astype(np.int64),
        "rles": rles,
    }


class PredictionService:
    """A `Predictor` behind a bounded batching queue, with a small cache of recent answers.

    Args:
        predictor (Predictor): the model; its confidence threshold is the lowest score the
            service keeps (`min_score`); answers are filtered from it per request.
        config_file (str): the config the predictor was built from, shown by `GET /model`.
        score_threshold (float): the default threshold of answers.
        max_upload_bytes (int): larger uploads are refused.
        max_pixels (int): images with more pixels are refused before they are decoded.
        capacity (int): requests admitted at once (see `BatchQueue`).
        cache_size (int): answers kept for re-filtering, the least recently used dropped first
            (`AnswerCache`).
        cache_bytes (int): memory budget of those answers.
        keep_seconds (float): an answer (and its upload) is forgotten this long after it was
            made, however few there are: patient images do not linger in memory.
        clock (Callable[[], float]): seconds, for the expiry; `time.monotonic`.
    """

    def __init__(
        self,
        predictor,
        *,
        config_file: str = "",
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        max_upload_bytes: int = 20 << 20,
        max_pixels: int = 25_000_000,
        capacity: int = 8,
        cache_size: int = 32,
        cache_bytes: int = 256 << 20,
        keep_seconds: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.predictor = predictor
        self.min_score = float(predictor.score_threshold)
        self.score_threshold = max(score_threshold, self.min_score)
        self.max_upload_bytes = max_upload_bytes
        self.max_pixels = max_pixels
        self.batches = BatchQueue(
            self._forward, batch_size=max(1, predictor.cfg.TEST.IMS_PER_BATCH), capacity=capacity
        )
        self._answers = AnswerCache(cache_size, cache_bytes, keep_seconds, clock)
        weights = predictor.cfg.MODEL.WEIGHTS
        self.model_info = {
            "classes": list(predictor.class_names),
            "tooth_classes": list(predictor.cfg.DENTAL.FINDINGS.TOOTH_CLASSES),
            "config_file": config_file,
            "weights": weights,
            "weights_sha256": predictor.weights_sha256,
            "device": str(predictor.cfg.MODEL.DEVICE),
            "batch_size": self.batches.batch_size,
            "queue_capacity": capacity,
            "min_score": self.min_score,
            "score_threshold": self.score_threshold,
            "max_upload_mb": round(max_upload_bytes / (1 << 20), 2),
            "max_megapixels": round(max_pixels / 1e6, 2),
            "keep_minutes": round(keep_seconds / 60, 2),
        }

    def _forward(self, images: list) -> list[dict]:
        # Runs on the batching thread; dense masks are compacted before the next batch.
        return [compact_instances(i) for i in self.predictor.predict_batch(images)]

    def decode(self, data: bytes, name: str) -> np.ndarray:
        """Decodes an upload to HxWx3 BGR as the other tools read files (see `decode_image`)."""
        return decode_image(data, name, format="BGR", max_pixels=self.max_pixels)

    def store(self, name: str, data: bytes, image: np.ndarray, compact: dict) -> StoredPrediction:
        """Caches one image's predictions (from the batching queue) and returns them."""
        stored = StoredPrediction(
            uuid.uuid4().hex, name, data, image.shape[0], image.shape[1], **compact
        )
        self._answers.add(stored.id, stored)
        return stored

    def get(self, prediction_id: str) -> StoredPrediction:
        """Returns a cached prediction.

        Raises:
            KeyError: when it was never made, has expired or has been dropped from the cache.
        """
        return self._answers.get(prediction_id)

    def threshold(self, requested: float | None) -> float:
        """The threshold an answer uses: the default when None, never below `min_score`."""
        return self.score_threshold if requested is None else max(requested, self.min_score)

    def instances(
        self, stored: StoredPrediction, threshold: float, masks: bool = True
    ) -> Instances:
        """Rebuilds the predictions that score `threshold` or more.

        Args:
            stored (StoredPrediction): the image's predictions.
            threshold (float): the least score kept (a score equal to it is kept).
            masks (bool): decode the RLE masks into `pred_masks`; False leaves them out.
        """
        keep = np.nonzero(stored.scores >= threshold)[0]
        instances = Instances((stored.height, stored.width))
        instances.pred_boxes = Boxes(torch.from_numpy(stored.boxes[keep].reshape(-1, 4)))
        instances.scores = torch.from_numpy(stored.scores[keep])
        instances.pred_classes = torch.from_numpy(stored.classes[keep])
        if masks and stored.rles is not None:
            dense = np.zeros((len(keep), stored.height, stored.width), dtype=bool)
            if len(keep):
                dense = mask_util.decode([stored.rles[k] for k in keep]).transpose(2, 0, 1)
            instances.pred_masks = torch.from_numpy(dense.astype(bool))
        return instances

    def annotations(self, stored: StoredPrediction, threshold: float) -> list[dict]:
        """COCO annotations of the predictions scoring `threshold` or more.

        The masks are the RLEs encoded once, when the image was predicted: they are not decoded
        and encoded again for each answer.
        """
        keep = np.nonzero(stored.scores >= threshold)[0]
        rles = None if stored.rles is None else [stored.rles[k] for k in keep]
        boxes_only = self.instances(stored, threshold, masks=False)
        return instances_to_coco_annotations(boxes_only, image_id=1, rles=rles)

    def answer(
        self, stored: StoredPrediction, threshold: float, overlay: bool = False, image=None
    ) -> dict:
        """The JSON answer: instances (COCO annotations with class names), counts, findings and,
        with `overlay`, the overlay as base64 PNG; the masks are decoded once for both.

        Args:
            stored (StoredPrediction): the image's predictions.
            threshold (float): only instances scoring it or more are included.
            overlay (bool): add `overlay_png`.
            image (np.ndarray | None): the decoded BGR image, when the caller still has it.
        """
        instances = self.instances(stored, threshold)
        findings = self.predictor.findings(instances)
        names = self.predictor.class_names
        annotations = self.annotations(stored, threshold)
        for annotation in annotations:
            annotation["class"] = names[annotation["category_id"] - 1]
        counts = dict.fromkeys(names, 0)
        for annotation in annotations:
            counts[annotation["class"]] += 1
        answer = {
            "id": stored.id,
            "file_name": stored.file_name,
            "height": stored.height,
            "width": stored.width,
            "score_threshold": threshold,
            "min_score": self.min_score,
            "instances": annotations,
            "counts": counts,
            "findings": findings_to_dict(findings, threshold),
        }
        if overlay:
            png = self._overlay_png(stored, instances, findings, threshold, image)
            answer["overlay_png"] = base64.b64encode(png).decode("ascii")
        return answer

    def overlay_png(self, stored: StoredPrediction, threshold: float, image=None) -> bytes:
        """Draws the overlay as `tools/visualize.py` does and encodes it as PNG.

        Args:
            stored (StoredPrediction): the image's predictions.
            threshold (float): only instances scoring it or more are drawn.
            image (np.ndarray | None): the decoded BGR image, when the caller still has it.
        """
        instances = self.instances(stored, threshold)
        findings = self.predictor.findings(instances)
        return self._overlay_png(stored, instances, findings, threshold, image)

    def _overlay_png(self, stored, instances, findings, threshold: float, image=None) -> bytes:
        if image is None:
            image = self.decode(stored.data, stored.file_name)
        overlay_rgb = self.predictor.draw(image, instances, findings, threshold)
        ok, encoded = cv2.imencode(".png", np.ascontiguousarray(overlay_rgb[:, :, ::-1]))
        if not ok:
            raise DentalError(f"{stored.file_name}: the overlay could not be encoded as PNG")
        return encoded.tobytes()

    def coco_json(self, stored: StoredPrediction, threshold: float) -> dict:
        """The image's predictions as a COCO dataset, the format of predictions.coco.json."""
        image = {"id": 1, "file_name": stored.file_name}
        image.update(height=stored.height, width=stored.width)
        annotations = self.annotations(stored, threshold)
        return coco_dataset([image], annotations, self.predictor.class_names)

    def close(self):
        """Stops the batching thread."""
        self.batches.close()
