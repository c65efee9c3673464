"""int8 export: ONNX Runtime's static quantization of the exported graph, calibrated on photos.

ONNX Runtime's `quantize_static` does the work (QDQ format, per-channel int8 weights, uint8
activations with ranges from calibration); what it lacks is reading calibration photos the way
the runtime prepares them and naming, by module, the layers kept in float.
"""

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..data import read_image
from ..data.image_files import collect_images, relative_names
from ..errors import DentalError
from ..file_io import write_bytes, write_json
from .exporter import INPUT_NAMES, METADATA_FILE, MODEL_FILES, export_model

logger = logging.getLogger(__name__)

# The operators quantized: the convolutions and fully connected layers hold nearly all the
# multiply-adds (docs/speed.md); RoIAlign, NMS and the rest stay in float.
QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")
# The model's last layers, whose outputs are the detections themselves, stay in float: the box
# head's class scores and box deltas, the RPN's box deltas and the mask logits. Measured on a
# trained Lite0 (docs/speed.md): each costs little time and quantizing them moves boxes and
# scores more than the rest of the network together.
FLOAT_MODULES = (
    "roi_heads.box_predictor",
    "roi_heads.mask_head.predictor",
    "proposal_generator.rpn_head.anchor_deltas",
)
# Photos calibrated on by default: enough for stable ranges, a minute or two on a CPU.
DEFAULT_CALIBRATION_COUNT = 32
# What `model.json` says of a float export (which has no "precision" key) and of an int8 one.
FLOAT_PRECISION = "float32"
INT8_PRECISION = "int8"


@dataclass
class CalibrationPhotos:
    """The photos an int8 model is calibrated on.

    Attributes:
        folder (str): the folder they were taken from (absolute).
        paths (list[str]): the photos, in calibration order.
        sha256 (str): SHA-256 over their names and bytes, in order, to tell calibrations apart.
    """

    folder: str
    paths: list[str]
    sha256: str

    def describe(self) -> dict:
        """What `model.json` records: folder, count, digest and the photos' names."""
        return {
            "folder": self.folder,
            "count": len(self.paths),
            "sha256": self.sha256,
            "images": [os.path.relpath(path, self.folder) for path in self.paths],
        }


def calibration_photos(folder: str, count: int = DEFAULT_CALIBRATION_COUNT) -> CalibrationPhotos:
    """Picks the calibration photos of `folder`: `count` of them spread evenly over its sorted
    images (all when `count` is 0 or more than it has).

    Args:
        folder (str): a folder of photos, e.g. a training split.
        count (int): how many to use; 0 for all.

    Raises:
        DentalError: when `folder` is not a folder or holds no photo.
    """
    if not os.path.isdir(folder):
        raise DentalError(
            f"--calibration {folder}: no such folder; give a folder of training photos"
        )
    try:
        paths, _ = collect_images([folder])
    except DentalError as e:
        raise DentalError(
            f"--calibration {folder}: no photos in it; give a folder of training photos "
            "(JPEG, PNG, ...)"
        ) from e
    if count < 0:
        raise DentalError(f"--calibration-count {count}: give 0 (all photos) or more")
    if 0 < count < len(paths):
        # Evenly spread, so that a folder sorted by source or date is sampled across.
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, count).round().astype(int)]
    digest = hashlib.sha256()
    for name, path in zip(relative_names(paths), paths):
        digest.update(name.encode())
        with open(path, "rb") as f:
            digest.update(hashlib.sha256(f.read()).digest())
    return CalibrationPhotos(os.path.abspath(folder), paths, digest.hexdigest()[:12])


def _calibration_reader(photos: CalibrationPhotos, prepare: Callable[[np.ndarray], dict]):
    """ONNX Runtime's `CalibrationDataReader` over `photos`, each prepared by `prepare`."""
    from onnxruntime.quantization import CalibrationDataReader

    class PhotoReader(CalibrationDataReader):
        def __init__(self):
            self.remaining = iter(photos.paths)

        def get_next(self) -> dict | None:
            path = next(self.remaining, None)
            if path is None:
                return None
            image = prepare(read_image(path, format="BGR"))["image"]
            return {INPUT_NAMES[0]: np.ascontiguousarray(image.cpu().numpy(), dtype=np.float32)}

    return PhotoReader()


def float_nodes(model, modules: Sequence[str] = FLOAT_MODULES) -> list[str]:
    """The names of the graph's nodes that belong to `modules` and `QUANTIZED_OPS`.

    The TorchScript exporter names a node after the module path it ran in
    (`/roi_heads/box_predictor/cls_score/Gemm` for `roi_heads.box_predictor.cls_score`), with
    `_1`, `_2`... after a module called more than once (the RPN head, once per FPN level).

    Args:
        model (onnx.ModelProto): the float graph.
        modules (Sequence[str]): module paths of the detectron2 model, e.g.
            "roi_heads.box_predictor".

    Raises:
        DentalError: when a module names no node, so a typo cannot quantize what it meant to keep.
    """
    names = []
    for module in modules:
        pattern = re.compile("/" + "/".join(map(re.escape, module.split("."))) + r"(_\d+)?/")
        found = [
            node.name
            for node in model.graph.node
            if node.op_type in QUANTIZED_OPS and pattern.match(node.name)
        ]
        if not found:
            raise DentalError(
                f"module {module} has no {'/'.join(QUANTIZED_OPS)} node in the exported graph; "
                "name a module of the model (e.g. roi_heads.box_predictor)"
            )
        names += found
    return names


