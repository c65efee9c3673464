"""What a training run tells its user: plain log files, an ETA that counts the evaluations still
to come, and a closing summary of what was chosen, how it scored and where everything is."""

import datetime
import logging
import os
import re
import shlex
import sys

from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter
from detectron2.utils.logger import setup_logger
from tabulate import tabulate

logger = logging.getLogger(__name__)

# Terminal colour codes, as detectron2's `colored()` tables and its console formatter write them.
_ANSI_CODE = re.compile(r"\x1b\[[0-9;]*m")
# Loggers that write a run's log.txt.
LOGGER_NAMES = ("detectron2", "fvcore", "dental_d2")
# What detectron2 logs at start-up that is hundreds of lines long: kept in log.txt, not shown
# on the console (the full config is also in OUTPUT_DIR/config.yaml, which detectron2 says).
_FILE_ONLY_MESSAGES = ("Running with full config:", "Environment info:", "Model:\n")
# The project's root, where tools/ is when the package is installed in place (`pip install -e`).
_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def iterations_done(trainer) -> int:
    """The number of training iterations completed, the one iteration number dental_d2 shows.

    detectron2 counts `trainer.iter` from 0 and, after a normal end, leaves it at `max_iter`
    (after an early stop, at the last iteration run, which `max_iter` then follows).

    Args:
        trainer (TrainerBase): a trainer in `after_step` or `after_train`.
    """
    return min(trainer.iter + 1, trainer.max_iter)


class PlainFormatter(logging.Formatter):
    """Formats as `formatter` does, without terminal colour codes.

    detectron2 colours some messages themselves (the config it logs at start-up, the dataset's
    class histogram), not only the console's prefix; in a log file the codes are noise (`less`
    and editors show `^[[36m`).

    Args:
        formatter (logging.Formatter): the formatter whose output is cleaned.
    """

    def __init__(self, formatter: logging.Formatter):
        super().__init__()
        self._formatter = formatter

    def format(self, record):
        return _ANSI_CODE.sub("", self._formatter.format(record))


def _is_console(handler: logging.Handler) -> bool:
    return getattr(handler, "stream", None) in (sys.stdout, sys.stderr)


def _not_on_console(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_FILE_ONLY_MESSAGES)


def plain_log_files(output_dir: str) -> None:
    """Makes the log files of a run (OUTPUT_DIR/log.txt), and the console unless it is a
    terminal, free of colour codes, and keeps detectron2's start-up dumps (environment, model,
    full config) off the console; call it before detectron2's `default_setup`, which logs them.

    The loggers are set up here as `default_setup` sets them up; `setup_logger` caches its
    loggers by their arguments, so `default_setup` gets these ones. Their handlers then drop
    colour codes, except a console that is a terminal.

    Args:
        output_dir (str): the run's OUTPUT_DIR.
    """
    rank = comm.get_rank()
    setup_logger(output_dir, distributed_rank=rank, name="fvcore")
    setup_logger(output_dir, distributed_rank=rank)
    colour_console = sys.stdout.isatty()
    for name in LOGGER_NAMES:
        for handler in logging.getLogger(name).handlers:
            formatter = handler.formatter
            console = _is_console(handler)
            if console and _not_on_console not in handler.filters:
                handler.addFilter(_not_on_console)
            if formatter is None or isinstance(formatter, PlainFormatter):
                continue
            # setup_logger gives files a plain logging.Formatter, a colour console a subclass;
            # detectron2 colours some messages themselves, so both are cleaned.
            if not (console and colour_console):
                handler.setFormatter(PlainFormatter(formatter))


