"""Set-up and entry point of training and evaluation, called by tools/train_net.py."""

import contextlib
import logging
import math
import multiprocessing
import os
import re

from detectron2.data import DatasetCatalog
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..checkpoint import DentalCheckpointer
from ..config import build_config, check_output_dir, fall_back_to_cpu
from ..data import check_num_classes, register_from_config
from ..errors import DentalError
from ..loading import config_for_weights, load_model, loading_weights
from ..stop_signals import handling_stop_signals
from ..weights import (
    WeightsFile,
    check_weights_exist,
    check_weights_given,
    model_class_names,
    read_weights,
)
from .distributed import ClusterProcess, cluster_process, join_process_group, leave_process_group
from .hooks import BestCheckpointer
from .progress import (
    iterations_done,
    log_training_summary,
    plain_log_files,
    tests_best_checkpoint,
)
from .trainer import DentalTrainer

logger = logging.getLogger(__name__)


def _decide_length(cfg, command_line: set[str]):
    """Sets the length of training from SOLVER.MAX_EPOCHS or SOLVER.MAX_ITER and logs which.

    What the command line sets wins over the config file: SOLVER.MAX_ITER given there beats
    the file's SOLVER.MAX_EPOCHS. An epoch still sets an unset TEST.EVAL_PERIOD.

    Args:
        cfg (CfgNode): a mutable config with the data registered.
        command_line (set[str]): the keys the command line overrides.
    """
    epochs, iterations = "SOLVER.MAX_EPOCHS", "SOLVER.MAX_ITER"

    def origin(key):
        return "command line" if key in command_line else "config"

    if cfg.SOLVER.MAX_EPOCHS <= 0:
        logger.info(
            f"{iterations} {cfg.SOLVER.MAX_ITER} ({origin(iterations)}) decides the length of "
            f"training ({epochs} is 0)"
        )
        return
    num_train_images = sum(len(DatasetCatalog.get(name)) for name in cfg.DATASETS.TRAIN)
    images_per_iter = cfg.SOLVER.IMS_PER_BATCH * cfg.SOLVER.ACCUMULATION_STEPS
    iters_per_epoch = max(1, math.ceil(num_train_images / images_per_iter))
    if cfg.TEST.EVAL_PERIOD <= 0:
        cfg.TEST.EVAL_PERIOD = iters_per_epoch
    if iterations in command_line:
        decided = (
            f"{iterations} {cfg.SOLVER.MAX_ITER} (command line) decides the length of training, "
            f"not {epochs} {cfg.SOLVER.MAX_EPOCHS} (config)"
        )
    else:
        cfg.SOLVER.MAX_ITER = cfg.SOLVER.MAX_EPOCHS * iters_per_epoch
        decided = (
            f"{epochs} {cfg.SOLVER.MAX_EPOCHS} ({origin(epochs)}) decides the length of "
            f"training: {cfg.SOLVER.MAX_EPOCHS} epochs of {num_train_images} images at "
            f"{images_per_iter} images per iteration"
        )
    logger.info(
        f"{decided}: SOLVER.MAX_ITER {cfg.SOLVER.MAX_ITER}, TEST.EVAL_PERIOD "
        f"{cfg.TEST.EVAL_PERIOD} (one epoch: {iters_per_epoch} iterations)"
    )


def prepare_dental_config(
    cfg, eval_only: bool = False, command_line=(), weights: WeightsFile | None = None
):
    """Registers the data and fills the keys that follow from it, before the config is frozen.

    Falls back to MODEL.DEVICE cpu without a GPU, sets DENTAL.CLASS_NAMES (from the checkpoint
    for evaluation, from the data for training), checks MODEL.ROI_HEADS.NUM_CLASSES, and
    derives SOLVER.MAX_ITER and TEST.EVAL_PERIOD from SOLVER.MAX_EPOCHS unless the command line
    sets SOLVER.MAX_ITER.

    Args:
        cfg (CfgNode): a mutable config with the dental keys.
        eval_only (bool): the model is evaluated, not trained.
        command_line (Sequence[str]): the command line's KEY VALUE overrides (args.opts).
        weights (WeightsFile | None): for evaluation, `MODEL.WEIGHTS` already read; None
            reads it.
    """
    if eval_only:
        check_weights_given(cfg, "evaluating (--eval-only)")
    fall_back_to_cpu(cfg, "training and evaluating")
    if cfg.SOLVER.ACCUMULATION_STEPS < 1:
        raise DentalError("SOLVER.ACCUMULATION_STEPS must be at least 1")
    check_weights_exist(cfg)
    data_classes = register_from_config(cfg)
    if eval_only:
        weights = weights if weights is not None else read_weights(cfg)
        # The checkpoint's classes, else the config's, else the data's.
        cfg.DENTAL.CLASS_NAMES = model_class_names(
            cfg, data_classes=data_classes, checkpoint=weights.checkpoint
        )
        return
    check_num_classes(cfg, data_classes)
    cfg.DENTAL.CLASS_NAMES = data_classes
    _decide_length(cfg, set(command_line[0::2]))


