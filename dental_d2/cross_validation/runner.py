"""K-fold cross-validation: one training run per fold, each in its own process, resumable."""

import json
import logging
import multiprocessing
import os
from collections.abc import Sequence

from ..checkpoint import checkpoint_iteration
from ..config import build_config
from ..engine.launch import argument_parser, launch_from_args
from ..errors import DentalError
from ..file_io import write_json
from .splits import fold_assignments, fold_layout, pool_images, write_fold_export
from .summary import fold_metrics, summarize_folds, write_summary

__all__ = ["CV_FOLDER", "FoldRun", "cross_validate"]

logger = logging.getLogger(__name__)

# Sub-folder of OUTPUT_DIR that holds the folds and the summary.
CV_FOLDER = "cv"
# The images of each fold, kept so that a resumed run trains on the same folds.
PLAN_FILE = "folds.json"


class FoldRun:
    """Where fold `index` (0-based) of a cross-validation keeps its data, weights and metrics.

    Args:
        cv_dir (str): the `OUTPUT_DIR/cv` folder.
        index (int): the fold, 0..K-1; its folder and dataset names count from 1.
        dataset_name (str): the config's `DENTAL.DATASET_NAME`.
    """

    def __init__(self, cv_dir: str, index: int, dataset_name: str):
        self.index = index
        self.folder = os.path.join(cv_dir, f"fold_{index + 1}")
        self.data_root = os.path.join(self.folder, "data")
        self.dataset_name = f"{dataset_name}_cv{index + 1}"
        self.valid_name = f"{self.dataset_name}_valid"
        self.test_name = f"{self.dataset_name}_test"
        self.metrics_file = os.path.join(self.folder, "eval", self.test_name, "metrics.json")

    def finished(self) -> bool:
        """True when the fold's final weights exist and were evaluated (metrics no older)."""
        final = os.path.join(self.folder, "model_final.pth")
        if not (os.path.isfile(final) and os.path.isfile(self.metrics_file)):
            return False
        return os.stat(self.metrics_file).st_mtime_ns >= os.stat(final).st_mtime_ns

    def started(self) -> bool:
        """True when the fold has a checkpoint to resume from."""
        return os.path.isfile(os.path.join(self.folder, "last_checkpoint"))

    def train_argv(self, config_file: str, opts: Sequence[str], num_gpus: int) -> list[str]:
        """tools/train_net.py's arguments for this fold: its data, folder and dataset names.

        `--resume` continues a half-trained fold and starts a new one from `MODEL.WEIGHTS`.
        The fold's valid split (a part of the other folds) is `DATASETS.VALIDATION`: it
        chooses `model_best.pth` and stops training early. The fold itself is
        `DATASETS.TEST`, scored once after training with the weights valid chose, so its
        scores are on images that chose nothing.
        """
        train, valid = f"('{self.dataset_name}_train',)", f"('{self.valid_name}',)"
        return [
            "--config-file", config_file, "--resume", "--num-gpus", str(num_gpus), *opts,
            "DENTAL.DATA_ROOT", self.data_root, "DENTAL.DATASET_NAME", self.dataset_name,
            "OUTPUT_DIR", self.folder, "DATASETS.TRAIN", train,
            "DATASETS.VALIDATION", valid, "DATASETS.TEST", f"('{self.test_name}',)",
        ]  # fmt: skip

    def scored_weights(self) -> str:
        """The checkpoint whose scores `metrics_file` holds, as training chose it (model_best.pth
        when validation saved one): "model_best.pth (iteration N)" or "model_final.pth ...",
        N the iterations completed, as the training log counts them."""
        for name in ("model_best.pth", "model_final.pth"):
            # A checkpoint stores the index of its last iteration, counted from 0.
            index = checkpoint_iteration(os.path.join(self.folder, name))
            if index is not None:
                return f"{name} (iteration {index + 1})"
        return "model_final.pth (iteration unknown)"


def _plan(images: list, folds: list[int], layouts: list[dict], seed: int) -> dict:
    """The folds.json of a run: each image's fold and the folds whose checkpoint it chooses."""
    chooses = {}
    for k, layout in enumerate(layouts):
        for i in layout["valid"]:
            chooses.setdefault(i, []).append(k + 1)
    plan_images = [
        {
            "file_name": pooled.image["file_name"],
            "fold": f + 1,
            "chooses_checkpoint_of_folds": chooses.get(i, []),
            "classes": sorted(pooled.classes),
        }
        for i, (pooled, f) in enumerate(zip(images, folds))
    ]
    return {"num_folds": len(layouts), "seed": seed, "images": plan_images}


def _check_plan(cv_dir: str, plan: dict) -> None:
    """Writes the fold plan, or checks that a resumed run has the same one."""
    path = os.path.join(cv_dir, PLAN_FILE)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            previous = json.load(f)
        if previous != plan:
            raise DentalError(
                f"{path}: this OUTPUT_DIR holds a cross-validation with other folds (--folds "
                f"{previous.get('num_folds')} --seed {previous.get('seed')}, or other images); "
                "pass the same --folds and --seed, another OUTPUT_DIR, or delete "
                f"{cv_dir} to start over"
            )
        return
    write_json(path, plan, indent=1)


