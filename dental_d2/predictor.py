"""A batched predictor for notebooks and tools: images in, Instances, findings and overlays out."""

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.catalog import Metadata
from detectron2.modeling import GeneralizedRCNN, GeneralizedRCNNWithTTA
from detectron2.structures import Instances

from .config import DEFAULT_SCORE_THRESHOLD, build_config
from .data import read_image
from .errors import DentalError
from .export import apply_export_metadata, build_backend, exported_format, read_export_metadata
from .findings import Findings, findings_from_instances, summarize
from .model_config import (
    check_weights_exist,
    check_weights_given,
    fall_back_to_cpu,
    model_class_names,
)
from .visualize import build_metadata, draw_instances

logger = logging.getLogger(__name__)


class Predictor:
    """Runs a dental Mask R-CNN on images, in batches of `TEST.IMS_PER_BATCH`.

    Like detectron2's `DefaultPredictor`, it loads `MODEL.WEIGHTS`, takes BGR images, resizes
    them with `ResizeShortestEdge(INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST)` and returns
    predictions at the original size; unlike it, it takes several images per forward pass and
    knows the class names, so it can also place lesions on teeth and draw overlays.

    The class names come from the checkpoint (written by the dental trainer), else
    `DENTAL.CLASS_NAMES`, else the metadata of a registered dataset in `DATASETS.TEST`/`TRAIN`
    (`dental_d2.model_config.model_class_names`).

    `MODEL.WEIGHTS` may also be a model written by `tools/export_model.py`: a `.onnx` file runs
    with ONNX Runtime, a `.ts` file with TorchScript. Its `model.json` gives the classes, input
    format and test sizes, so `config_file` may then be None.

    Example::

        predictor = Predictor("configs/dental_r50.yaml", weights="output/model_final.pth")
        instances = predictor.predict("xray.jpg")
        print(predictor.findings(instances))
        overlay_rgb = predictor.draw("xray.jpg", instances)

    Args:
        config_file (str | None): a dental YAML config; may be None for an exported model.
        weights (str | None): a checkpoint path or URL; None keeps `MODEL.WEIGHTS` of the config.
            An empty `MODEL.WEIGHTS` gives a randomly initialised model (for tests).
        opts (Sequence[str]): KEY VALUE config overrides, applied after the file.
        confidence_threshold (float): detections scoring below this are dropped.
        device (str | None): "cpu", "cuda", "cuda:1"...; None keeps `MODEL.DEVICE`, falling
            back to the CPU when CUDA is not available.
        require_weights (str | None): refuse an empty `MODEL.WEIGHTS` with a `DentalError`
            saying that this (e.g. "visualizing") needs a trained model; None allows it.

    Attributes:
        cfg (CfgNode): the frozen config.
        score_threshold (float): the confidence threshold, the least score predicted.
        class_names (list[str]): the classes, in contiguous-id order.
        metadata (Metadata): class names and colours for drawing.
        model (nn.Module | None): the PyTorch model, in eval mode; None for an exported one.
        backend: the runtime, `dental_d2.export.TorchBackend`, `OnnxBackend` or
            `TorchScriptBackend`.
            With `TEST.AUG.ENABLED`, the PyTorch model is wrapped in detectron2's
            `GeneralizedRCNNWithTTA` (flips and `TEST.AUG.MIN_SIZES`).
    """

    def __init__(
        self,
        config_file: str,
        weights: str | None = None,
        opts: Sequence[str] = (),
        confidence_threshold: float = DEFAULT_SCORE_THRESHOLD,
        device: str | None = None,
        require_weights: str | None = None,
    ):
        cfg = build_config(config_file, opts)
        if weights is not None:
            cfg.MODEL.WEIGHTS = weights
        weights = cfg.MODEL.WEIGHTS
        if require_weights:
            check_weights_given(cfg, require_weights)
        check_weights_exist(cfg)
        metadata = read_export_metadata(weights) if exported_format(weights) else None
        if metadata:
            apply_export_metadata(cfg, metadata)
            cfg.merge_from_list(list(opts))  # the command line still wins
            cfg.MODEL.WEIGHTS = weights
        if device is not None:
            cfg.MODEL.DEVICE = device
        fall_back_to_cpu(cfg, "predicting")
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = confidence_threshold
        cfg.MODEL.RETINANET.SCORE_THRESH_TEST = confidence_threshold
        cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = confidence_threshold
        if cfg.INPUT.FORMAT not in ("BGR", "RGB"):
            raise DentalError(
                f"{config_file}: INPUT.FORMAT {cfg.INPUT.FORMAT} is not supported; use BGR or RGB"
            )

        self.score_threshold = confidence_threshold
        self.class_names = model_class_names(cfg, config_file)
        cfg.freeze()
        self.cfg = cfg
        self.metadata = self._metadata(cfg)

        self.backend = build_backend(cfg, metadata)
        if cfg.TEST.AUG.ENABLED:
            model = getattr(self.backend, "model", None)
            self.backend.model = self._with_tta(cfg, model, config_file)
        self.model = getattr(self.backend, "model", None)
        if not weights:
            logger.warning("MODEL.WEIGHTS is empty: the model has random weights")
        self.aug = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )

    def _metadata(self, cfg) -> Metadata:
        for name in (*cfg.DATASETS.TEST, *cfg.DATASETS.TRAIN):
            if name in MetadataCatalog.list():
                metadata = MetadataCatalog.get(name)
                if list(metadata.get("thing_classes", [])) == self.class_names and metadata.get(
                    "thing_colors"
                ):
                    return metadata
        return build_metadata(self.class_names)

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
            inputs = [self._model_input(image) for image in images[start : start + batch_size]]
            results.extend(self.backend(inputs))
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

    def draw(self, image, instances: Instances, score_threshold: float | None = None) -> np.ndarray:
        """Draws predictions and the one-line findings summary on an image.

        Args:
            image (str | np.ndarray): a path or an HxWx3 BGR uint8 array.
            instances (Instances): the image's predictions.
            score_threshold (float | None): the least score among `instances`, for the summary;
                None means `score_threshold`, the predictor's.

        Returns:
            np.ndarray: the overlay, HxWx3 RGB uint8.
        """
        findings = self.findings(instances)
        return draw_instances(
            self._load(image)[:, :, ::-1],
            instances,
            self.metadata,
            findings=findings,
            summary=summarize(
                findings, self.score_threshold if score_threshold is None else score_threshold
            ),
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

    @staticmethod
    def _with_tta(cfg, model, config_file: str):
        if not isinstance(model, GeneralizedRCNN):
            raise DentalError(
                f"{config_file}: TEST.AUG.ENABLED needs a PyTorch GeneralizedRCNN (not "
                f"{cfg.MODEL.META_ARCHITECTURE} or an exported model); set TEST.AUG.ENABLED False"
            )
        return GeneralizedRCNNWithTTA(cfg, model).eval()

    def _model_input(self, image_bgr: np.ndarray) -> dict:
        image = image_bgr[:, :, ::-1] if self.cfg.INPUT.FORMAT == "RGB" else image_bgr
        height, width = image.shape[:2]
        if self.cfg.TEST.AUG.ENABLED:
            # The TTA model resizes to each of TEST.AUG.MIN_SIZES itself, from the full image,
            # in numpy: the image stays on the CPU.
            tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
            return {"image": tensor, "height": height, "width": width}
        resized = self.aug.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)).astype("float32"))
        return {"image": tensor.to(self.cfg.MODEL.DEVICE), "height": height, "width": width}