def setup(args):
    """Builds the frozen config in detectron2's order, registering the data on the way."""
    return _setup(args)[0]


def _evaluated_config(args):
    """The config and weights of --eval-only: the weights' own config (or --config-file, which
    must agree with it), with the command line's overrides. With --resume, the weights are the
    checkpoint OUTPUT_DIR's last_checkpoint names, as detectron2 resumes."""
    opts = list(args.opts)
    if args.resume:
        output_dir = build_config(args.config_file or None, opts).OUTPUT_DIR
        last = DentalCheckpointer(None, output_dir)
        if last.has_checkpoint():
            opts += ["MODEL.WEIGHTS", last.get_checkpoint_file()]
    return config_for_weights(args.config_file or None, opts, doing="evaluating (--eval-only)")


def _setup(args):
    """`setup`, returning `MODEL.WEIGHTS` too, read once for --eval-only (else None)."""
    if args.eval_only:
        cfg, weights = _evaluated_config(args)
    else:
        cfg, weights = build_config(args.config_file, args.opts), None
    output_existed = os.path.isdir(cfg.OUTPUT_DIR)
    # Named as detectron2's setup_logger names it.
    rank = comm.get_rank()
    log_file = os.path.join(cfg.OUTPUT_DIR, "log.txt") + (f".rank{rank}" if rank else "")
    log_existed = os.path.exists(log_file)
    check_output_dir(cfg.OUTPUT_DIR)
    # The package logs under "dental_d2"; set it up first so registration messages are kept.
    package_logger = setup_logger(
        cfg.OUTPUT_DIR, distributed_rank=rank, name="dental_d2", abbrev_name="dental"
    )
    logger.info(_launch_description(args))
    try:
        prepare_dental_config(
            cfg, eval_only=args.eval_only, command_line=args.opts, weights=weights
        )
    except DentalError:
        if not log_existed:
            _remove_log_of_failed_start(package_logger, log_file, remove_folder=not output_existed)
        raise
    cfg.freeze()
    plain_log_files(cfg.OUTPUT_DIR)
    # It logs "Rank of current process: R. World size: N".
    default_setup(cfg, args)
    logger.info(
        f"The environment, the model's layers and the full config are in {log_file}, not shown here"
    )
    return cfg, weights


def _remove_log_of_failed_start(package_logger, log_file: str, remove_folder: bool) -> None:
    """After a start failed having written nothing but its log: removes that log (the error is
    on the console), and OUTPUT_DIR when this start created it and nothing else is in it."""
    for handler in list(package_logger.handlers):
        if getattr(getattr(handler, "stream", None), "name", None) == log_file:
            # detectron2 keeps the file open for later set-ups; nothing more goes to it.
            package_logger.removeHandler(handler)
    with contextlib.suppress(OSError):
        os.remove(log_file)
        if remove_folder:
            os.rmdir(os.path.dirname(log_file))


def _launch_description(args) -> str:
    process = cluster_process()
    if process is not None:
        return process.describe()
    if comm.get_world_size() > 1:
        return (
            f"Started by tools/train_net.py: {args.num_gpus} processes per machine on "
            f"{args.num_machines} machine(s), spawned by detectron2's launch"
        )
    return "Started by tools/train_net.py: one process"


