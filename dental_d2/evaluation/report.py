"""Evaluation outputs: metrics.json, a per-class table, PNG plots, one self-contained HTML page."""

import datetime
import html
import logging
import math
import os
from dataclasses import dataclass

import numpy as np
from pycocotools.coco import COCO
from tabulate import tabulate

from ..file_io import atomic_write, write_bytes, write_json
from .metrics import DetectionMetrics
from .plots import plot_confusion_matrix, plot_pr_curves
from .report_images import data_uri, images_section

logger = logging.getLogger(__name__)

TASK_TITLES = {"segm": "Masks (segm)", "bbox": "Boxes (bbox)"}


@dataclass
class TaskEvaluation:
    """The results of one task ("segm" or "bbox"): our P/R/F1 and COCO's AP.

    Attributes:
        metrics (DetectionMetrics): counts, P/R/F1, confusion matrix, PR curves.
        coco (dict): COCO AP in percent as detectron2 reports it ("AP", "AP50", ..., "AP-<class>").
        class_ap (dict[int, dict]): category id -> {"AP": .., "AP50": ..} in percent.
        per_tooth (dict | None): masks only, where the data has teeth: per-tooth sensitivity
            and specificity (`dental_d2.evaluation.per_tooth.per_tooth_scores`).
        masks_from_peak (dict | None): masks only: class name -> detections outlined at half
            their peak probability, having no pixel at 0.5 (`dental_d2.modeling.postprocessing`).
    """

    metrics: DetectionMetrics
    coco: dict
    class_ap: dict
    per_tooth: dict | None = None
    masks_from_peak: dict | None = None

    def per_class(self) -> dict:
        """Class name -> counts, P/R/F1, AP, AP50 and the best-F1 threshold."""
        m = self.metrics
        out = {}
        for k, (cat_id, name) in enumerate(zip(m.category_ids, m.class_names)):
            ap = self.class_ap.get(cat_id, {})
            threshold, f1 = m.best_f1[k]
            out[name] = {
                **m.per_class[k].as_dict(),
                "AP": ap.get("AP", float("nan")),
                "AP50": ap.get("AP50", float("nan")),
                "best_f1_threshold": threshold,
                "best_f1": f1,
                "num_gt": m.num_gt[k],
                "category_id": cat_id,
            }
        return out

    def to_dict(self) -> dict:
        """The task's entry of metrics.json."""
        m = self.metrics
        return {
            "coco": dict(self.coco),
            "per_class": self.per_class(),
            "pooled": m.pooled.as_dict(),
            "score_threshold": m.score_threshold,
            "iou_threshold": m.iou_threshold,
            "confusion_matrix": {
                "labels": m.confusion_labels,
                "rows": "ground truth",
                "columns": "prediction",
                "counts": m.confusion.tolist(),
            },
            **({"per_tooth": self.per_tooth} if self.per_tooth is not None else {}),
            **({"masks_from_peak": self.masks_from_peak} if self.masks_from_peak else {}),
        }

    def flat_results(self) -> dict:
        """detectron2's flat {metric: value} dict: COCO AP (percent) and P/R/F1 (fractions)."""
        results = dict(self.coco)
        pooled = self.metrics.pooled
        results.update(precision=pooled.precision, recall=pooled.recall, f1=pooled.f1)
        for name, values in self.per_class().items():
            for key in ("precision", "recall", "f1"):
                results[f"{key}-{name}"] = values[key]
        return results


def _shown_rates(values: dict) -> list:
    """Precision, recall and F1 of one class as a table shows them: None (a dash) when the class
    had nothing to find and nothing was found, where 0 would read as a failure."""
    if values["tp"] + values["fp"] + values["fn"] == 0:
        return [None, None, None]
    return [values["precision"], values["recall"], values["f1"]]


