"""Predictions as COCO: masks to RLEs, `Instances` to annotations, and the dataset dict around them.

Every tool that writes predictions (`predictions.coco.json`, the service's answers, the
active-learning pre-labels) goes through these functions, so they all write the same format.
"""

import datetime
from collections.abc import Sequence

import numpy as np
import pycocotools.mask as mask_util
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.structures import Instances

from .modeling.postprocessing import MASK_FROM_PEAK

__all__ = ["coco_dataset", "instances_to_coco_annotations", "masks_to_rles"]


def masks_to_rles(masks) -> list[dict]:
    """Encodes binary masks as COCO RLEs, all in one pycocotools call.

    Args:
        masks (np.ndarray | torch.Tensor): (N, H, W) binary masks, on the CPU.

    Returns:
        list[dict]: N RLEs, `size` [H, W] and `counts` a str (as JSON and pycocotools take it).
    """
    masks = np.asarray(masks)
    if not len(masks):
        return []
    # A bool mask's bytes are already 0 and 1: viewed as uint8, one copy (to the column-major
    # order pycocotools reads) is made instead of two.
    masks = masks.view(np.uint8) if masks.dtype == bool else masks.astype(np.uint8, copy=False)
    rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
    return [{"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")} for rle in rles]


def instances_to_coco_annotations(
    instances: Instances, image_id: int, first_id: int = 1, rles: list[dict] | None = None
) -> list[dict]:
    """Converts predictions to COCO annotations with RLE masks (category ids 1..K).

    detectron2's `instances_to_coco_json` converts boxes, scores and classes; this adds what a
    COCO dataset (not a results list) has: ids, areas, `iscrowd`, category ids from 1, and
    values rounded to what a photo's pixels warrant. Annotations keep the order of the
    instances, so the findings' `instance` index points at them.

    Args:
        instances (Instances): one image's predictions; without `pred_masks` and `rles` (a
            box-only model) the annotations have no `segmentation` and `area` is the box's.
        image_id (int): the COCO id of the image.
        first_id (int): the id of the first annotation.
        rles (list[dict] | None): the instances' masks already encoded (by `masks_to_rles`),
            used instead of `pred_masks`; None encodes `pred_masks`.

    Returns:
        list[dict]: `id`, `image_id`, `category_id`, `bbox` (XYWH), `area` (mask pixels),
        `score`, `iscrowd` 0 and `segmentation` (RLE, `counts` a str).
    """
    instances = instances.to("cpu")
    if rles is None and instances.has("pred_masks"):
        rles = masks_to_rles(instances.pred_masks)
    from_peak = instances.get(MASK_FROM_PEAK) if instances.has(MASK_FROM_PEAK) else None
    fields = {name: instances.get(name) for name in ("pred_boxes", "scores", "pred_classes")}
    # Without the masks, which are encoded above in one call (or came encoded).
    results = instances_to_coco_json(Instances(instances.image_size, **fields), image_id)
    annotations = []
    for k, result in enumerate(results):
        box = result["bbox"]
        annotation = {
            "id": first_id + k,
            "image_id": image_id,
            "category_id": result["category_id"] + 1,
            "bbox": [round(v, 2) for v in box],
            "area": round(box[2] * box[3], 2),
            "score": round(float(result["score"]), 4),
            "iscrowd": 0,
        }
        if rles is not None:
            annotation["area"] = int(mask_util.area(rles[k]))
            annotation["segmentation"] = rles[k]
        if from_peak is not None and bool(from_peak[k]):
            # Its mask had no pixel at probability 0.5: outlined at half its peak.
            annotation[MASK_FROM_PEAK] = True
        annotations.append(annotation)
    return annotations


def coco_dataset(images: list[dict], annotations: list[dict], class_names: Sequence[str]) -> dict:
    """Wraps images and annotations into a COCO dataset dict, categories numbered 1..K.

    Args:
        images (list[dict]): `id`, `file_name`, `height`, `width`.
        annotations (list[dict]): as from `instances_to_coco_annotations`.
        class_names (Sequence[str]): class names in contiguous-id order.
    """
    return {
        "info": {
            "description": "dental_d2 predictions",
            "date_created": datetime.datetime.now().isoformat(timespec="seconds"),
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": name, "supercategory": "dental"}
            for i, name in enumerate(class_names)
        ],
    }
