"""The installed environment: the report, the model on CPU, and a side-effect-free import."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage
from support import LONGEST_FIRST

from dental_d2.collect_env import collect_env_info, compiled_ops_status


def test_collect_env_names_versions_and_compiled_ops():
    report = collect_env_info()
    for name in ("Python", "torch", "torchvision", "detectron2", "CUDA available"):
        assert name in report
    available, error = compiled_ops_status()
    if available:
        assert "available" in report and "unavailable" not in report
    else:
        assert "unavailable" in report and error in report
        assert "rotated boxes" in report


@pytest.mark.slow
def test_collect_env_module_runs():
    result = subprocess.run(
        [sys.executable, "-m", "dental_d2.collect_env"], capture_output=True, text=True, check=True
    )
    assert "detectron2" in result.stdout and "torch" in result.stdout


def test_tools_package_of_the_wheel_is_not_importable(tmp_path):
    # Run from an empty folder so the project's own tools/ is not on sys.path.
    result = subprocess.run(
        [sys.executable, "-c", "import tools"], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode != 0 and "No module named 'tools'" in result.stderr


def test_import_without_detectron2_fails_with_one_line():
    # A None in sys.modules makes Python find no detectron2, as where it is not installed.
    code = "import sys; sys.modules['detectron2'] = None; import dental_d2"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert "make install" in last_line and "detectron2" in last_line


def test_the_error_type_comes_without_torch():
    code = (
        "import sys; from dental_d2 import DentalError; "
        "print(sorted(m for m in ('torch', 'detectron2', 'matplotlib') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr


def test_the_package_gives_its_other_names_on_first_use():
    import dental_d2
    from dental_d2 import config, predictor

    assert dental_d2.Predictor is predictor.Predictor
    assert dental_d2.add_dental_config is config.add_dental_config
    assert set(dental_d2.__all__) <= set(dir(dental_d2))
    with pytest.raises(AttributeError, match="no attribute 'Predicter'"):
        dental_d2.Predicter  # noqa: B018


@pytest.mark.slow
def test_import_has_no_side_effects():
    code = (
        "from detectron2.data import DatasetCatalog; before = set(DatasetCatalog.list());"
        "import logging; handlers = len(logging.getLogger().handlers);"
        "import dental_d2, dental_d2.data, dental_d2.engine.trainer;"
        "assert set(DatasetCatalog.list()) == before, 'datasets registered on import';"
        "assert len(logging.getLogger().handlers) == handlers, 'logging configured on import';"
        "print('ok')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=os.path.dirname(__file__)
    )
    assert result.stdout.strip() == "ok", result.stderr


def _mask_rcnn_cfg():
    cfg = get_cfg()
    cfg.merge_from_file(
        model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml")
    )
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 4
    return cfg


def test_mask_rcnn_r50_fpn_trains_one_step_and_infers_on_cpu():
    torch.manual_seed(0)
    model = build_model(_mask_rcnn_cfg())
    image = torch.randint(0, 255, (3, 128, 160), dtype=torch.uint8)
    instances = Instances((128, 160))
    instances.gt_boxes = Boxes(torch.tensor([[10.0, 20.0, 70.0, 90.0]]))
    instances.gt_classes = torch.tensor([2])
    masks = torch.zeros(1, 128, 160, dtype=torch.bool)
    masks[0, 20:90, 10:70] = True
    instances.gt_masks = BitMasks(masks)

    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    with EventStorage(0):
        losses = model([{"image": image, "instances": instances}])
        total = sum(losses.values())
        total.backward()
        optimizer.step()
    assert {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())

    model.eval()
    with torch.no_grad():
        output = model([{"image": image, "height": 128, "width": 160}])[0]["instances"]
    assert output.image_size == (128, 160)
    assert {"pred_boxes", "scores", "pred_classes", "pred_masks"} <= set(output.get_fields())


def test_the_longest_test_files_run_first_and_exist(request):
    """A renamed or removed file in `LONGEST_FIRST` would silently lose its early start."""
    tests = Path(__file__).parent
    assert [name for name in LONGEST_FIRST if not (tests / name).is_file()] == []
    # conftest.py put them first in this session's collection, in that order.
    files = list(dict.fromkeys(item.path.name for item in request.session.items))
    named = [name for name in files if name in LONGEST_FIRST]
    assert files[: len(named)] == named == [n for n in LONGEST_FIRST if n in files]