def format_class_table(evaluation: TaskEvaluation) -> str:
    """The per-class table detectron2-style: class, TP, FP, FN, P, R, F1, AP, AP50."""
    rows = [
        [name, v["tp"], v["fp"], v["fn"], *_shown_rates(v), v["AP"], v["AP50"]]
        for name, v in evaluation.per_class().items()
    ]
    pooled = evaluation.metrics.pooled
    coco_ap = evaluation.coco
    rows.append(
        ["(all)", pooled.tp, pooled.fp, pooled.fn, pooled.precision, pooled.recall, pooled.f1]
        + [coco_ap.get("AP", float("nan")), coco_ap.get("AP50", float("nan"))]
    )
    return tabulate(
        rows,
        headers=["category", "TP", "FP", "FN", "P", "R", "F1", "AP", "AP50"],
        tablefmt="pipe",
        floatfmt=".3f",
        numalign="left",
        missingval="–",
    )


def log_class_table(evaluation: TaskEvaluation) -> None:
    """Logs the per-class table of one task."""
    m = evaluation.metrics
    logger.info(
        f"Per-category {m.iou_type} detection at score >= {m.score_threshold:g}, "
        f"IoU >= {m.iou_threshold:g} (P/R/F1 fractions, AP percent):\n"
        + format_class_table(evaluation)
    )


