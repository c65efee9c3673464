"""Class names saved inside checkpoints, so a trained model carries the classes it predicts."""

import logging
import os

import torch

from .errors import DentalError

logger = logging.getLogger(__name__)

# Key of the class names in checkpoints written by DentalTrainer.
CLASS_NAMES_KEY = "dental_classes"


class ClassNamesCheckpointable:
    """A checkpointable holding the class names, in contiguous-id order, that a model predicts.

    Registered with the trainer's checkpointer, it is saved in every checkpoint; on `--resume`
    it refuses a checkpoint trained on other classes.

    Args:
        class_names (list[str]): the model's classes, in contiguous-id order.
    """

    def __init__(self, class_names):
        self.class_names = list(class_names)

    def state_dict(self):
        return {"thing_classes": list(self.class_names)}

    def load_state_dict(self, state):
        saved = list(state.get("thing_classes", []))
        if saved != self.class_names:
            raise DentalError(
                f"the checkpoint being resumed was trained on classes {saved}, but the data has "
                f"{self.class_names}: resume with the same data or start a new OUTPUT_DIR"
            )


def read_class_names(weights_path: str) -> list[str] | None:
    """Returns the class names stored in a checkpoint written by DentalTrainer.

    Args:
        weights_path (str): a `.pth` checkpoint. Other files (detectron2's model-zoo `.pkl`,
            checkpoints from other trainers) hold no class names.

    Returns:
        list[str] | None: the class names in contiguous-id order, or None when the file has none.
    """
    if not weights_path or not weights_path.endswith(".pth") or not os.path.isfile(weights_path):
        return None
    try:
        checkpoint = torch.load(weights_path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file: name it instead of a pickle traceback
        raise DentalError(
            f"{weights_path}: cannot be read as a PyTorch checkpoint ({e}); "
            "point MODEL.WEIGHTS at a model_*.pth written by tools/train_net.py"
        ) from e
    if not isinstance(checkpoint, dict):
        return None
    names = checkpoint.get(CLASS_NAMES_KEY, {}).get("thing_classes")
    return list(names) if names else None
