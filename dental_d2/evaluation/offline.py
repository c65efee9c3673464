"""Evaluation of a COCO results file against a COCO annotations file, without a model."""

import contextlib
import io
import logging
import os

from pycocotools.coco import COCO

from ..data.categories import thing_colors
from ..data.coco_json import (
    box_from_segmentation,
    is_box,
    read_coco_json,
    read_coco_results,
    segmentation_problem,
    segmentation_to_rle,
)
from ..data.coco_records import checked_annotations, index_images, read_thing_categories_of
from ..errors import DentalError
from .coco_eval import IOU_TYPES
from .evaluator import evaluate_task
from .report import log_class_table, metrics_dict, write_outputs

logger = logging.getLogger(__name__)


def load_ground_truth(path: str) -> COCO:
    """Loads a COCO annotations file for evaluation, checking what the evaluation relies on.

    Roboflow's project-level category is dropped (`thing_categories`). Annotation ids are
    renumbered from 1 because pycocotools' COCOeval takes id 0, which Roboflow uses, for "no
    match". A missing `iscrowd` is 0 and a missing `area` is the box's.

    Args:
        path (str): the COCO annotations file.

    Raises:
        DentalError: the file is missing or broken, or a record is unusable.
    """
    data = read_coco_json(
        path, "pass the annotations, e.g. valid/_annotations.coco.json, with --gt"
    )
    # The checks and messages of training's loader, so a record it refuses is refused here too.
    images = index_images(data, path)
    categories = read_thing_categories_of(data, path)
    category_ids = [c["id"] for c in categories]
    annotations = []
    for source, _, where in checked_annotations(data, images, category_ids, path):
        if not is_box(source.get("bbox")):
            raise DentalError(f"{where} has no [x, y, w, h] bbox; fix or re-export the file")
        annotation = dict(source, id=len(annotations) + 1, iscrowd=int(source.get("iscrowd", 0)))
        # Where the record is in the user's file, for messages.
        annotation["source_id"] = source["id"]
        if "area" not in annotation:
            annotation["area"] = float(annotation["bbox"][2] * annotation["bbox"][3])
        annotations.append(annotation)

    coco = COCO()
    coco.dataset = {**data, "categories": categories, "annotations": annotations}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def check_segmentations(coco_gt: COCO, path: str) -> None:
    """Checks that every non-crowd annotation has a mask pycocotools can rasterise.

    Args:
        coco_gt (COCO): from `load_ground_truth`.
        path (str): the annotations file, for messages.

    Raises:
        DentalError: naming the first annotation without a usable mask.
    """
    for annotation in coco_gt.dataset["annotations"]:
        if annotation["iscrowd"]:
            continue
        image = coco_gt.imgs[annotation["image_id"]]
        problem = segmentation_problem(
            annotation.get("segmentation"), image["height"], image["width"]
        )
        if problem:
            raise DentalError(
                f"{path}: annotation id {annotation['source_id']} (image id {image['id']}, "
                f"{image['file_name']}): {problem}; fix its mask, or evaluate boxes only with "
                "--tasks bbox"
            )


def _class_list(categories) -> str:
    return ", ".join(f"{c['id']} {c['name']}" for c in categories)


