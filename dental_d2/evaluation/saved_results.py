"""Loading saved COCO results (an evaluation's `coco_instances_results.json`) as `Instances`,
checked against the dataset they were made on; `visualize.render_saved_predictions` draws them."""

import logging
from collections.abc import Sequence

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.structures import Boxes, BoxMode, Instances

from ..data.coco_json import (
    box_from_segmentation,
    is_box,
    read_coco_results,
    segmentation_problem,
    segmentation_to_rle,
)
from ..errors import DentalError

logger = logging.getLogger(__name__)


def load_coco_results(path: str) -> list[dict]:
    """Reads a COCO results file (a list of detections), as COCOEvaluator writes it.

    Checked by `dental_d2.data.coco_json.read_coco_results`, as `tools/evaluate.py` checks it:
    each detection needs ids, a score, and a bbox or a segmentation.

    Args:
        path (str): e.g. OUTPUT_DIR/eval/dental_test/coco_instances_results.json.

    Raises:
        DentalError: when the file is missing, not JSON or not a list of detections.
    """
    return read_coco_results(
        path,
        "pass the coco_instances_results.json that evaluation wrote in OUTPUT_DIR/eval/<dataset>/",
    )


def results_to_instances(
    results: Sequence[dict], image_size: tuple[int, int], dataset_id_to_contiguous: dict
) -> Instances:
    """Builds prediction `Instances` from one image's COCO results.

    Args:
        results (Sequence[dict]): detections with dataset category ids, XYWH boxes and/or
            segmentations (RLE or polygons; a missing box is the mask's).
        image_size (tuple[int, int]): (height, width).
        dataset_id_to_contiguous (dict): the dataset's `thing_dataset_id_to_contiguous_id`.
    """
    height, width = image_size
    instances = Instances(image_size)
    boxes = [r["bbox"] if is_box(r.get("bbox")) else box_from_segmentation(r["segmentation"])
             for r in results]  # fmt: skip
    boxes = BoxMode.convert(
        np.array(boxes, dtype=np.float64).reshape(-1, 4), BoxMode.XYWH_ABS, BoxMode.XYXY_ABS
    )
    instances.pred_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32))
    instances.scores = torch.tensor([float(r["score"]) for r in results], dtype=torch.float32)
    instances.pred_classes = torch.tensor(
        [dataset_id_to_contiguous[r["category_id"]] for r in results], dtype=torch.int64
    )
    if results and all("segmentation" in r for r in results):
        rles = [segmentation_to_rle(r["segmentation"], height, width) for r in results]
        masks = [mask_util.decode({**rle, "counts": rle["counts"].encode("ascii")}) for rle in rles]
        instances.pred_masks = torch.as_tensor(np.stack(masks).astype(bool))
    return instances


def check_results_fit_dataset(
    results: list[dict], predictions_file: str, dataset_name: str, id_map: dict, records: list
) -> None:
    """Refuses results made on another dataset: unknown category ids, no known image id, or
    masks of another size than their image.

    Args:
        results (list[dict]): from `load_coco_results`.
        predictions_file (str): their file, for messages.
        dataset_name (str): the registered dataset they are drawn on.
        id_map (dict): its `thing_dataset_id_to_contiguous_id`.
        records (list[dict]): its dataset dicts.
    """
    unknown = sorted({r["category_id"] for r in results} - set(id_map))
    if unknown:
        raise DentalError(
            f"{predictions_file}: category ids {unknown} are not in {dataset_name} (ids "
            f"{sorted(id_map)}); pass the --dataset these predictions were made on"
        )
    record_ids = {record["image_id"] for record in records}
    if results and not record_ids & {r["image_id"] for r in results}:
        raise DentalError(
            f"{predictions_file}: none of its image ids are in {dataset_name}; pass the "
            "--dataset these predictions were made on"
        )
    sizes = {record["image_id"]: (record["height"], record["width"]) for record in records}
    for index, r in enumerate(results):
        if "segmentation" in r and r["image_id"] in sizes:
            problem = segmentation_problem(r["segmentation"], *sizes[r["image_id"]])
            if problem:
                raise DentalError(
                    f"{predictions_file}: result {index} (image id {r['image_id']}): {problem}; "
                    "pass the --dataset these predictions were made on"
                )
