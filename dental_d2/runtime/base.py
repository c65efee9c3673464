"""What every runtime shares: BGR images in, detectron2's model inputs made, `Instances` out."""

import numpy as np
import torch
from detectron2.data import transforms as T
from detectron2.structures import Instances


class PredictorInput:
    """Makes detectron2's model input from one image as its `DefaultPredictor` does.

    The image is converted to `INPUT.FORMAT` and resized with
    `ResizeShortestEdge(INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST)`. Every runtime and anything
    else that feeds a model at test time (the TensorBoard pictures of training) goes through it,
    so that all of them see what evaluation sees.

    Args:
        cfg (CfgNode): the config of the model.
    """

    def __init__(self, cfg):
        self.input_format = cfg.INPUT.FORMAT
        self.device = cfg.MODEL.DEVICE
        self.resize = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )

    def __call__(self, image_bgr: np.ndarray) -> dict:
        """detectron2's model input for one HxWx3 BGR uint8 image: `image` (CHW float32,
        resized, on `MODEL.DEVICE`), `height` and `width` (the original size)."""
        height, width = image_bgr.shape[:2]
        # Resizing works channel by channel, so the channels are reordered after it, on the
        # smaller image, in the one pass that also transposes to CHW and converts to float32:
        # the same values as reordering first, with two fewer copies of the photo.
        resized = self.resize.get_transform(image_bgr).apply_image(image_bgr)
        if self.input_format == "RGB":
            resized = resized[:, :, ::-1]
        chw = np.ascontiguousarray(resized.transpose(2, 0, 1), dtype=np.float32)
        return {"image": torch.from_numpy(chw).to(self.device), "height": height, "width": width}


class Backend:
    """Prepares images with `PredictorInput` and runs a model on them.

    `run` takes the resulting model inputs and returns predictions at each image's original
    size.

    Args:
        cfg (CfgNode): the predictor's config.
    """

    name = ""

    def __init__(self, cfg):
        self.prepare = PredictorInput(cfg)
        self.input_format = cfg.INPUT.FORMAT

    def model_input(self, image_bgr: np.ndarray) -> dict:
        """`PredictorInput`'s model input for one HxWx3 BGR uint8 image."""
        return self.prepare(image_bgr)

    def run(self, inputs: list[dict]) -> list[Instances]:
        """Runs the model on `model_input`s; returns CPU `Instances` at the original sizes."""
        raise NotImplementedError

    def __call__(self, images_bgr: list[np.ndarray]) -> list[Instances]:
        """Predicts HxWx3 BGR uint8 images, in one forward pass where the runtime allows."""
        return self.run([self.model_input(image) for image in images_bgr])
