"""Evaluates a checkpoint on DATASETS.TEST without and with test-time augmentation (TEST.AUG.*)
and prints the metrics of both and the wall time per image.

.venv/bin/python benchmarks/bench_tta.py --weights model_final.pth \
    TEST.AUG.MIN_SIZES "(224, 256, 288)" OUTPUT_DIR output/bench_tta [KEY VALUE ...]
"""

import argparse
import time

from detectron2.data import DatasetCatalog
from detectron2.utils.logger import setup_logger

from dental_d2.engine.launch import prepare_dental_config
from dental_d2.engine.trainer import DentalTrainer
from dental_d2.loading import config_for_weights, load_model

ROWS = [("segm", "AP"), ("segm", "AP50"), ("bbox", "AP"), ("bbox", "AP50"),
        ("segm", "precision"), ("segm", "recall"), ("segm", "f1")]  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", help="only for weights that hold no config")
    parser.add_argument("--weights", required=True)
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    setup_logger(name="dental_d2")
    cfg, weights = config_for_weights(
        args.config_file, args.opts, args.weights, doing="evaluating with TTA"
    )
    cfg.TEST.AUG.ENABLED = True
    prepare_dental_config(cfg, eval_only=True, weights=weights)
    cfg.freeze()
    model = load_model(cfg, weights)
    num_images = sum(len(DatasetCatalog.get(name)) for name in cfg.DATASETS.TEST)

    start = time.perf_counter()
    plain = DentalTrainer.test(cfg, model)
    plain_time = (time.perf_counter() - start) / num_images
    start = time.perf_counter()
    tta = DentalTrainer.test_with_TTA(cfg, model)
    tta_time = (time.perf_counter() - start) / num_images

    print(f"{num_images} images of {', '.join(cfg.DATASETS.TEST)}; TEST.AUG.MIN_SIZES "
          f"{tuple(cfg.TEST.AUG.MIN_SIZES)}, FLIP {cfg.TEST.AUG.FLIP}")  # fmt: skip
    print("| metric | plain | TTA |\n|---|---|---|")
    for task, key in ROWS:
        print(f"| {task} {key} | {plain[task][key]:.3f} | {tta[task][key]:.3f} |")
    print(f"| s per image (evaluation wall time) | {plain_time:.2f} | {tta_time:.2f} |")


if __name__ == "__main__":
    main()
