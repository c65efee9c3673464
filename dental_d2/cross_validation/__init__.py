"""K-fold cross-validation of a training config on an export's pooled train and valid splits."""

from .runner import CV_FOLDER, FoldRun, cross_validate
from .splits import PooledImage, fold_assignments, fold_layout, pool_images, write_fold_export
from .summary import fold_metrics, format_summary, summarize_folds, write_summary

__all__ = [
    "CV_FOLDER",
    "FoldRun",
    "PooledImage",
    "cross_validate",
    "fold_assignments",
    "fold_layout",
    "fold_metrics",
    "format_summary",
    "pool_images",
    "summarize_folds",
    "write_fold_export",
    "write_summary",
]
