"""Training: DentalTrainer (detectron2's DefaultTrainer with the dental hooks) and its set-up."""

from .launch import argument_parser, launch_from_args, main, setup
from .trainer import DentalTrainer

__all__ = ["DentalTrainer", "argument_parser", "launch_from_args", "main", "setup"]
