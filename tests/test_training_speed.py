"""The training-step options: channels-last convolutions and bfloat16 autocast on the CPU.

These test the mechanism (layouts, dtypes, the same answers); the speed is measured by
benchmarks/bench_train_step.py (docs/speed.md).
"""

import itertools

import numpy as np
import torch
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage
from support import CLASSES, DEMO_CONFIG, RANDOM_DEMO_MODEL

from dental_d2.config import build_config
from dental_d2.engine.accumulation import GradientAccumulationTrainer, build_step_trainer
from dental_d2.engine.trainer import DentalTrainer

LITE0 = "configs/dental_lite0.yaml"
# dental_lite0's model without its ImageNet weights, small enough for a test.
SMALL_LITE0 = [
    "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "DENTAL.CLASS_NAMES", str(CLASSES),
    "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128",
]  # fmt: skip


def _batch(size: int = 96) -> list[dict]:
    rng = np.random.default_rng(0)
    image = torch.as_tensor(rng.integers(0, 256, (3, size, size), dtype=np.uint8))
    instances = Instances((size, size))
    instances.gt_boxes = Boxes(torch.tensor([[10.0, 10.0, 60.0, 70.0], [20.0, 20.0, 30.0, 28.0]]))
    instances.gt_classes = torch.tensor([3, 0])
    masks = torch.zeros((2, size, size), dtype=torch.bool)
    masks[0, 10:70, 10:60] = True
    masks[1, 20:28, 20:30] = True
    instances.gt_masks = BitMasks(masks)
    return [{"image": image, "instances": instances}]


def test_channels_last_model_answers_as_the_nchw_one():
    torch.manual_seed(0)
    nchw = build_model(build_config(LITE0, [*SMALL_LITE0, "MODEL.CHANNELS_LAST", "False"])).eval()
    nhwc = build_model(build_config(LITE0, [*SMALL_LITE0, "MODEL.CHANNELS_LAST", "True"])).eval()
    nhwc.load_state_dict(nchw.state_dict())
    conv = nhwc.backbone.bottom_up.body.conv_stem.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert not nchw.backbone.bottom_up.body.conv_stem.weight.is_contiguous(
        memory_format=torch.channels_last
    )
    # Random heads find nothing at the default threshold: keep every box.
    for model in (nchw, nhwc):
        model.roi_heads.box_predictor.test_score_thresh = 0.0
    image = {"image": _batch()[0]["image"].float(), "height": 96, "width": 96}
    features = {}
    nhwc.backbone.register_forward_hook(lambda m, i, o: features.update(o))
    with torch.no_grad():
        a, b = nchw([image])[0]["instances"], nhwc([image])[0]["instances"]
    assert features["p2"].is_contiguous(memory_format=torch.channels_last)
    assert len(a) == len(b) > 0
    assert torch.allclose(a.pred_boxes.tensor, b.pred_boxes.tensor, atol=1e-3)
    assert torch.allclose(a.scores, b.scores, atol=1e-4)


def test_amp_on_the_cpu_trains_in_bfloat16_without_a_scaler():
    cfg = build_config(DEMO_CONFIG, [*RANDOM_DEMO_MODEL, "SOLVER.AMP.ENABLED", "True"])
    torch.manual_seed(0)
    model = DentalTrainer.build_model(cfg).train()
    optimizer = DentalTrainer.build_optimizer(cfg, model)
    trainer = build_step_trainer(cfg, model, itertools.repeat(_batch()), optimizer)
    assert isinstance(trainer, GradientAccumulationTrainer) and trainer.grad_scaler is None
    dtypes = []
    model.backbone.register_forward_hook(lambda m, i, o: dtypes.append(o["p2"].dtype))
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    with EventStorage(0) as trainer.storage:
        trainer.iter = 0
        trainer.run_step()
        loss = trainer.storage.history("total_loss").latest()
    assert dtypes == [torch.bfloat16]
    assert np.isfinite(loss)
    after = [p for p in model.parameters() if p.requires_grad]
    assert all(p.dtype == torch.float32 for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after))


def test_without_amp_or_accumulation_the_step_is_detectron2s():
    from detectron2.engine import SimpleTrainer

    cfg = build_config(DEMO_CONFIG, RANDOM_DEMO_MODEL)
    model = DentalTrainer.build_model(cfg)
    trainer = build_step_trainer(cfg, model, iter([]), DentalTrainer.build_optimizer(cfg, model))
    assert type(trainer) is SimpleTrainer