def _scoring(cfg, weights: str):
    """`cfg` with MODEL.WEIGHTS naming the file of the weights scored, for the reports."""
    scored = cfg.clone()
    scored.defrost()
    scored.MODEL.WEIGHTS = weights
    scored.freeze()
    return scored


def _evaluators(cfg, iteration: int | None, folder: str | None = None):
    """An evaluator per test dataset for weights saved at `iteration` (known to the caller, so
    that no report opens the weights file again), in `folder/<dataset>` (default
    `OUTPUT_DIR/eval/<dataset>`)."""
    return [
        DentalTrainer.build_evaluator(
            cfg, name, folder and os.path.join(folder, name), iteration=iteration
        )
        for name in cfg.DATASETS.TEST
    ]


def score_chosen_model(cfg, trainer):
    """Scores DATASETS.TEST with the weights validation chose, as the reference notebooks
    restored their best weights: `model_best.pth` when it exists, else the final model.

    The chosen model's results go to `eval/<dataset>/` and are returned. When validation chose
    an earlier iteration than the last, the final weights are scored too, in
    `eval/final/<dataset>/`; when it chose the last, model_best.pth holds the final weights.
    """
    best_path = os.path.join(cfg.OUTPUT_DIR, "model_best.pth")
    # The best checkpointer runs in the main process only.
    best = [hook for hook in trainer._hooks if isinstance(hook, BestCheckpointer)]
    best_iter = comm.all_gather(best[0].best_iter if best else None)[0]
    final_iter = iterations_done(trainer)
    datasets = ", ".join(cfg.DATASETS.TEST)
    final = _scoring(cfg, os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))
    if best_iter is None:
        logger.info(
            f"Evaluating the final weights, model_final.pth (iteration {final_iter}), on "
            f"{datasets}: no model_best.pth was saved"
        )
        # The weights in memory are those PeriodicCheckpointer saved when training ended.
        return DentalTrainer.test(final, trainer.model, _evaluators(final, final_iter))
    chosen = _scoring(cfg, best_path)
    described = (
        f"model_best.pth (iteration {best_iter}, chosen by {cfg.SOLVER.EARLY_STOPPING.METRIC})"
    )
    if not tests_best_checkpoint(best_iter, final_iter):
        logger.info(
            f"Evaluating {described} on {datasets}: these are the reported test results; it "
            "holds the final weights, so they are not scored a second time in eval/final/"
        )
        return DentalTrainer.test(chosen, trainer.model, _evaluators(chosen, best_iter))
    final_dir = os.path.join(cfg.OUTPUT_DIR, "eval", "final")
    logger.info(f"Evaluating the final weights (iteration {final_iter}) into {final_dir}/")
    DentalTrainer.test(final, trainer.model, _evaluators(final, final_iter, final_dir))
    logger.info(f"Evaluating {described} on {datasets}: these are the reported test results")
    model = load_model(chosen, read_weights(chosen))
    return DentalTrainer.test(chosen, model, _evaluators(chosen, best_iter))


def _own_report_folder(cfg) -> str:
    """The folder of an --eval-only run's reports: `OUTPUT_DIR/eval/<weights' file stem>/`, or
    `<stem>-2/`, `-3/`... when that one exists, so that no report (training's own ones
    included) is ever replaced. Decided by the main process for all."""
    folder = None
    if comm.is_main_process():
        stem = os.path.splitext(os.path.basename(cfg.MODEL.WEIGHTS.rstrip("/")))[0]
        base = os.path.join(cfg.OUTPUT_DIR, "eval", re.sub(r"[^\w.-]+", "_", stem) or "weights")
        folder, number = base, 1
        while os.path.exists(folder):
            number += 1
            folder = f"{base}-{number}"
    return comm.all_gather(folder)[0]


