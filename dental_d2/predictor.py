"""A batched predictor for notebooks and tools: images in, Instances, findings and overlays out."""

import logging
import os
from collections.abc import Sequence

import numpy as np
from detectron2.config import CfgNode
from detectron2.data.catalog import Metadata
from detectron2.structures import Instances

from .config import DEFAULT_SCORE_THRESHOLD, fall_back_to_cpu, keeping_scores_from
from .data import read_image
from .errors import DentalError
from .export import apply_export_metadata, read_export_metadata
from .findings import Findings, findings_from_instances, summarize
from .loading import config_for_weights
from .runtime import build_runtime
from .visualize import build_metadata, draw_instances
from .weights import WeightsFile, model_class_names, registered_metadata
from .weights_kind import EXPORT

logger = logging.getLogger(__name__)


def predictor_config(
    config_file: str | None,
    opts: Sequence[str],
    *,
    weights: str | None,
    confidence_threshold: float,
    device: str | None,
    require_weights: str | None,
) -> tuple[CfgNode, WeightsFile, dict | None]:
    """The frozen config of a `Predictor`, its weights read, and an export's `model.json`.

    The config the weights were trained with (stored in them) or the config file comes first,
    then `opts`, then `weights` and `device`; an exported model's `model.json` sets what the
    export fixed, and `opts` still win over it.

    Args:
        config_file (str | None): a dental YAML config; None for weights that carry their own
            (a checkpoint of the dental trainer, an exported model). Given with such weights,
            it must agree with theirs (`dental_d2.loading.config_for_weights`).
        opts (Sequence[str]): KEY VALUE config overrides.
        weights (str | None): `MODEL.WEIGHTS`; None keeps the config's.
        confidence_threshold (float): the least score kept.
        device (str | None): `MODEL.DEVICE`; None keeps the config's. CUDA falls back to the CPU
            when there is none.
        require_weights (str | None): what needs a trained model, refusing empty weights.

    Returns:
        tuple[CfgNode, WeightsFile, dict | None]: the config; `MODEL.WEIGHTS` read; the
        export's metadata, None for a checkpoint.
    """
    cfg, read = config_for_weights(
        config_file,
        opts,
        weights,
        doing=require_weights or "predicting",
        allow_empty=not require_weights,
    )
    metadata = read_export_metadata(read.path) if read.kind == EXPORT else None
    if metadata:
        apply_export_metadata(cfg, metadata)
        cfg.merge_from_list(list(opts))  # the command line still wins
        cfg.MODEL.WEIGHTS = read.path
    if device is not None:
        cfg.MODEL.DEVICE = device
    fall_back_to_cpu(cfg, "predicting")
    # The box head's own filter, so that its per-image top-k sees only the detections kept.
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = keeping_scores_from(confidence_threshold)
    if cfg.INPUT.FORMAT not in ("BGR", "RGB"):
        raise DentalError(
            f"{config_file or read.path}: INPUT.FORMAT {cfg.INPUT.FORMAT} is not supported; use "
            "BGR or RGB"
        )
    cfg.freeze()
    return cfg, read, metadata


def _drawing_metadata(cfg, class_names: list[str]) -> Metadata:
    """A registered dataset's metadata when it has these classes and colours, else new."""
    registered = registered_metadata(cfg)
    if (
        registered is not None
        and list(registered.thing_classes) == class_names
        and registered.get("thing_colors")
    ):
        return registered
    return build_metadata(class_names)