def evaluations_left(iteration: int, max_iter: int, eval_period: int) -> int:
    """Evaluations still to run after `iteration` (counted from 0), the one after training
    included, as detectron2's EvalHook runs them: at every `eval_period`-th iteration but the
    last, and once after the last.

    Args:
        iteration (int): the iteration just run, its own evaluation done.
        max_iter (int): SOLVER.MAX_ITER.
        eval_period (int): TEST.EVAL_PERIOD; 0 or less runs only the one after training.
    """
    if iteration + 1 >= max_iter:
        return 0
    periodic = 0
    if eval_period > 0:
        periodic = (max_iter - 1) // eval_period - (iteration + 1) // eval_period
    return periodic + 1


class EtaWithEvaluations(CommonMetricPrinter):
    """detectron2's CommonMetricPrinter whose ETA counts the evaluations still to come.

    detectron2's ETA is the median iteration time times the iterations left; the evaluation
    hooks run outside that time, and on a small CPU they take longer than the iterations
    between them. Here each evaluation still to come counts as long as the last one took
    (`EvalOnceHook.last_seconds`, summed over the hooks): "eta: 0:07:30 with 3 evaluations".
    Before the first evaluation there is no duration to count, and the ETA says what it leaves
    out: "eta: 0:05:10 + 4 evaluations". The test-set evaluation after training is never
    counted.

    Args:
        max_iter (int): SOLVER.MAX_ITER.
        evaluation_hooks (list[EvalOnceHook]): the hooks that evaluate every `eval_period`.
        eval_period (int): TEST.EVAL_PERIOD.
        window_size (int): as CommonMetricPrinter's.
    """

    def __init__(self, max_iter: int, evaluation_hooks, eval_period: int, window_size: int = 20):
        super().__init__(max_iter, window_size)
        self._evaluation_hooks = list(evaluation_hooks)
        self._eval_period = eval_period

    def _get_eta(self, storage):
        eta = super()._get_eta(storage)
        left = evaluations_left(storage.iter, self._max_iter, self._eval_period)
        if not eta or not left or not self._evaluation_hooks:
            return eta
        evaluations = f"{left} evaluation" + ("s" if left > 1 else "")
        durations = [hook.last_seconds for hook in self._evaluation_hooks]
        # CommonMetricPrinter stores the ETA it computed from the iteration times, this step.
        training = storage.latest().get("eta_seconds")
        if None in durations or training is None or training[1] != storage.iter:
            return f"{eta} + {evaluations}"
        seconds = training[0] + left * sum(durations)
        return f"{datetime.timedelta(seconds=int(seconds))} with {evaluations}"


def tests_best_checkpoint(best_iter: int | None, final_iter: int) -> bool:
    """Whether the test split is scored with model_best.pth rather than the final weights:
    when validation chose an earlier iteration than the last one run.

    Args:
        best_iter (int | None): the iterations completed by model_best.pth's weights, None
            when there is none.
        final_iter (int): the iterations completed by the final weights.
    """
    return best_iter is not None and best_iter < final_iter


def _class_table(results: dict) -> tuple[str, str] | None:
    """(task, table) of per-class AP, precision, recall and F1 from one dataset's results."""
    task = "segm" if "segm" in results else "bbox" if "bbox" in results else None
    if task is None:
        return None
    # NaN (a class without ground truth has no AP) reads "n/a".
    values = {key: None if value != value else value for key, value in results[task].items()}
    names = [key[len("f1-") :] for key in values if key.startswith("f1-")]
    rows = [
        [name, values.get(f"AP-{name}"), values.get(f"precision-{name}")]
        + [values.get(f"recall-{name}"), values.get(f"f1-{name}")]
        for name in names
    ]
    rows.append(["(all)", values.get("AP"), values.get("precision")])
    rows[-1] += [values.get("recall"), values.get("f1")]
    table = tabulate(
        rows,
        headers=["class", "AP (%)", "precision", "recall", "F1"],
        tablefmt="pipe",
        floatfmt=".3f",
        missingval="n/a",
    )
    return task, table


def _command_path(path: str) -> str:
    """`path` as a command line would name it: relative when inside the working directory."""
    relative = os.path.relpath(path)
    if relative.startswith(os.pardir):
        return shlex.quote(path)
    return shlex.quote(relative if os.sep in relative else os.path.join(os.curdir, relative))