def prepare_for_quantization(float_path: str) -> str:
    """ONNX Runtime's pre-processing for quantization (its basic graph optimisations and ONNX
    shape inference), written beside `float_path`; returns the new file's path.

    Its symbolic shape inference is skipped: it cannot follow the detections' data-dependent
    counts through NMS and stops with "Incomplete symbolic shape inference".
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = os.path.splitext(float_path)[0] + ".prepared.onnx"
    quant_pre_process(float_path, prepared, skip_symbolic_shape=True)
    return prepared


def quantize_onnx(
    float_path: str,
    int8_path: str,
    reader,
    exclude: Sequence[str] = (),
    reduce_range: bool = False,
    cache: str | None = None,
) -> None:
    """ONNX Runtime's static quantization: QDQ, per-channel int8 weights, uint8 activations.

    Args:
        float_path (str): the float ONNX model.
        int8_path (str): where the quantized model goes.
        reader (CalibrationDataReader | None): the calibration inputs; None reads `cache`.
        exclude (Sequence[str]): node names left in float.
        cache (str | None): ONNX Runtime's calibration cache: the activation ranges are
            written there after calibrating, or read from it when it exists.
        reduce_range (bool): 7-bit weights, which ONNX Runtime advises for x86 CPUs without
            VNNI, whose 8-bit kernels can saturate.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    quantize_static(
        float_path,
        int8_path,
        reader,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(QUANTIZED_OPS),
        per_channel=True,
        reduce_range=reduce_range,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(exclude),
        calibrate_method=CalibrationMethod.MinMax,
        calibration_cache_path=cache,
    )


def _quantize_in(work: str, cfg, photos: CalibrationPhotos, prepare, exclude_modules, reduce_range):
    """Exports and quantizes in the folder `work`; returns the int8 file and the float nodes.

    The activation ranges come from an export that keeps every detection (score threshold 0):
    at the model's own threshold a photo without detections has no boxes for the mask head,
    whose GroupNorm graph then cannot run. Both exports have the same node and tensor names
    (only the threshold constant differs), so the ranges apply to the model's own export.
    """
    import onnx

    calibration_cfg = cfg.clone()
    calibration_cfg.defrost()
    calibration_cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    calibration_dir = os.path.join(work, "calibration")
    calibration_path = prepare_for_quantization(export_model(calibration_cfg, calibration_dir))
    float_path = prepare_for_quantization(export_model(cfg, work))
    exclude = float_nodes(onnx.load(float_path), exclude_modules)
    logger.info("calibrating int8 ranges on %d photos of %s", len(photos.paths), photos.folder)
    cache = os.path.join(work, "ranges.json")
    reader = _calibration_reader(photos, prepare)
    quantize_onnx(calibration_path, os.path.join(calibration_dir, "int8.onnx"), reader, exclude,
                  reduce_range, cache)  # fmt: skip
    int8_path = os.path.join(work, "int8.onnx")
    quantize_onnx(float_path, int8_path, None, exclude, reduce_range, cache)
    return int8_path, exclude


def export_int8(
    cfg,
    output_dir: str,
    calibration_dir: str,
    prepare: Callable[[np.ndarray], dict],
    count: int = DEFAULT_CALIBRATION_COUNT,
    float_modules: Sequence[str] = FLOAT_MODULES,
    reduce_range: bool = False,
) -> str:
    """Exports the model of `cfg` to ONNX and quantizes it to int8 in `output_dir/model.onnx`,
    with a `model.json` that says so and names the calibration photos.

    Args:
        cfg (CfgNode): as for `export_model`.
        output_dir (str): created if missing.
        calibration_dir (str): a folder of photos like those the model will see (training).
        prepare (Callable): the runtime's input preparation, `Backend(cfg).model_input`: a BGR
            photo in, a dict whose `image` is the graph's input out.
        count (int): calibration photos taken from `calibration_dir` (0 for all).
        float_modules (Sequence[str]): module paths kept in float.
        reduce_range (bool): 7-bit weights (see `quantize_onnx`).

    Returns:
        str: the path of the int8 model.
    """
    import onnxruntime

    photos = calibration_photos(calibration_dir, count)
    os.makedirs(output_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".int8-") as work:
        int8_path, exclude = _quantize_in(work, cfg, photos, prepare, float_modules, reduce_range)
        with open(os.path.join(work, METADATA_FILE), encoding="utf-8") as f:
            metadata = json.load(f)
        with open(int8_path, "rb") as f:
            path = os.path.join(output_dir, MODEL_FILES["onnx"])
            write_bytes(path, f.read())
    metadata["precision"] = INT8_PRECISION
    metadata["quantization"] = {
        "by": f"onnxruntime {onnxruntime.__version__} quantize_static",
        "format": "QDQ",
        "weights": "int8, per channel" + (", 7-bit range" if reduce_range else ""),
        "activations": "uint8, MinMax calibration on every detection (score threshold 0)",
        "operators": list(QUANTIZED_OPS),
        "float_modules": list(float_modules),
        "float_nodes": exclude,
        "calibration": photos.describe(),
    }
    write_json(os.path.join(output_dir, METADATA_FILE), metadata, indent=2)
    logger.info("wrote the int8 model %s", path)
    return path