def _json_safe(value):
    # NaN is not JSON: classes without ground truth have no AP, written as null.
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def metrics_dict(evaluations: dict[str, TaskEvaluation]) -> dict:
    """The content of metrics.json: task -> {"coco", "per_class", "pooled", thresholds, ...}."""
    return _json_safe({task: evaluation.to_dict() for task, evaluation in evaluations.items()})


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.total td { font-weight: bold; background: #f4f4f4; }
.plots img { max-width: 48%; vertical-align: top; }
.pair { display: inline-block; margin: 0 1em 1.5em 0; }
.pair img { max-width: 380px; margin-right: 4px; }
.note { color: #555; max-width: 60em; }
table.provenance th { text-align: left; background: #f4f4f4; }
table.provenance td { text-align: left; }
.plots img, .pair img { cursor: zoom-in; }
#full-size { position: fixed; inset: 0; overflow: auto; background: rgba(0, 0, 0, 0.85);
  cursor: zoom-out; text-align: center; }
#full-size img { max-width: none; margin: 1em; }
"""

# Opens a picture of the page at its own size over the page; a click or Escape closes it. The
# pictures are inside the page (data: URIs), which browsers do not open as pages of their own.
_FULL_SIZE_SCRIPT = """
<div id="full-size" hidden><img alt="the picture at full size"></div>
<script>
const fullSize = document.getElementById("full-size");
for (const picture of document.querySelectorAll(".plots img, .pair img")) {
  picture.title = "Click for full size";
  picture.addEventListener("click", () => {
    fullSize.querySelector("img").src = picture.src;
    fullSize.hidden = false;
  });
}
fullSize.addEventListener("click", () => { fullSize.hidden = true; });
document.addEventListener("keydown", (e) => { if (e.key === "Escape") fullSize.hidden = true; });
</script>
"""


def _task_section(task: str, evaluation: TaskEvaluation, pngs: dict[str, bytes]) -> str:
    m = evaluation.metrics
    header = "".join(
        f"<th>{h}</th>"
        for h in ("class", "ground truth", "found (TP)", "false alarms (FP)", "missed (FN)")
        + ("precision", "recall", "F1", "AP", "AP50")
    )
    header += f'<th title="{html.escape(BEST_F1_EXPLAINED)}">best-F1 score threshold *</th>'
    rows = []
    for name, v in evaluation.per_class().items():
        cells = [name, v["num_gt"], v["tp"], v["fp"], v["fn"]]
        cells += [*_shown_rates(v), v["AP"], v["AP50"]]
        cells.append(v["best_f1_threshold"])
        rows.append("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in cells) + "</tr>")
    p = m.pooled
    coco_ap = evaluation.coco
    total = ["all classes", sum(m.num_gt), p.tp, p.fp, p.fn, p.precision, p.recall, p.f1]
    total += [coco_ap.get("AP"), coco_ap.get("AP50"), None]
    rows.append('<tr class="total">' + "".join(f"<td>{_fmt(c)}</td>" for c in total) + "</tr>")
    coco_cells = "".join(
        f"<tr><td>{_fmt(k)}</td><td>{_fmt(v, 2)}</td></tr>"
        for k, v in coco_ap.items()
        if not k.startswith("AP-")
    )
    return f"""
<h2>{TASK_TITLES.get(task, task)}</h2>
<p class="note">Counted at score &ge; {m.score_threshold:g} and IoU &ge; {m.iou_threshold:g}.
Precision, recall and F1 are fractions; AP (COCO, IoU 0.50:0.95) and AP50 are percent.</p>
<table><tr>{header}</tr>{"".join(rows)}</table>
{_masks_from_peak_note(evaluation.masks_from_peak)}
<details><summary>All COCO metrics</summary><table>{coco_cells}</table></details>
<div class="plots">
<img alt="{task} precision-recall curves" src="{data_uri(pngs["pr"], "image/png")}">
<img alt="{task} confusion matrix" src="{data_uri(pngs["confusion"], "image/png")}">
</div>{_per_tooth_section(evaluation.per_tooth, m.score_threshold)}"""


def _masks_from_peak_note(counts: dict | None) -> str:
    if not counts or not any(counts.values()):
        return ""
    listed = ", ".join(f"{html.escape(name)} {n}" for name, n in counts.items() if n)
    return (
        f'<p class="note">Detections with no pixel at mask probability &ge; 0.5 ({listed}) are '
        "outlined where their probability is at least half its peak.</p>"
    )


def _per_tooth_section(per_tooth: dict | None, score_threshold: float) -> str:
    """The per-tooth table: for each lesion class, the teeth that have it and those flagged."""
    if not per_tooth:
        return ""
    heads = ("lesion", "teeth with it", "flagged", "sensitivity", "teeth without it", "flagged")
    header = "".join(f"<th>{h}</th>" for h in (*heads, "specificity"))
    keys = ("with", "flagged_with", "sensitivity", "without", "flagged_without", "specificity")
    rows = "".join(
        "<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in (name, *(v[k] for k in keys))) + "</tr>"
        for name, v in per_tooth["classes"].items()
    )
    return f"""
<h3>By tooth, as a dentist reads it</h3>
<p class="note">Each of the {per_tooth["teeth"]} teeth in the ground truth is one case per lesion
class. A tooth is flagged for a class when a predicted tooth matches it (mask IoU as above; the
model found {per_tooth["teeth_found"]} of them) and a predicted lesion of that class, at score
&ge; {score_threshold:g}, lies on that predicted tooth. Sensitivity: flagged teeth among those
with the lesion; specificity: unflagged teeth among those without it.</p>
<table><tr>{header}</tr>{rows}</table>"""


def _write_plots(
    output_dir: str, task: str, metrics: DetectionMetrics, written: dict[str, str]
) -> dict[str, bytes]:
    """Writes the task's PR curves and confusion matrix as PNGs; returns their bytes by kind."""
    pngs = {"pr": plot_pr_curves(metrics), "confusion": plot_confusion_matrix(metrics)}
    for key, suffix in (("pr", "pr_curves"), ("confusion", "confusion_matrix")):
        path = os.path.join(output_dir, f"{task}_{suffix}.png")
        write_bytes(path, pngs[key])
        written[f"{task}_{suffix}"] = path
    return pngs


# What the best-F1 score threshold column means, for a reader who is not a statistician.
BEST_F1_EXPLAINED = (
    "The best-F1 score threshold of a class is the confidence cut-off that would have balanced "
    "its false alarms and misses best on these images: keeping only the predictions scoring at "
    "least this gives the highest F1. A lower cut-off finds more but raises more false alarms; "
    "a higher one the reverse. It is fitted to these images, so on new photos expect it to do "
    "a little worse."
)


def _provenance_table(provenance: dict[str, str], evaluations: dict[str, TaskEvaluation]) -> str:
    """What was scored: model, config, data, date (given) and the thresholds (of the metrics)."""
    rows = dict(provenance)
    first = next(iter(evaluations.values())).metrics if evaluations else None
    if first is not None:
        rows["Thresholds"] = (
            f"a prediction counts at score >= {first.score_threshold:g}; it matches a "
            f"ground-truth finding at IoU >= {first.iou_threshold:g}"
        )
    return (
        '<table class="provenance">'
        + "".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in rows.items()
        )
        + "</table>"
    )


def _page(
    title: str,
    coco_gt: COCO,
    evaluations: dict[str, TaskEvaluation],
    sections: list[str],
    provenance: dict[str, str],
) -> str:
    """The whole report.html: a heading, what was scored, what was counted and how, then the
    sections."""
    # Every task matched the same ground truth and predictions: count them from the first.
    first = next(iter(evaluations.values())).metrics if evaluations else None
    num_predictions = sum(len(i.predictions) for i in first.images) if first else 0
    num_gt = sum(first.num_gt) if first else 0
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_CSS}</style></head><body>
<h1>Evaluation: {html.escape(title)}</h1>
{_provenance_table(provenance, evaluations)}
<p>{len(coco_gt.getImgIds())} images, {num_gt} ground-truth findings, {num_predictions}
predictions (all scores).</p>
<p class="note">A prediction is <b>found (TP)</b> when it overlaps a not-yet-claimed ground-truth
finding of the same class enough (IoU at or above the threshold); predictions are taken from the
most to the least confident. Other predictions are <b>false alarms (FP)</b>; ground truth nothing
claimed is <b>missed (FN)</b>. Precision: share of predictions that are right. Recall: share of
findings found. F1 balances the two.</p>
<p class="note">* {html.escape(BEST_F1_EXPLAINED)}</p>
{"".join(sections)}
{_FULL_SIZE_SCRIPT}
</body></html>
"""


def write_outputs(
    output_dir: str,
    evaluations: dict[str, TaskEvaluation],
    coco_gt: COCO,
    title: str,
    image_root: str | None = None,
    draw_images: bool = True,
    thing_colors=None,
    num_images: int = 4,
    provenance: dict[str, str] | None = None,
) -> dict[str, str]:
    """Writes metrics.json, `<task>_pr_curves.png`, `<task>_confusion_matrix.png`, report.html.

    The report opens with what it scored: the `provenance` rows (model, config, data...), the
    date and the thresholds.

    Args:
        output_dir (str): the folder, created if missing.
        evaluations (dict[str, TaskEvaluation]): task -> its results.
        coco_gt (COCO): the ground truth the results were matched to.
        title (str): what was evaluated, for the report's heading.
        image_root (str or None): folder of the images when their file names are relative.
        draw_images (bool): whether the report shows the best and worst images.
        thing_colors (list or None): RGB 0-255 per class; None takes
            `dental_d2.drawing.class_colors`'s.
        num_images (int): best and worst images shown, each.
        provenance (dict[str, str] or None): label -> what, e.g. {"Model": "model_final.pth
            (iteration 2999)", "Config": ..., "Data": ...}; the date is added.

    Returns:
        dict[str, str]: output name -> path written.
    """
    os.makedirs(output_dir, exist_ok=True)
    written = {"metrics": os.path.join(output_dir, "metrics.json")}
    write_json(written["metrics"], metrics_dict(evaluations), indent=2, allow_nan=False)

    sections = []
    for task, evaluation in evaluations.items():
        pngs = _write_plots(output_dir, task, evaluation.metrics, written)
        sections.append(_task_section(task, evaluation, pngs))

    if draw_images and evaluations:
        # One set of images, for masks when evaluated: they show what boxes show and more.
        main = evaluations.get("segm") or next(iter(evaluations.values()))
        heading = TASK_TITLES.get(main.metrics.iou_type, main.metrics.iou_type)
        sections.append(
            images_section(coco_gt, main.metrics, image_root, thing_colors, num_images, heading)
        )

    provenance = {
        **(provenance or {}),
        "Date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    page = _page(title, coco_gt, evaluations, sections, provenance)
    written["report"] = os.path.join(output_dir, "report.html")
    with atomic_write(written["report"], "w") as f:
        f.write(page)
    logger.info(f"Wrote evaluation report to {written['report']}")
    return written