class Predictor:
    """Runs a dental Mask R-CNN on images, in batches of `TEST.IMS_PER_BATCH`.

    Like detectron2's `DefaultPredictor`, it loads `MODEL.WEIGHTS`, takes BGR images, resizes
    them with `ResizeShortestEdge(INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST)` and returns
    predictions at the original size; unlike it, it takes several images per forward pass and
    knows the class names, so it can also place lesions on teeth and draw overlays.

    A checkpoint written by the dental trainer holds the config it was trained with and its
    class names, so the weights alone make the predictor (`config_file` None); a config file
    given with them must agree with theirs on the keys that shape the model and its inputs.
    Weights that leave a model parameter unloaded, and weights that only start a training (an
    ImageNet backbone), are refused. For other checkpoints the class names come from
    `DENTAL.CLASS_NAMES`, else the metadata of a registered dataset in `DATASETS.TEST`/`TRAIN`
    (`dental_d2.weights.model_class_names`). `MODEL.WEIGHTS` is read once, for the config, the
    class names, the weights and its digest.

    `MODEL.WEIGHTS` may also be a model written by `tools/export_model.py`: a `.onnx` file runs
    with ONNX Runtime, a `.ts` file with TorchScript. Its `model.json` gives the classes, input
    format and test sizes, so `config_file` may then be None too.

    With `TEST.SLICED.ENABLED True` in `opts`, any of these runtimes also predicts a photo larger
    than `TEST.SLICED.TILE_SIZE` in overlapping tiles and merges their lesions with the whole
    photo's (`dental_d2.runtime.SlicedBackend`).

    Example::

        predictor = Predictor(None, weights="output/demo/model_final.pth")
        instances = predictor.predict("xray.jpg")
        print(predictor.findings(instances))
        overlay_rgb = predictor.draw("xray.jpg", instances)

    Args:
        config_file (str | None): a dental YAML config; None for weights that carry their own
            (the dental trainer's checkpoints, exported models).
        weights (str | None): a checkpoint path or URL; None keeps `MODEL.WEIGHTS` of `opts`
            or the config.
            An empty `MODEL.WEIGHTS` gives a randomly initialised model (for tests).
        opts (Sequence[str]): KEY VALUE config overrides, applied after the weights' config or
            the file.
        confidence_threshold (float): detections scoring below this are dropped; one scoring
            exactly this is kept.
        device (str | None): "cpu", "cuda", "cuda:1"...; None keeps `MODEL.DEVICE`, falling
            back to the CPU when CUDA is not available.
        require_weights (str | None): refuse an empty `MODEL.WEIGHTS` with a `DentalError`
            saying that this (e.g. "visualizing") needs a trained model; None allows it (random
            weights, for tests).

    Attributes:
        cfg (CfgNode): the frozen config.
        score_threshold (float): the confidence threshold, the least score predicted.
        class_names (list[str]): the classes, in contiguous-id order.
        metadata (Metadata): class names and colours for drawing.
        weights_sha256 (str): the first 12 hex digits of `MODEL.WEIGHTS`'s SHA-256 ("" for a
            URL or random weights).
        backend (dental_d2.runtime.Backend): the runtime, `TorchBackend`, `OnnxBackend` or
            `TorchScriptBackend`, wrapped in `SlicedBackend` when `TEST.SLICED.ENABLED` (large
            photos are predicted whole and in overlapping tiles); it prepares the model's inputs.
        model (nn.Module | None): the PyTorch model, in eval mode (with `TEST.AUG.ENABLED`,
            detectron2's `GeneralizedRCNNWithTTA`); None for an exported one.
    """

    def __init__(
        self,
        config_file: str | None,
        weights: str | None = None,
        opts: Sequence[str] = (),
        confidence_threshold: float = DEFAULT_SCORE_THRESHOLD,
        device: str | None = None,
        require_weights: str | None = None,
    ):
        self.cfg, read, export_metadata = predictor_config(
            config_file,
            opts,
            weights=weights,
            confidence_threshold=confidence_threshold,
            device=device,
            require_weights=require_weights,
        )
        self.score_threshold = confidence_threshold
        self.weights_sha256 = read.sha256
        self.class_names = model_class_names(self.cfg, config_file, checkpoint=read.checkpoint)
        self.metadata = _drawing_metadata(self.cfg, self.class_names)
        self.backend = build_runtime(
            self.cfg, read, confidence_threshold, export_metadata, self.class_names
        )
        self.model = getattr(self.backend, "model", None)
        if not self.cfg.MODEL.WEIGHTS:
            logger.warning("MODEL.WEIGHTS is empty: the model has random weights")

    def predict(self, image) -> Instances:
        """Predicts one image.

        Args:
            image (str | np.ndarray): a path, or an HxWx3 BGR uint8 array (HxW grayscale is
                accepted too).

        Returns:
            Instances: `pred_boxes`, `scores`, `pred_classes`, `pred_masks` at the image's size,
            on the CPU.
        """
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Sequence) -> list[Instances]:
        """Predicts images, `TEST.IMS_PER_BATCH` per forward pass.

        Args:
            images (Sequence[str | np.ndarray]): paths or HxWx3 BGR uint8 arrays.

        Returns:
            list[Instances]: one per image, in order, on the CPU.
        """
        images = [self._load(image) for image in images]
        batch_size = max(1, self.cfg.TEST.IMS_PER_BATCH)
        results = []
        for start in range(0, len(images), batch_size):
            results.extend(self.backend(images[start : start + batch_size]))
        return results

    def findings(self, instances: Instances) -> Findings:
        """Places the lesions of one image's predictions on its teeth.

        Uses `DENTAL.FINDINGS.TOOTH_CLASSES` and `DENTAL.FINDINGS.MIN_OVERLAP`; see
        `dental_d2.findings.assign_findings`.

        Args:
            instances (Instances): the predictions of one image.
        """
        return findings_from_instances(
            instances,
            self.class_names,
            tooth_classes=self.cfg.DENTAL.FINDINGS.TOOTH_CLASSES,
            min_overlap=self.cfg.DENTAL.FINDINGS.MIN_OVERLAP,
        )

    def draw(
        self,
        image,
        instances: Instances,
        findings: Findings | None = None,
        score_threshold: float | None = None,
    ) -> np.ndarray:
        """Draws predictions and the one-line findings summary on an image.

        Args:
            image (str | np.ndarray): a path or an HxWx3 BGR uint8 array.
            instances (Instances): the image's predictions.
            findings (Findings | None): `findings(instances)` when the caller has them; None
                computes them.
            score_threshold (float | None): the least score among `instances`, for the summary;
                None means `score_threshold`, the predictor's.

        Returns:
            np.ndarray: the overlay, RGB uint8: the findings band above the photo, which is
            enlarged when small (`dental_d2.drawing.drawn_scale`).
        """
        if findings is None:
            findings = self.findings(instances)
        if score_threshold is None:
            score_threshold = self.score_threshold
        return draw_instances(
            self._load(image)[:, :, ::-1],
            instances,
            self.metadata,
            findings=findings,
            summary=summarize(findings, score_threshold),
        )

    @staticmethod
    def _load(image) -> np.ndarray:
        if isinstance(image, str | os.PathLike):
            return read_image(os.fspath(image), format="BGR")
        image = np.asarray(image)
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"expected an HxWx3 BGR uint8 image, got shape {image.shape} dtype {image.dtype}"
            )
        return image