def evaluate_only(cfg, weights: WeightsFile):
    """--eval-only: scores MODEL.WEIGHTS, already read, on DATASETS.TEST into a folder of its
    own (see `_own_report_folder`); with TEST.AUG.ENABLED, also with test-time augmentation."""
    model = load_model(cfg, weights)
    folder = _own_report_folder(cfg)
    # A checkpoint stores the index of its last iteration, counted from 0.
    iteration = None if weights.iteration is None else weights.iteration + 1
    logger.info(
        f"Evaluating {cfg.MODEL.WEIGHTS} on {', '.join(cfg.DATASETS.TEST)}: reports in "
        f"{folder}/<dataset>/ (a folder of their own: no earlier report is replaced)"
    )
    results = DentalTrainer.test(cfg, model, _evaluators(cfg, iteration, folder))
    if comm.is_main_process():
        verify_results(cfg, results)
    if cfg.TEST.AUG.ENABLED:
        tta_folder = os.path.join(folder, "TTA")
        tta = DentalTrainer.test_with_TTA(cfg, model, tta_folder, iteration=iteration)
        results = {"plain": results, "TTA": tta}
    return results


def main(args):
    """Trains (or with --eval-only evaluates) as the config says; returns the test results."""
    cfg, weights = _setup(args)
    if args.eval_only:
        return evaluate_only(cfg, weights)

    trainer = DentalTrainer(cfg)
    with loading_weights(cfg.MODEL.WEIGHTS):
        trainer.resume_or_load(resume=args.resume)
    try:
        trainer.train()
    except FloatingPointError as e:
        # detectron2's own check for NaN/Inf losses or boxes: a setting the user can change.
        raise DentalError(
            f"training diverged at iteration {trainer.iter} ({e}); lower SOLVER.BASE_LR, or "
            "start from pretrained MODEL.WEIGHTS (from random init, use GroupNorm as "
            "configs/quick_schedules/dental_demo_cpu.yaml does)"
        ) from e
    results = score_chosen_model(cfg, trainer) if cfg.DATASETS.TEST else None
    if comm.is_main_process():
        best = [hook for hook in trainer._hooks if isinstance(hook, BestCheckpointer)]
        log_training_summary(cfg, best[0] if best else None, iterations_done(trainer), results)
    return results


def argument_parser():
    """detectron2's default parser: --config-file, --resume, --eval-only, --num-gpus, ..."""
    return default_argument_parser()


def _worker(args):
    try:
        return main(args)
    except DentalError as e:
        if comm.get_world_size() == 1:
            raise
        # In a spawned process: say it once, and exit non-zero so the launcher stops everyone.
        if comm.is_main_process():
            logger.error(f"error: {e}")
        raise SystemExit(getattr(e, "exit_code", 1)) from e


@contextlib.contextmanager
def _forwarding_signals_to_workers():
    """In the launching process of several workers, passes SIGTERM and SIGINT on to them (a
    scheduler may signal only this process) and waits for them to save and exit."""

    def forward(signal_number, frame):
        for child in multiprocessing.active_children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal_number)

    with handling_stop_signals(forward):
        yield


def _run_in_cluster_process(args, process: ClusterProcess):
    """`main` in one process of a launcher's group; the launcher started the others."""
    if args.num_gpus > 1 or args.num_machines > 1:
        raise DentalError(
            f"{process.launcher} started {process.world_size} processes already; --num-gpus and "
            "--num-machines would spawn more from each: drop them (one process per GPU comes "
            "from --nproc_per_node, --nnodes, or srun's --ntasks-per-node)"
        )
    join_process_group(process)
    try:
        main(args)
    except DentalError as e:
        # Every process stops for the same reason; the main one says it, the others exit with
        # the same status so that the launcher reports the failure.
        if comm.is_main_process():
            raise
        raise SystemExit(getattr(e, "exit_code", 1)) from e
    finally:
        leave_process_group()


def launch_from_args(args):
    """Runs `main` on `args.num_gpus` processes per machine, as detectron2's `launch`; or, in
    a process that torchrun or srun started, in the launcher's group (see `cluster_process`).

    Raises:
        DentalError: a problem with the config or the data (single process, or the main
            process of a launcher's group).
        TrainingInterrupted: SIGTERM or SIGINT stopped training after a checkpoint (as
            DentalError).
        ProcessExitedException: a spawned process exited non-zero (128 + signal number after
            such a stop).
        SystemExit: in the other processes of a launcher's group, with the main one's status.
    """
    process = cluster_process()
    if process is not None:
        _run_in_cluster_process(args, process)
        return
    spawns = args.num_gpus > 1 or args.num_machines > 1
    with _forwarding_signals_to_workers() if spawns else contextlib.nullcontext():
        launch(
            _worker,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
