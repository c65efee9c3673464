"""detectron2's DatasetMapper, reading images with dental_d2's reader (16-bit, alpha, EXIF) and
taking RLE masks in a polygon-format config."""

import copy

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from PIL import Image

from ..errors import DentalError
from ..stop_signals import ignore_stop_signals
from .image_io import read_image
from .lesion_crop import RandomCropAroundLesion, lesion_boxes, lesion_class_ids

__all__ = ["DentalDatasetMapper"]

# Set in a data-loader worker once it ignores the stop signals.
_worker_ignores_stop_signals = False


def _ignore_stop_signals_in_worker():
    """In a DataLoader worker, ignores SIGTERM and SIGINT.

    A scheduler signals every process of a job and Ctrl-C the whole terminal group; torch's
    workers would die of it, and the main process's loader would fail before the trainer could
    save its checkpoint. The main process decides when to stop, then shuts its workers down.
    """
    global _worker_ignores_stop_signals
    if _worker_ignores_stop_signals or torch.utils.data.get_worker_info() is None:
        return
    ignore_stop_signals()
    _worker_ignores_stop_signals = True


def build_train_augmentations(cfg) -> list:
    """Training augmentations: resize, then crop, flip and colour jitter.

    detectron2's `DatasetMapper` crops before resizing; here the crop comes after, so a crop
    of a large photo keeps its lesions at the scale the model sees at test time while costing
    only the crop's pixels.

    Args:
        cfg (CfgNode): INPUT.MIN_SIZE_TRAIN, MAX_SIZE_TRAIN, MIN_SIZE_TRAIN_SAMPLING, CROP,
            RANDOM_FLIP and COLOR_JITTER.
    """
    augmentations = [
        T.ResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        )
    ]
    crop = cfg.INPUT.CROP
    if crop.ENABLED and crop.LESION_PROBABILITY > 0:
        augmentations.append(RandomCropAroundLesion(crop.TYPE, crop.SIZE, crop.LESION_PROBABILITY))
    elif crop.ENABLED:
        augmentations.append(T.RandomCrop(crop.TYPE, crop.SIZE))
    if cfg.INPUT.RANDOM_FLIP != "none":
        augmentations.append(
            T.RandomFlip(
                horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                vertical=cfg.INPUT.RANDOM_FLIP == "vertical",
            )
        )
    strength = cfg.INPUT.COLOR_JITTER
    if strength > 0:
        low, high = 1.0 - strength, 1.0 + strength
        augmentations += [
            T.RandomBrightness(low, high),
            T.RandomContrast(low, high),
            # detectron2's saturation weights the channels as RGB; BGR images get nearly the
            # same grey, which is all a jitter needs.
            T.RandomSaturation(low, high),
        ]
    return augmentations


