"""PR-curve and confusion-matrix figures, drawn with matplotlib's Agg canvas into PNG bytes."""

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..drawing import plain_text
from .metrics import DetectionMetrics

__all__ = ["plot_confusion_matrix", "plot_pr_curves"]


def _png_bytes(figure: Figure) -> bytes:
    # An explicit Agg canvas instead of pyplot: no global backend switch, no figure left open.
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def plot_pr_curves(metrics: DetectionMetrics) -> bytes:
    """Precision against recall per class over all scores, as PNG bytes.

    Each curve marks where the evaluation's score threshold lies (circle) and the threshold that
    maximises F1 (star).

    Args:
        metrics (DetectionMetrics): the metrics of one task.
    """
    figure = Figure(figsize=(6.4, 5.2))
    axes = figure.add_subplot()
    for k, name in enumerate(map(plain_text, metrics.class_names)):
        thresholds, precision, recall = metrics.pr_curves[k]
        if not len(thresholds):
            axes.plot([], [], label=f"{name} (no predictions)")
            continue
        best_threshold, best_f1 = metrics.best_f1[k]
        label = name
        if best_threshold is not None:
            label = f"{name} (best F1 {best_f1:.2f} at score {best_threshold:.2f})"
        # Start at recall 0 with the first precision so a one-point curve still shows a line.
        (line,) = axes.plot(
            np.concatenate([[0.0], recall]),
            np.concatenate([[precision[0]], precision]),
            drawstyle="steps-post",
            label=label,
        )
        color = line.get_color()
        at_threshold = np.flatnonzero(thresholds >= metrics.score_threshold)
        if len(at_threshold):
            i = at_threshold[-1]
            axes.plot(recall[i], precision[i], "o", color=color, markersize=7)
        if best_threshold is not None:
            i = int(np.flatnonzero(thresholds == best_threshold)[0])
            axes.plot(recall[i], precision[i], "*", color=color, markersize=12)
    axes.plot([], [], "o", color="gray", label=f"score >= {metrics.score_threshold:g}")
    axes.plot([], [], "*", color="gray", markersize=10, label="best F1 threshold")
    axes.set_xlim(0, 1.02)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_title(f"{metrics.iou_type}: precision-recall, IoU >= {metrics.iou_threshold:g}")
    axes.grid(alpha=0.3)
    # Below the axes, where it covers no curve (bbox_inches="tight" keeps it in the PNG).
    axes.legend(loc="upper left", bbox_to_anchor=(0.0, -0.12), fontsize="small", frameon=False)
    return _png_bytes(figure)


def plot_confusion_matrix(metrics: DetectionMetrics) -> bytes:
    """The class confusion matrix with counts in the cells, as PNG bytes.

    Cells are shaded by the share of their row (of that ground-truth class) so rare classes
    stand out as much as common ones.

    Args:
        metrics (DetectionMetrics): the metrics of one task.
    """
    counts = metrics.confusion
    labels = [plain_text(label) for label in metrics.confusion_labels]
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    size = 2.2 + 0.75 * len(labels)
    figure = Figure(figsize=(size + 1, size))
    axes = figure.add_subplot()
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of row")
    for row in range(counts.shape[0]):
        for col in range(counts.shape[1]):
            color = "white" if shares[row, col] > 0.6 else "black"
            axes.text(col, row, str(counts[row, col]), ha="center", va="center", color=color)
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("ground-truth class")
    axes.set_title(
        f"{metrics.iou_type}: score >= {metrics.score_threshold:g}, "
        f"IoU >= {metrics.iou_threshold:g}"
    )
    return _png_bytes(figure)
