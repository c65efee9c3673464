"""Speed and memory of dental_d2's runtimes against torchvision's Mask R-CNN, at equal work."""

from .runner import TARGETS, format_table, run_benchmark

__all__ = ["TARGETS", "format_table", "run_benchmark"]
