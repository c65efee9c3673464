"""Every non-base config under configs/ loads and builds its model (DensePose's test_setup)."""

from pathlib import Path

import pytest
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from dental_d2.config import add_dental_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.yaml") if not p.name.startswith("Base-"))


def _load(path):
    cfg = get_cfg()
    add_dental_config(cfg)
    cfg.merge_from_file(str(path))
    return cfg


def test_configs_are_found():
    names = {p.name for p in CONFIGS}
    assert {"dental_r50.yaml", "dental_demo_cpu.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_config_loads(path):
    cfg = _load(path)
    assert cfg.MODEL.MASK_ON
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 4
    assert cfg.DATASETS.TRAIN == ("dental_train",)
    assert cfg.DATASETS.VALIDATION == ("dental_valid",)
    assert cfg.DATASETS.TEST == ("dental_test",)
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    assert model.roi_heads.num_classes == 4


def test_reference_schedule():
    cfg = _load(CONFIG_DIR / "dental_r50.yaml")
    assert cfg.MODEL.RESNETS.DEPTH == 50
    assert cfg.SOLVER.BASE_LR == 0.001 and cfg.SOLVER.IMS_PER_BATCH == 2
    assert cfg.SOLVER.MAX_EPOCHS == 50 and cfg.TEST.IMS_PER_BATCH == 8
    assert cfg.SOLVER.EARLY_STOPPING.PATIENCE == 5
    assert cfg.SOLVER.LR_SCHEDULER_NAME == "ReduceLROnPlateau"
    assert (cfg.SOLVER.PLATEAU.FACTOR, cfg.SOLVER.PLATEAU.PATIENCE) == (0.1, 3)
    assert cfg.MODEL.WEIGHTS.startswith("detectron2://COCO-InstanceSegmentation/mask_rcnn_R_50_FPN")


def test_demo_config_trains_from_scratch():
    cfg = _load(CONFIG_DIR / "quick_schedules" / "dental_demo_cpu.yaml")
    assert cfg.MODEL.WEIGHTS == "" and cfg.MODEL.DEVICE == "cpu"
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 0 and cfg.MODEL.RESNETS.NORM == "GN"


def test_unknown_key_is_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        f'_BASE_: "{CONFIG_DIR / "dental_r50.yaml"}"\nSOLVER:\n  EARLY_STOPING:\n    PATIENCE: 1\n'
    )
    with pytest.raises(KeyError, match="EARLY_STOPING"):
        _load(bad)


def test_gpu_recipe_trains_the_cpu_recipes_model():
    """What the GPU config trains is the model the CPU config trains (and a clinic PC runs)."""
    cpu = _load(CONFIG_DIR / "dental_lite0.yaml")
    gpu = _load(CONFIG_DIR / "dental_lite0_gpu.yaml")
    assert gpu.MODEL.DEVICE == "cuda" and gpu.SOLVER.AMP.ENABLED
    # detectron2's linear scaling rule: the learning rate per image is the CPU recipe's.
    per_image = [cfg.SOLVER.BASE_LR / cfg.SOLVER.IMS_PER_BATCH for cfg in (cpu, gpu)]
    assert per_image[1] == pytest.approx(per_image[0])
    gpu.MODEL.DEVICE = "cpu"
    shapes = [
        {name: tuple(value.shape) for name, value in build_model(cfg).state_dict().items()}
        for cfg in (cpu, gpu)
    ]
    assert shapes[0] == shapes[1]
    assert gpu.INPUT.dump() == cpu.INPUT.dump()
