"""Dental datasets: Roboflow COCO loading and validation, registration, image reading, mapper."""

from .image_io import image_size, read_image
from .mapper import DentalDatasetMapper
from .register import check_num_classes, register_dental_splits, register_from_config
from .roboflow import load_roboflow_json, load_roboflow_split

__all__ = [
    "DentalDatasetMapper",
    "check_num_classes",
    "image_size",
    "load_roboflow_json",
    "load_roboflow_split",
    "read_image",
    "register_dental_splits",
    "register_from_config",
]
