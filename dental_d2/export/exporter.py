"""Exports a dental Mask R-CNN to ONNX or TorchScript, with a JSON that makes it self-describing.

The whole network is traced, RPN and ROI heads with their NMS and ROIAlign included, through
detectron2's `TracingAdapter`. What the trace cannot hold (resizing the image, pasting the 28x28
masks into it) stays in Python and is shared with the PyTorch path: see `dental_d2.runtime`.
"""

import io
import logging
import os
import warnings

import torch
from detectron2.export import TracingAdapter
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN

from ..config import keeping_scores_from
from ..errors import DentalError
from ..file_io import write_bytes, write_json
from ..loading import load_model
from ..weights import (
    WeightsFile,
    check_weights_exist,
    check_weights_given,
    model_class_names,
    read_weights,
)
from .group_norm import make_group_norms_traceable
from .metadata import INPUT_NAMES, METADATA_FILE, MODEL_FILES, OUTPUT_NAMES

logger = logging.getLogger(__name__)

# torchvision's RoIAlign with aligned=True exports from opset 16; NMS from opset 11.
ONNX_OPSET = 17


def _raw_detections(model, image: torch.Tensor):
    """The traced function: a CHW float image in, detections at the network's input size out."""
    (instances,) = model.inference([{"image": image}], do_postprocess=False)
    return (
        instances.pred_boxes.tensor,
        instances.scores,
        instances.pred_classes,
        instances.pred_masks,
    )


def export_metadata(cfg, fmt: str, class_names: list[str]) -> dict:
    """What a runtime needs besides the graph, so the file is usable without the config.

    Args:
        cfg (CfgNode): the exported model's config.
        fmt (str): "onnx" or "torchscript".
        class_names (list[str]): in contiguous-id order.
    """
    return {
        "format": fmt,
        "model_file": MODEL_FILES[fmt],
        "class_names": list(class_names),
        "input": {
            "name": INPUT_NAMES[0],
            "layout": "CHW float32, 0-255, resized by the caller",
            "format": cfg.INPUT.FORMAT,
        },
        "outputs": OUTPUT_NAMES,
        # Applied inside the graph; recorded for users of the raw file.
        "pixel_mean": list(cfg.MODEL.PIXEL_MEAN),
        "pixel_std": list(cfg.MODEL.PIXEL_STD),
        "min_size_test": cfg.INPUT.MIN_SIZE_TEST,
        "max_size_test": cfg.INPUT.MAX_SIZE_TEST,
        # Detections scoring below this were dropped inside the graph.
        "score_threshold": cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
        "detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
        "mask_threshold": 0.5,
        "onnx_opset": ONNX_OPSET if fmt == "onnx" else None,
        "weights": cfg.MODEL.WEIGHTS,
    }


def build_traceable_model(cfg, weights: WeightsFile | None = None) -> TracingAdapter:
    """Builds the model of `cfg` on the CPU with its weights, wrapped for tracing.

    The graph keeps detections scoring `MODEL.ROI_HEADS.SCORE_THRESH_TEST` or more.

    Args:
        cfg (CfgNode): a dental config; `MODEL.WEIGHTS` is loaded.
        weights (WeightsFile | None): `MODEL.WEIGHTS` already read; None reads it.
    """
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = keeping_scores_from(
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST
    )
    model = load_model(cfg, weights)
    # The mask head's GroupNorm must also run on a photo without detections.
    make_group_norms_traceable(model.roi_heads)
    # A mid-grey image with noise: its values only steer the trace, shapes stay dynamic.
    size = cfg.INPUT.MIN_SIZE_TEST
    generator = torch.Generator().manual_seed(0)
    sample = 128.0 + 32.0 * torch.randn(3, size, size, generator=generator)
    return TracingAdapter(model, sample.clamp(0, 255), _raw_detections).eval()


def _serialize(adapter: TracingAdapter, fmt: str) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # Each Python branch on a shape gets a TracerWarning; detectron2 keeps those branches
        # shape-independent for tracing, and the parity tests check other sizes.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        _trace_into(adapter, fmt, buffer)
    return buffer.getvalue()


def _trace_into(adapter: TracingAdapter, fmt: str, buffer: io.BytesIO) -> None:
    if fmt == "onnx":
        torch.onnx.export(
            adapter,
            adapter.flattened_inputs,
            buffer,
            dynamo=False,  # the TorchScript-based exporter: the traced graph, NMS and RoIAlign
            opset_version=ONNX_OPSET,
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
            dynamic_axes={
                "image": {1: "height", 2: "width"},
                **{name: {0: "detections"} for name in OUTPUT_NAMES},
            },
        )
    else:
        traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
        torch.jit.save(traced, buffer)


def export_model(
    cfg, output_dir: str, fmt: str = "onnx", weights: WeightsFile | None = None
) -> str:
    """Exports the model of `cfg` to `output_dir/model.onnx` (or `.ts`) and `model.json`.

    Args:
        cfg (CfgNode): a dental config whose `MODEL.WEIGHTS` is the checkpoint to export
            (`dental_d2.loading.config_for_weights` makes it from the checkpoint alone).
            `MODEL.ROI_HEADS.SCORE_THRESH_TEST` (the least score kept) and
            `TEST.DETECTIONS_PER_IMAGE` are fixed in the graph.
        output_dir (str): created if missing.
        fmt (str): "onnx" or "torchscript".
        weights (WeightsFile | None): `MODEL.WEIGHTS` already read; None reads it.

    Returns:
        str: the path of the exported model.
    """
    if fmt not in MODEL_FILES:
        raise DentalError(f"unknown export format {fmt!r}; use one of {sorted(MODEL_FILES)}")
    architecture = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    if not issubclass(architecture, GeneralizedRCNN) or not cfg.MODEL.MASK_ON:
        raise DentalError(
            f"MODEL.META_ARCHITECTURE {cfg.MODEL.META_ARCHITECTURE} with MASK_ON "
            f"{cfg.MODEL.MASK_ON}: only Mask R-CNN (DentalRCNN or GeneralizedRCNN, MASK_ON True) "
            "is exported"
        )
    check_weights_given(cfg, "exporting", allow_empty=True)
    if weights is None:
        check_weights_exist(cfg)
        weights = read_weights(cfg)
    class_names = model_class_names(cfg, from_registered=False, checkpoint=weights.checkpoint)
    if not cfg.MODEL.WEIGHTS:
        logger.warning("MODEL.WEIGHTS is empty: exporting a model with random weights")
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, MODEL_FILES[fmt])
    logger.info("tracing the model for %s export", fmt)
    write_bytes(path, _serialize(build_traceable_model(cfg, weights), fmt))
    write_json(
        os.path.join(output_dir, METADATA_FILE),
        export_metadata(cfg, fmt, class_names),
        indent=2,
    )
    logger.info("wrote %s and %s", path, os.path.join(output_dir, METADATA_FILE))
    return path
