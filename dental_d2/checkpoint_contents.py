"""What the dental trainer stores in every checkpoint beside the weights: the class names the
model predicts and the full config it was trained with, so that the weights alone describe their
model; and how they are read back."""

from .errors import DentalError

# Key of the class names in checkpoints written by DentalTrainer.
CLASS_NAMES_KEY = "dental_classes"
# Key of the full config (a YAML string) in checkpoints written by DentalTrainer.
CONFIG_KEY = "dental_config"


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


class ConfigCheckpointable:
    """A checkpointable holding the full config a model was trained with, as YAML, so the
    weights alone rebuild their model (`dental_d2.loading.config_for_weights`).

    `--resume` keeps the config of the command that resumes: loading it back does nothing.

    Args:
        cfg (CfgNode): the training's config, complete (class names filled in).
    """

    def __init__(self, cfg):
        self.yaml = cfg.dump()

    def state_dict(self):
        return {"yaml": self.yaml}

    def load_state_dict(self, state):
        pass


def training_checkpointables(cfg) -> dict:
    """What every checkpoint of the dental trainer holds beside the weights: the class names
    and the config, by their keys (`CLASS_NAMES_KEY`, `CONFIG_KEY`).

    Args:
        cfg (CfgNode): the training's config, with DENTAL.CLASS_NAMES filled in.
    """
    return {
        CLASS_NAMES_KEY: ClassNamesCheckpointable(cfg.DENTAL.CLASS_NAMES),
        CONFIG_KEY: ConfigCheckpointable(cfg),
    }


def class_names_in(checkpoint) -> list[str] | None:
    """Returns the class names a checkpoint written by DentalTrainer stores, in contiguous-id
    order, or None when it has none (a model-zoo or other trainer's checkpoint, or None)."""
    if not isinstance(checkpoint, dict):
        return None
    names = checkpoint.get(CLASS_NAMES_KEY, {}).get("thing_classes")
    return list(names) if names else None


def config_yaml_in(checkpoint) -> str | None:
    """Returns the config (YAML) a checkpoint written by DentalTrainer stores, or None when it
    has none (written before checkpoints carried their config, or by another trainer)."""
    if not isinstance(checkpoint, dict):
        return None
    text = checkpoint.get(CONFIG_KEY, {}).get("yaml")
    return text if isinstance(text, str) and text else None


def iteration_in(checkpoint) -> int | None:
    """Returns the training iteration a checkpoint written by the trainer stores, else None."""
    iteration = checkpoint.get("iteration") if isinstance(checkpoint, dict) else None
    return iteration if isinstance(iteration, int) else None