def _train_fold_process(argv: list[str], errors) -> None:
    """Runs one fold's training in a fresh process (its own logs, memory and seed)."""
    try:
        launch_from_args(argument_parser().parse_args(argv))
    except DentalError as e:
        errors.put(str(e))
        raise SystemExit(1) from e


def _train_fold(fold: FoldRun, argv: list[str]) -> None:
    # spawn, not fork: a forked child of a process that has used torch's threads can hang.
    context = multiprocessing.get_context("spawn")
    errors = context.SimpleQueue()
    process = context.Process(target=_train_fold_process, args=(argv, errors), daemon=False)
    process.start()
    process.join()
    if process.exitcode != 0:
        reason = errors.get() if not errors.empty() else f"exit status {process.exitcode}"
        raise DentalError(
            f"fold {fold.index + 1} failed: {reason} (log: {fold.folder}/log.txt); fix it and "
            "run the same command again to resume"
        )
    if not fold.finished():
        raise DentalError(
            f"fold {fold.index + 1}: training ended without {fold.metrics_file}; check that the "
            "config evaluates (MODEL.MASK_ON, DENTAL.EVAL.*) and see its log"
        )


def _train_unless_finished(fold: FoldRun, num_folds: int, sizes: dict, argv: list[str]) -> None:
    where = f"Fold {fold.index + 1}/{num_folds}"
    if fold.finished():
        logger.info(f"{where}: finished earlier, not trained again")
        return
    state = "resuming from its last checkpoint" if fold.started() else "training"
    logger.info(
        f"{where}: {state} on {sizes['train']} images, choosing the checkpoint on "
        f"{sizes['valid']} of the other folds, scoring the fold's {sizes['test']}, in {fold.folder}"
    )
    _train_fold(fold, argv)


def _fold_result(fold: FoldRun, sizes: dict) -> dict:
    """A trained fold's entry in the summary: its splits, the weights scored, their metrics."""
    return {
        "fold": fold.index + 1,
        "num_train": sizes["train"],
        "num_valid": sizes["valid"],
        "num_test": sizes["test"],
        "chosen_on": f"{fold.valid_name} ({sizes['valid']} images of the other folds)",
        "scored_on": f"{fold.test_name} (fold {fold.index + 1}, {sizes['test']} images)",
        "scored_weights": fold.scored_weights(),
        "metrics": fold_metrics(fold.metrics_file),
    }


def cross_validate(
    config_file: str, num_folds: int, seed: int = 0, opts: Sequence[str] = (), num_gpus: int = 1
) -> dict:
    """Trains and evaluates one model per fold of the pooled train and valid splits.

    Fold k is scored (`test/`) with the weights chosen on `valid/`, a stratified part of the
    other folds, which also stops training early; the rest of them is `train/` (see
    `fold_layout`). So each fold's scores are on images that chose nothing, and the summary
    names the weights scored and the images that chose them.

    The folds, their data (`OUTPUT_DIR/cv/fold_<k>/data/{train,valid,test}`), weights and
    evaluations live under `OUTPUT_DIR/cv/`. A fold with `model_final.pth` and its metrics is
    not trained again; a fold with a checkpoint resumes from it. The export's test split is
    never read.

    Args:
        config_file (str): the training config.
        num_folds (int): K.
        seed (int): seed of the fold split (training keeps the config's `SEED`).
        opts (Sequence[str]): KEY VALUE overrides for every fold.
        num_gpus (int): processes per fold, as `tools/train_net.py --num-gpus`.

    Returns:
        dict: the summary written to `OUTPUT_DIR/cv/summary.json`.

    Raises:
        DentalError: bad --folds, unusable data, a fold that failed, or a plan that differs
            from the one already in OUTPUT_DIR.
    """
    cfg = build_config(config_file, opts)
    images, categories = pool_images(cfg.DENTAL.DATA_ROOT, cfg.DENTAL.DATASET_NAME)
    classes = [pooled.classes for pooled in images]
    folds = fold_assignments(classes, num_folds, seed)
    layouts = [fold_layout(classes, folds, k, seed) for k in range(num_folds)]
    cv_dir = os.path.join(cfg.OUTPUT_DIR, CV_FOLDER)
    os.makedirs(cv_dir, exist_ok=True)
    _check_plan(cv_dir, _plan(images, folds, layouts, seed))

    results = []
    for index, layout in enumerate(layouts):
        fold = FoldRun(cv_dir, index, cfg.DENTAL.DATASET_NAME)
        sizes = write_fold_export(fold.data_root, images, categories, layout, index)
        _train_unless_finished(fold, num_folds, sizes, fold.train_argv(config_file, opts, num_gpus))
        results.append(_fold_result(fold, sizes))
    summary = summarize_folds(results)
    summary.update(
        data_root=os.path.abspath(cfg.DENTAL.DATA_ROOT),
        seed=seed,
        score_threshold=cfg.DENTAL.EVAL.SCORE_THRESHOLD,
        iou_threshold=cfg.DENTAL.EVAL.IOU_THRESHOLD,
    )
    paths = write_summary(cv_dir, summary)
    logger.info(f"Cross-validation summary: {paths[1]} and {paths[0]}")
    return summary