class DentalDatasetMapper(DatasetMapper):
    """A `DatasetMapper` that reads images with `dental_d2.data.read_image`.

    Behaves as detectron2's mapper (same config, augmentations and outputs), but grayscale,
    16-bit, RGBA and EXIF-rotated images load in training and evaluation, and an image whose
    decoded size differs from its dataset dict raises `DentalError` naming the file.
    With `INPUT.MASK_FORMAT polygon`, an image whose annotations include an RLE mask (as CVAT
    and other tools export) gets bitmasks instead; detectron2's mask loss takes both, image by
    image. Build it as the parent: `DentalDatasetMapper(cfg, is_train=True)`.

    Args:
        lesion_ids (Collection[int]): contiguous ids of the lesion classes, whose boxes a
            training crop may be placed around (`INPUT.CROP.LESION_PROBABILITY`).
        Others: as `DatasetMapper`'s.
    """

    @configurable
    def __init__(self, is_train: bool = True, *, lesion_ids=(), **kwargs):
        super().__init__(is_train, **kwargs)
        self.lesion_ids = frozenset(lesion_ids)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = super().from_config(cfg, is_train)
        if is_train:
            ret["augmentations"] = build_train_augmentations(cfg)
        ret["lesion_ids"] = lesion_class_ids(
            cfg.DENTAL.CLASS_NAMES, cfg.DENTAL.FINDINGS.TOOTH_CLASSES
        )
        return ret

    def load_image(self, dataset_dict: dict) -> np.ndarray:
        """Reads the dict's image in `self.image_format` and checks its size.

        Args:
            dataset_dict (dict): one record in detectron2's dataset format; `height` and
                `width` are filled in when absent.

        Returns:
            np.ndarray: HxWxC uint8.

        Raises:
            DentalError: the image is unreadable or its size differs from the dict.
        """
        file_name = dataset_dict["file_name"]
        if self.image_format in ("BGR", "RGB"):
            image = read_image(file_name, format=self.image_format)
        else:
            # Other detectron2 formats ("L", "YUV-BT.601", ...) are converted from RGB by
            # detectron2 itself.
            rgb = read_image(file_name, format="RGB")
            image = utils.convert_PIL_to_numpy(Image.fromarray(rgb), self.image_format)
        height, width = image.shape[:2]
        expected = (dataset_dict.get("height", height), dataset_dict.get("width", width))
        if (height, width) != expected:
            raise DentalError(
                f"{file_name}: image is {height}x{width} (HxW) but its dataset record (image id "
                f"{dataset_dict.get('image_id')}) says {expected[0]}x{expected[1]}; fix "
                "'height'/'width' in the JSON or re-export the dataset"
            )
        dataset_dict["height"], dataset_dict["width"] = height, width
        return image

    def __call__(self, dataset_dict: dict) -> dict:
        """Maps one dataset dict to the model's input, as `DatasetMapper.__call__`.

        Args:
            dataset_dict (dict): metadata of one image, in detectron2's dataset format.

        Returns:
            dict: the input format of detectron2's built-in models.
        """
        _ignore_stop_signals_in_worker()
        dataset_dict = copy.deepcopy(dataset_dict)  # modified below
        image = self.load_image(dataset_dict)
        sem_seg_gt = None
        if "sem_seg_file_name" in dataset_dict:
            sem_seg_gt = utils.read_image(dataset_dict.pop("sem_seg_file_name"), "L").squeeze(2)

        boxes = None
        if self.is_train and self.lesion_ids and "annotations" in dataset_dict:
            boxes = lesion_boxes(dataset_dict["annotations"], self.lesion_ids)
        aug_input = T.AugInput(image, boxes=boxes, sem_seg=sem_seg_gt)
        transforms = self.augmentations(aug_input)
        image, sem_seg_gt = aug_input.image, aug_input.sem_seg
        image_shape = image.shape[:2]
        # Tensors travel through the data loader's shared memory; numpy arrays would be pickled.
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem_seg_gt is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(sem_seg_gt.astype("long"))
        if self.proposal_topk is not None:
            utils.transform_proposals(
                dataset_dict, image_shape, transforms, proposal_topk=self.proposal_topk
            )

        if not self.is_train:
            dataset_dict.pop("annotations", None)
            dataset_dict.pop("sem_seg_file_name", None)
            return dataset_dict
        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image_shape)
        return dataset_dict

    def _transform_annotations(self, dataset_dict: dict, transforms, image_shape) -> None:
        """Turns the dict's annotations into `instances`, as detectron2's mapper does.

        Args:
            dataset_dict (dict): the record; its `annotations` are replaced by `instances`.
            transforms (TransformList): the augmentations applied to the image.
            image_shape (tuple[int, int]): (height, width) of the augmented image.
        """
        annotations = [a for a in dataset_dict.pop("annotations") if a.get("iscrowd", 0) == 0]
        for annotation in annotations:
            if not self.use_instance_mask:
                annotation.pop("segmentation", None)
            if not self.use_keypoint:
                annotation.pop("keypoints", None)
        mask_format = self.instance_mask_format
        # PolygonMasks cannot hold an RLE mask; BitMasks hold both polygons and RLE.
        if mask_format == "polygon" and any(
            isinstance(a.get("segmentation"), dict) for a in annotations
        ):
            mask_format = "bitmask"
        annotations = [
            utils.transform_instance_annotations(
                a, transforms, image_shape, keypoint_hflip_indices=self.keypoint_hflip_indices
            )
            for a in annotations
        ]
        instances = utils.annotations_to_instances(
            annotations, image_shape, mask_format=mask_format
        )
        # Cropping can leave a box larger than its mask: recompute it, as detectron2 does.
        if self.recompute_boxes:
            instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        dataset_dict["instances"] = utils.filter_empty_instances(instances)
