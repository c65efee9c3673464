"""PyTorch eager: detectron2's model with `MODEL.WEIGHTS` loaded, with detectron2's
test-time augmentation when `TEST.AUG.ENABLED`."""

import numpy as np
import torch
from detectron2.modeling import GeneralizedRCNN, GeneralizedRCNNWithTTA
from detectron2.structures import Instances

from ..errors import DentalError
from ..loading import load_model
from ..weights import WeightsFile
from .base import Backend


class TorchBackend(Backend):
    """detectron2's model in eval mode; with `TEST.AUG.ENABLED`, wrapped in
    `GeneralizedRCNNWithTTA` (flips and `TEST.AUG.MIN_SIZES`).

    Args:
        cfg (CfgNode): the predictor's config.
        weights (WeightsFile | None): `MODEL.WEIGHTS` already read; None reads it.

    Attributes:
        model (nn.Module): the model, or its TTA wrapper.
    """

    name = "pytorch"

    def __init__(self, cfg, weights: WeightsFile | None = None):
        super().__init__(cfg)
        model = load_model(cfg, weights)
        self.tta = cfg.TEST.AUG.ENABLED
        if self.tta:
            if not isinstance(model, GeneralizedRCNN):
                raise DentalError(
                    "TEST.AUG.ENABLED needs a PyTorch GeneralizedRCNN (not "
                    f"{cfg.MODEL.META_ARCHITECTURE}); set TEST.AUG.ENABLED False"
                )
            model = GeneralizedRCNNWithTTA(cfg, model).eval()
        self.model = model

    def model_input(self, image_bgr: np.ndarray) -> dict:
        if not self.tta:
            return super().model_input(image_bgr)
        # The TTA model resizes to each of TEST.AUG.MIN_SIZES itself, from the full image, in
        # numpy: the image stays on the CPU, uint8.
        image = image_bgr[:, :, ::-1] if self.input_format == "RGB" else image_bgr
        height, width = image.shape[:2]
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return {"image": tensor, "height": height, "width": width}

    def run(self, inputs: list[dict]) -> list[Instances]:
        with torch.no_grad():
            return [output["instances"].to("cpu") for output in self.model(inputs)]