def load_results(path: str, coco_gt: COCO, gt_path: str = "the annotations file") -> list[dict]:
    """Loads and checks a COCO results file against the ground truth.

    Polygon segmentations are converted to RLEs, and results with a segmentation but no bbox get
    the mask's box, as pycocotools' `loadRes` does.

    Args:
        path (str): a JSON list of {"image_id", "category_id", "score", "bbox" and/or
            "segmentation"}, category ids as in the annotations file.
        coco_gt (COCO): the ground truth, from `load_ground_truth`.
        gt_path (str): the annotations file's path, for messages.

    Raises:
        DentalError: the file is missing or broken, or a result refers to an image or class the
            ground truth does not have.
    """
    fix = "pass detectron2's coco_instances_results.json or alike with --predictions"
    results = []
    for i, source in enumerate(read_coco_results(path, fix)):
        record = f"{path}: result {i}"
        if source["image_id"] not in coco_gt.imgs:
            raise DentalError(
                f"{record} has image_id {source['image_id']!r}, which is not an image of "
                f"{gt_path}; use the image ids of that file's 'images' list"
            )
        if source["category_id"] not in coco_gt.cats:
            raise DentalError(
                f"{record} has category_id {source['category_id']!r}, which is not a class of "
                f"{gt_path} (classes: {_class_list(coco_gt.cats.values())}); use its category ids"
            )
        result = dict(source)
        image = coco_gt.imgs[result["image_id"]]
        if "segmentation" in result:
            problem = segmentation_problem(result["segmentation"], image["height"], image["width"])
            if problem:
                raise DentalError(f"{record}: {problem}; fix the file")
            result["segmentation"] = segmentation_to_rle(
                result["segmentation"], image["height"], image["width"]
            )
            if not is_box(result.get("bbox")):
                result["bbox"] = box_from_segmentation(result["segmentation"])
        results.append(result)
    return results


def _choose_tasks(tasks, results: list[dict], results_path: str) -> tuple[str, ...]:
    """The tasks asked for, or "bbox" and "segm" when every result has a mask."""
    if tasks is None:
        has_masks = bool(results) and all("segmentation" in r for r in results)
        return ("bbox", "segm") if has_masks else ("bbox",)
    if "segm" in tasks and any("segmentation" not in r for r in results):
        raise DentalError(
            f"{results_path}: some results have no segmentation; evaluate with --tasks bbox"
        )
    return tuple(tasks)


def evaluate_files(
    gt_path: str,
    results_path: str,
    output_dir: str,
    image_root: str | None = None,
    tasks: tuple[str, ...] | None = None,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
    num_report_images: int = 4,
) -> dict:
    """Evaluates a COCO results file and writes metrics.json, PNG plots and report.html.

    Args:
        gt_path (str): the COCO annotations file (a Roboflow export works as is).
        results_path (str): the COCO results file, category ids as in `gt_path`.
        output_dir (str): where the outputs go.
        image_root (str or None): the images' folder, for the report; None draws no images.
        tasks (tuple[str] or None): "bbox" and/or "segm"; by default "bbox", and "segm" when
            every result has a segmentation.
        score_threshold (float): predictions scoring below it are not counted by P/R/F1.
        iou_threshold (float): the least IoU of a match.
        num_report_images (int): best and worst images drawn, each.

    Returns:
        dict: the content written to metrics.json.

    Raises:
        DentalError: a file is missing or broken, or the two files do not fit together.
    """
    if tasks is not None and not set(tasks) <= set(IOU_TYPES):
        raise DentalError(f"unknown task in {list(tasks)}; use bbox and/or segm")
    coco_gt = load_ground_truth(gt_path)
    results = load_results(results_path, coco_gt, gt_path)
    tasks = _choose_tasks(tasks, results, results_path)
    if "segm" in tasks:
        check_segmentations(coco_gt, gt_path)
    logger.info(
        f"Evaluating {len(results)} results on {len(coco_gt.getImgIds())} images "
        f"({', '.join(tasks)}) with classes {_class_list(coco_gt.cats.values())}"
    )
    thresholds = {"score_threshold": score_threshold, "iou_threshold": iou_threshold}
    evaluations = {}
    for task in tasks:
        evaluations[task] = evaluate_task(coco_gt, results, task, progress=True, **thresholds)
        log_class_table(evaluations[task])
    write_outputs(
        output_dir,
        evaluations,
        coco_gt,
        title=f"{os.path.basename(results_path)} on {gt_path}",
        image_root=image_root,
        draw_images=image_root is not None,
        thing_colors=thing_colors([coco_gt.cats[c]["name"] for c in sorted(coco_gt.cats)]),
        num_images=num_report_images,
        provenance={
            "Predictions": os.path.abspath(results_path),
            "Ground truth": os.path.abspath(gt_path),
        },
    )
    return metrics_dict(evaluations)