def suggested_command(tool: str, *arguments: str) -> str:
    """A command line to run `tool` (a script in tools/ or an executable beside the Python that
    runs now) with the interpreter that runs now, e.g. ".venv/bin/python tools/visualize.py ...".

    Args:
        tool (str): "tools/<name>.py", or the name of an executable installed with the
            interpreter (e.g. "tensorboard"; the bare name where there is none).
        arguments (str): its arguments, quoted here where needed.
    """
    if tool.endswith(".py"):
        script = os.path.join(_PROJECT_ROOT, tool)
        # Installed elsewhere than in place, the scripts are where the user's checkout is.
        head = [
            _command_path(sys.executable),
            _command_path(script) if os.path.isfile(script) else tool,
        ]
    else:
        installed = os.path.join(os.path.dirname(sys.executable), tool)
        head = [_command_path(installed) if os.path.isfile(installed) else tool]
    return " ".join(head + [shlex.quote(argument) for argument in arguments])


def log_training_summary(cfg, best, final_iter: int, results) -> None:
    """Logs the block that ends a training run: the best checkpoint, the test scores per class
    and where the report, the overlays and TensorBoard's logs are.

    Args:
        cfg (CfgNode): the run's config.
        best (BestCheckpointer | None): the hook that saved model_best.pth.
        final_iter (int): the iterations completed (`iterations_done`).
        results (dict | None): `DentalTrainer.test`'s results on DATASETS.TEST: {task: ...}
            for one dataset, {dataset: {task: ...}} for several; None without a test split.
    """
    output = cfg.OUTPUT_DIR
    metric = cfg.SOLVER.EARLY_STOPPING.METRIC
    lines = [
        "Training summary",
        f"  checkpoints: {output} (model_final.pth: iteration {final_iter})",
    ]
    best_iter = best.best_iter if best is not None else None
    if best_iter is not None:
        lines.append(
            f"  best checkpoint: {os.path.join(output, 'model_best.pth')}, iteration "
            f"{best_iter} ({metric} {best.best_metric:.4f}, "
            f"{cfg.SOLVER.EARLY_STOPPING.MODE} is best)"
        )
    else:
        lines.append(f"  best checkpoint: none ({metric} was never computed)")
    scored = "model_final.pth" if best_iter is None else "model_best.pth"
    datasets = list(cfg.DATASETS.TEST)
    per_dataset = {datasets[0]: results} if len(datasets) == 1 else dict(results or {})
    for name in datasets:
        folder = os.path.join(output, "eval", name)
        table = _class_table(per_dataset.get(name) or {})
        if table is not None:
            task, text = table
            lines.append(
                f"  test scores on {name} ({task}, {scored}, score >= "
                f"{cfg.DENTAL.EVAL.SCORE_THRESHOLD:g}, IoU >= {cfg.DENTAL.EVAL.IOU_THRESHOLD:g}):"
            )
            lines += ["    " + row for row in text.splitlines()]
        lines.append(f"  report: {os.path.join(folder, 'report.html')}")
        if tests_best_checkpoint(best_iter, final_iter):
            final_report = os.path.join(output, "eval", "final", name, "report.html")
            lines.append(f"  report of the final weights: {final_report}")
        overlays = suggested_command(
            "tools/visualize.py", "--config-file", os.path.join(output, "config.yaml"),
            "--dataset", name, "--predictions", os.path.join(folder, "coco_instances_results.json"),
            "--output", os.path.join(output, "overlays", name),
        )  # fmt: skip
        lines.append(f"  overlays of {name}: {overlays}")
    tensorboard = suggested_command("tensorboard", "--logdir", output)
    lines.append(f"  TensorBoard (curves; validation overlays under IMAGES): {tensorboard}")
    logger.info("\n".join(lines))
