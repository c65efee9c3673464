"""Evaluation: COCO AP with per-class precision, recall, F1, plots and a report a dentist reads."""

from .coco_eval import run_coco_eval
from .evaluator import DentalEvaluator, evaluate_task
from .matching import ImageMatches, greedy_match, match_image, match_predictions
from .metrics import (
    ClassMetrics,
    DetectionMetrics,
    best_f1_threshold,
    compute_detection_metrics,
    per_class_ap,
    pr_curve,
    precision_recall_f1,
)
from .offline import evaluate_files, load_ground_truth, load_results
from .report import TaskEvaluation, metrics_dict, write_outputs

__all__ = [
    "ClassMetrics",
    "DentalEvaluator",
    "DetectionMetrics",
    "ImageMatches",
    "TaskEvaluation",
    "best_f1_threshold",
    "compute_detection_metrics",
    "evaluate_files",
    "evaluate_task",
    "greedy_match",
    "load_ground_truth",
    "load_results",
    "match_image",
    "match_predictions",
    "metrics_dict",
    "per_class_ap",
    "pr_curve",
    "precision_recall_f1",
    "run_coco_eval",
    "write_outputs",
]
