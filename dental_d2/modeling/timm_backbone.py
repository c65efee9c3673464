"""Any timm `features_only` model as a detectron2 backbone, under detectron2's FPN."""

import math

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool

from ..errors import DentalError

# MODEL.TIMM.NORM values: what happens to the backbone's pretrained BatchNorm layers.
NORMS = ("FrozenBN", "BN")


def feature_name(stride: int) -> str:
    """The name of the backbone output at this stride ("stride4", "stride8", ...)."""
    return f"stride{stride}"


class TimmBackbone(Backbone):
    """A timm model built with `features_only=True`, its outputs named by stride.

    Args:
        model_name (str): a timm model name, e.g. "tf_efficientnet_lite0".
        out_indices (list[int]): the timm feature levels returned (timm's `out_indices`).
        norm (str): "FrozenBN" keeps the BatchNorm statistics and affine parameters fixed
            (timm's `freeze_batch_norm_2d`: a detection batch is too small to estimate them);
            "BN" trains them.
        freeze_at (int): the stem and this many of the returned levels get no gradient; 0
            trains every layer.
        pretrained (bool): timm downloads its own ImageNet weights (needs internet). Without
            internet, name a local file in MODEL.WEIGHTS instead (see `imagenet_weights.py`).
    """

    def __init__(
        self,
        model_name: str,
        out_indices,
        norm: str = "FrozenBN",
        freeze_at: int = 0,
        pretrained: bool = False,
    ):
        super().__init__()
        import timm
        from timm.utils.model import freeze_batch_norm_2d

        if norm not in NORMS:
            raise DentalError(f"MODEL.TIMM.NORM is {norm!r}; use one of {list(NORMS)}")
        try:
            body = timm.create_model(
                model_name, pretrained=pretrained, features_only=True, out_indices=out_indices
            )
        except RuntimeError as e:  # timm: "Unknown model (name)"
            raise DentalError(
                f"MODEL.TIMM.NAME {model_name!r}: {e}; see timm.list_models() for the names"
            ) from e
        except (IndexError, AssertionError) as e:
            raise DentalError(
                f"MODEL.TIMM.OUT_INDICES {list(out_indices)} do not exist in {model_name} "
                f"({e}); use levels from 0 to its number of stages minus 1"
            ) from e
        self.model_name = model_name
        self.body = freeze_batch_norm_2d(body) if norm == "FrozenBN" else body
        info = body.feature_info
        self._out_features = [feature_name(stride) for stride in info.reduction()]
        self._out_feature_strides = dict(zip(self._out_features, info.reduction()))
        self._out_feature_channels = dict(zip(self._out_features, info.channels()))
        self._freeze_through(freeze_at, info.module_name())

    def _freeze_through(self, levels: int, module_names: list[str]) -> None:
        """Stops gradients for every parameter up to the end of the `levels`-th output level.

        timm has no notion of detectron2's FREEZE_AT; parameters are registered in forward
        order (stem first), so the ones before the level's last parameter are the ones to stop.
        """
        if levels <= 0:
            return
        if levels > len(module_names):
            raise DentalError(
                f"MODEL.TIMM.FREEZE_AT is {levels} but {self.model_name} returns only "
                f"{len(module_names)} levels; use 0 to {len(module_names)}"
            )
        # FeatureListNet (most timm models) flattens "stages.1" into "stages_1".
        last = module_names[levels - 1]
        prefixes = (last + ".", last.replace(".", "_") + ".")
        parameters = list(self.body.named_parameters())
        end = max(i for i, (name, _) in enumerate(parameters) if name.startswith(prefixes))
        for _, parameter in parameters[: end + 1]:
            parameter.requires_grad_(False)

    def forward(self, x):
        return dict(zip(self._out_features, self.body(x)))

    @property
    def size_divisibility(self) -> int:
        return max(self._out_feature_strides.values())

    def output_shape(self):
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }


def build_timm_backbone(cfg, input_shape: ShapeSpec) -> TimmBackbone:
    """The timm backbone of `cfg.MODEL.TIMM`."""
    timm_cfg = cfg.MODEL.TIMM
    if input_shape.channels != 3:
        raise DentalError(
            f"the timm backbone takes 3-channel images, not {input_shape.channels}; check "
            "MODEL.PIXEL_MEAN and MODEL.PIXEL_STD"
        )
    return TimmBackbone(
        timm_cfg.NAME,
        tuple(timm_cfg.OUT_INDICES),
        norm=timm_cfg.NORM,
        freeze_at=timm_cfg.FREEZE_AT,
        pretrained=timm_cfg.PRETRAINED,
    )


@BACKBONE_REGISTRY.register()
def build_timm_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """detectron2's FPN (with the P6 max-pool level) over the timm backbone of MODEL.TIMM.

    MODEL.FPN.IN_FEATURES names the timm levels by stride ("stride4" ... "stride32").
    """
    bottom_up = build_timm_backbone(cfg, input_shape)
    unknown = set(cfg.MODEL.FPN.IN_FEATURES) - set(bottom_up.output_shape())
    if unknown:
        raise DentalError(
            f"MODEL.FPN.IN_FEATURES names {sorted(unknown)}, which {cfg.MODEL.TIMM.NAME} with "
            f"OUT_INDICES {list(cfg.MODEL.TIMM.OUT_INDICES)} does not return; use "
            f"{list(bottom_up.output_shape())}"
        )
    strides = [bottom_up.output_shape()[name].stride for name in cfg.MODEL.FPN.IN_FEATURES]
    if any(math.log2(b) - math.log2(a) != 1 for a, b in zip(strides, strides[1:])):
        raise DentalError(
            f"MODEL.FPN.IN_FEATURES {list(cfg.MODEL.FPN.IN_FEATURES)} have strides {strides}; "
            "FPN needs consecutive powers of two"
        )
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
