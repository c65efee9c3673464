"""Cross-validation results: each fold's metrics, their mean and standard deviation, JSON and
Markdown."""

import json
import math
import os
import statistics

from tabulate import tabulate

from ..errors import DentalError
from ..file_io import atomic_write, write_json

__all__ = ["fold_metrics", "summarize_folds", "write_summary"]

TASKS = ("segm", "bbox")
# COCO AP (percent) of the whole task, then pooled and per-class values (fractions; AP percent).
TASK_KEYS = ("AP", "AP50")
POOLED_KEYS = ("precision", "recall", "f1")
CLASS_KEYS = ("precision", "recall", "f1", "AP")


def _number(value):
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def fold_metrics(metrics_file: str) -> dict[str, float | None]:
    """Reads a fold's evaluation `metrics.json` into flat metrics.

    Args:
        metrics_file (str): `eval/<dataset>/metrics.json` written by `DentalEvaluator`.

    Returns:
        dict[str, float | None]: "<task>/AP", "<task>/AP50", "<task>/precision" (pooled), ...,
        and "<task>/<key>-<class>" for precision, recall, f1 and AP; None where undefined
        (a class without ground truth in the fold).

    Raises:
        DentalError: the file is missing or not an evaluation's metrics.
    """
    try:
        with open(metrics_file, encoding="utf-8") as f:
            metrics = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise DentalError(
            f"{metrics_file}: cannot read the fold's metrics ({e}); delete the fold's folder to "
            "train it again"
        ) from e
    flat = {}
    for task in TASKS:
        if task not in metrics:
            continue
        entry = metrics[task]
        for key in TASK_KEYS:
            flat[f"{task}/{key}"] = _number(entry.get("coco", {}).get(key))
        for key in POOLED_KEYS:
            flat[f"{task}/{key}"] = _number(entry.get("pooled", {}).get(key))
        for name, values in entry.get("per_class", {}).items():
            for key in CLASS_KEYS:
                flat[f"{task}/{key}-{name}"] = _number(values.get(key))
    if not flat:
        raise DentalError(
            f"{metrics_file}: has no segm or bbox results; delete the fold's folder to train it "
            "again"
        )
    return flat


def summarize_folds(folds: list[dict]) -> dict:
    """Mean and sample standard deviation over folds of each metric.

    Args:
        folds (list[dict]): per fold, `{"fold": k, "metrics": flat metrics, ...}`.

    Returns:
        dict: `{"num_folds", "folds", "mean", "std"}`; a metric undefined in some folds is
        averaged over the others, its std is None with fewer than two values.
    """
    keys = list(dict.fromkeys(key for fold in folds for key in fold["metrics"]))
    mean, std = {}, {}
    for key in keys:
        values = [fold["metrics"].get(key) for fold in folds]
        values = [value for value in values if value is not None]
        mean[key] = statistics.fmean(values) if values else None
        std[key] = statistics.stdev(values) if len(values) > 1 else None
    return {"num_folds": len(folds), "folds": folds, "mean": mean, "std": std}


def _fmt(value, percent: bool) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if percent else f"{value:.3f}"


def _task_table(summary: dict, task: str) -> str:
    keys = [key for key in summary["mean"] if key.startswith(f"{task}/")]
    headers = ["metric", *(f"fold {fold['fold']}" for fold in summary["folds"]), "mean", "std"]
    rows = []
    for key in keys:
        percent = key.split("/", 1)[1].split("-", 1)[0] in ("AP", "AP50")
        row = [key.split("/", 1)[1]]
        row += [_fmt(fold["metrics"].get(key), percent) for fold in summary["folds"]]
        row += [_fmt(summary["mean"][key], percent), _fmt(summary["std"][key], percent)]
        rows.append(row)
    return tabulate(rows, headers=headers, tablefmt="pipe", disable_numparse=True)


def format_summary(summary: dict) -> str:
    """The Markdown page of `summary.md`: fold sizes and the weights scored, then one table
    per task.

    Args:
        summary (dict): as from `summarize_folds`, with "data_root" and "seed".
    """
    lines = [
        f"# Cross-validation: {summary['num_folds']} folds",
        "",
        f"Train and valid images of `{summary['data_root']}` pooled and split with seed "
        f"{summary['seed']}; the export's test split is not used. Each fold is scored once, as "
        "`test`, with the weights chosen on `valid`, a stratified part of the other folds that "
        "also stops training early; the rest of them is `train`. No scored image chose the "
        "weights it is scored with.",
        "AP and AP50 are COCO's (percent); precision, recall and F1 are fractions at score >= "
        f"{summary['score_threshold']:g}, IoU >= {summary['iou_threshold']:g}. std is the sample "
        "standard deviation over folds; '-' is undefined (no ground truth of that class).",
        "",
        "| fold | train images | valid images (chose the weights) | test images (scored) | "
        "weights scored |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {f['fold']} | {f['num_train']} | {f['num_valid']} | {f['num_test']} | "
        f"{f['scored_weights']} |"
        for f in summary["folds"]
    ]
    for task in TASKS:
        if any(key.startswith(f"{task}/") for key in summary["mean"]):
            title = "Masks (segm)" if task == "segm" else "Boxes (bbox)"
            lines += ["", f"## {title}", "", _task_table(summary, task)]
    return "\n".join(lines) + "\n"


def write_summary(folder: str, summary: dict) -> tuple[str, str]:
    """Writes `summary.json` and `summary.md` into `folder`.

    Args:
        folder (str): the `OUTPUT_DIR/cv` folder.
        summary (dict): as from `summarize_folds`, with "data_root", "seed", "score_threshold"
            and "iou_threshold".

    Returns:
        tuple[str, str]: the two paths.
    """
    json_path = os.path.join(folder, "summary.json")
    markdown_path = os.path.join(folder, "summary.md")
    write_json(json_path, summary, indent=2, allow_nan=False)
    with atomic_write(markdown_path) as f:
        f.write(format_summary(summary))
    return json_path, markdown_path
