"""Dental datasets: Roboflow COCO and YOLO-seg loading and validation, registration, image
reading (DICOM included), mapper."""

from .image_io import image_size, read_image
from .mapper import DentalDatasetMapper
from .register import (
    check_num_classes,
    load_registered_split,
    register_dental_splits,
    register_from_config,
)
from .roboflow import load_roboflow_json, load_roboflow_split
from .yolo import load_yolo_split

__all__ = [
    "DentalDatasetMapper",
    "check_num_classes",
    "image_size",
    "load_roboflow_json",
    "load_registered_split",
    "load_roboflow_split",
    "load_yolo_split",
    "read_image",
    "register_dental_splits",
    "register_from_config",
]
