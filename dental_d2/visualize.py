"""Overlays, COCO prediction files and findings for images, and GT-vs-prediction renderings."""

import datetime
import glob
import json
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Sequence

import matplotlib
import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.data.detection_utils import annotations_to_instances
from detectron2.structures import Boxes, BoxMode, Instances
from detectron2.utils.visualizer import ColorMode, Visualizer
from tqdm import tqdm

from .data import read_image, register_from_config
from .data.categories import thing_colors
from .errors import DentalError
from .evaluation.plots import plain_text
from .file_io import write_image, write_json
from .findings import Findings, findings_from_instances, findings_to_dict, summarize

logger = logging.getLogger(__name__)

# Files a directory given as input contributes (compared case-insensitively).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
# Mask fill opacity: low enough that the enamel under a lesion stays visible.
MASK_ALPHA = 0.4
# Written to the output directory.
PREDICTIONS_FILE = "predictions.coco.json"
FINDINGS_FILE = "findings.json"


def build_metadata(class_names: Sequence[str]) -> Metadata:
    """Returns drawing metadata (`thing_classes`, `thing_colors`) for a model's classes.

    Used when no dataset with these classes is registered; the colours follow the datasets' rule
    (`dental_d2.data.categories.thing_colors`). It is not added to the global `MetadataCatalog`.

    Args:
        class_names (Sequence[str]): class names in contiguous-id order.
    """
    return Metadata(
        name="dental_predictions",
        thing_classes=list(class_names),
        thing_colors=thing_colors(list(class_names)),
    )


def draw_instances(
    image_rgb: np.ndarray,
    instances: Instances,
    metadata: Metadata,
    *,
    findings: Findings | None = None,
    summary: str | None = None,
) -> np.ndarray:
    """Draws masks, boxes, class names and scores with detectron2's Visualizer.

    Colours come from `metadata.thing_colors` (one per class, not jittered, so a class looks
    the same in every image). Teeth are labelled with their number from `findings`.

    Args:
        image_rgb (np.ndarray): HxWx3 RGB uint8.
        instances (Instances): predictions (`pred_*`, `scores`) or ground truth (`gt_*`).
        metadata (Metadata): with `thing_classes` and `thing_colors`.
        findings (Findings | None): the image's findings, to number the teeth.
        summary (str | None): a line written on a black band above the image, so that it
            hides nothing.

    Returns:
        np.ndarray: (H + band)xWx3 RGB uint8; HxWx3 without a summary.
    """
    instances = instances.to("cpu")
    prefix = "pred" if instances.has("pred_classes") or not instances.has("gt_classes") else "gt"
    visualizer = Visualizer(image_rgb, metadata, instance_mode=ColorMode.IMAGE)
    if len(instances):
        classes = instances.get(f"{prefix}_classes").tolist()
        names = metadata.thing_classes
        labels = [plain_text(names[c]) for c in classes]
        if findings is not None:
            for tooth in findings.teeth:
                labels[tooth.index] += f" {tooth.number}"
        if instances.has("scores"):
            scores = instances.scores.tolist()
            labels = [f"{label} {score:.0%}" for label, score in zip(labels, scores)]
        masks = instances.get(f"{prefix}_masks") if instances.has(f"{prefix}_masks") else None
        if masks is not None and not isinstance(masks, torch.Tensor | np.ndarray):
            masks = masks.tensor  # BitMasks
        boxes = instances.get(f"{prefix}_boxes") if instances.has(f"{prefix}_boxes") else None
        visualizer.overlay_instances(
            boxes=boxes,
            masks=None if masks is None else np.asarray(masks).astype(np.uint8),
            labels=labels,
            assigned_colors=[np.array(metadata.thing_colors[c]) / 255.0 for c in classes],
            alpha=MASK_ALPHA,
        )
    overlay = visualizer.get_output().get_image()
    if summary:
        # The Visualizer's own default text size for an image of this size.
        font_size = max(np.sqrt(overlay.shape[0] * overlay.shape[1]) // 90, 10)
        overlay = np.concatenate([summary_band(summary, overlay.shape[1], font_size), overlay])
    return overlay


def summary_band(text: str, width: int, font_size: float) -> np.ndarray:
    """Returns a black band `width` pixels wide with one line of white text, shrunk to fit.

    Args:
        text (str): the line.
        width (int): the width of the image the band goes above.
        font_size (float): the font size in points before shrinking.

    Returns:
        np.ndarray: hxwx3 RGB uint8, h about 1.5 lines of text.
    """
    # Points to pixels at the figure dpi that detectron2's VisImage draws with.
    line_height = font_size * matplotlib.rcParams["figure.dpi"] / 72
    height = int(np.ceil(line_height * 1.5)) + 4
    band = Visualizer(np.zeros((height, width, 3), dtype=np.uint8))
    band.draw_text(
        plain_text(text), (4, 2), font_size=font_size, color="white", horizontal_alignment="left"
    )
    artist = band.output.ax.texts[-1]
    artist.set_bbox(None)  # the band itself is the background
    text_width = artist.get_window_extent(renderer=band.output.canvas.get_renderer()).width
    if text_width > width - 8:
        artist.set_fontsize(artist.get_fontsize() * (width - 8) / text_width)
    return band.get_output().get_image()


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 4) -> np.ndarray:
    """Puts two RGB images next to each other on white, `gap` pixels apart, top-aligned."""
    height = max(left.shape[0], right.shape[0])
    canvas = np.full((height, left.shape[1] + gap + right.shape[1], 3), 255, dtype=np.uint8)
    canvas[: left.shape[0], : left.shape[1]] = left
    canvas[: right.shape[0], left.shape[1] + gap :] = right
    return canvas


def collect_images(inputs: Sequence[str]) -> tuple[list[str], list[str]]:
    """Expands files, directories and glob patterns into image paths.

    A directory contributes its images (IMAGE_EXTENSIONS, not recursive), sorted; a glob
    pattern (`**` recurses) its matching images, sorted; a file is taken as given. A path
    reached twice is kept once.

    Args:
        inputs (Sequence[str]): files, directories and glob patterns.

    Returns:
        tuple[list[str], list[str]]: the image paths, and one message for each input that gave
        no image.

    Raises:
        DentalError: when no input gives any image.
    """
    paths, problems, seen = [], [], set()
    for item in inputs:
        if os.path.isfile(item):
            found = [item]
        elif os.path.isdir(item):
            found = sorted(
                os.path.join(item, name)
                for name in os.listdir(item)
                if _is_image_name(name) and os.path.isfile(os.path.join(item, name))
            )
        else:
            found = sorted(
                p
                for p in glob.glob(item, recursive=True)
                if _is_image_name(p) and os.path.isfile(p)
            )
        if not found:
            problems.append(
                f"{item}: matched no image; pass an existing file, a directory or a glob pattern"
            )
        for path in found:
            key = os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                paths.append(path)
    if not paths:
        raise DentalError(
            f"no images found in {' '.join(inputs)}: pass image files, directories or glob "
            f"patterns (extensions {', '.join(IMAGE_EXTENSIONS)})"
        )
    return paths, problems


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def relative_names(paths: Sequence[str]) -> list[str]:
    """Returns the paths relative to the deepest directory that holds them all.

    These are the `file_name`s of predictions.coco.json: plain file names when all images come
    from one directory, which is what annotation tools match uploaded images by.

    Args:
        paths (Sequence[str]): image paths.
    """
    if not paths:
        return []
    absolute = [os.path.abspath(p) for p in paths]
    root = os.path.commonpath([os.path.dirname(p) for p in absolute])
    return [os.path.relpath(p, root).replace(os.sep, "/") for p in absolute]


def overlay_names(paths: Sequence[str]) -> list[str]:
    """Returns a distinct `<stem>.jpg` for each image.

    Images with the same stem from different directories become `<dir>__<stem>.jpg` (the path
    below the common directory); same stem and directory, `<stem>_<ext>.jpg`.

    Args:
        paths (Sequence[str]): image paths.
    """
    relative = relative_names(paths)
    stems = [os.path.splitext(os.path.basename(r))[0] for r in relative]
    folders = defaultdict(set)
    for stem, r in zip(stems, relative):
        folders[stem].add(os.path.dirname(r))
    names = [
        os.path.splitext(r)[0].replace("/", "__") if len(folders[stem]) > 1 else stem
        for stem, r in zip(stems, relative)
    ]
    counts = Counter(names)
    names = [
        f"{n}_{os.path.splitext(r)[1].lstrip('.').lower()}" if counts[n] > 1 else n
        for n, r in zip(names, relative)
    ]
    # Only names differing in the case of the extension (a.png, a.PNG) are left to number.
    unique, used = [], Counter()
    for name in names:
        candidate = name if not used[name] else f"{name}_{used[name]}"
        used[name] += 1
        unique.append(candidate + ".jpg")
    return unique


def instances_to_coco_annotations(
    instances: Instances, image_id: int, first_id: int = 1
) -> list[dict]:
    """Converts predictions to COCO annotations with RLE masks (category ids 1..K).

    Annotations keep the order of the instances, so the findings' `instance` index points at
    them.

    Args:
        instances (Instances): one image's predictions; without `pred_masks` (a box-only
            model) the annotations have no `segmentation` and `area` is the box's.
        image_id (int): the COCO id of the image.
        first_id (int): the id of the first annotation.

    Returns:
        list[dict]: `id`, `image_id`, `category_id`, `bbox` (XYWH), `area` (mask pixels),
        `segmentation` (RLE, `counts` a str), `score`, `iscrowd` 0.
    """
    instances = instances.to("cpu")
    if not len(instances):
        return []
    boxes = BoxMode.convert(
        instances.pred_boxes.tensor.numpy(), BoxMode.XYXY_ABS, BoxMode.XYWH_ABS
    ).tolist()
    annotations = []
    for k, (box, cls, score) in enumerate(
        zip(boxes, instances.pred_classes.tolist(), instances.scores.tolist())
    ):
        annotations.append(
            {
                "id": first_id + k,
                "image_id": image_id,
                "category_id": cls + 1,
                "bbox": [round(v, 2) for v in box],
                "area": round(box[2] * box[3], 2),
                "score": round(float(score), 4),
                "iscrowd": 0,
            }
        )
    if instances.has("pred_masks"):
        masks = np.asarray(instances.pred_masks.numpy(), dtype=np.uint8)
        rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
        for annotation, rle in zip(annotations, rles):
            annotation["area"] = int(mask_util.area(rle))
            counts = rle["counts"].decode("ascii")
            annotation["segmentation"] = {"size": rle["size"], "counts": counts}
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


def _make_output_dir(path: str):
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise DentalError(
            f"{path}: cannot create the output directory ({e}); pass another --output"
        ) from e


def _write_overlay(path: str, image_rgb: np.ndarray):
    if not write_image(path, image_rgb[:, :, ::-1]):
        raise DentalError(f"{path}: cannot write the overlay; check that --output is writable")


def _write_json(path: str, data: dict, indent: int | None = None):
    write_json(path, data, indent=indent)


def predict_images(predictor, image_paths: Sequence[str], output_dir: str) -> list[str]:
    """Predicts images and writes overlays, predictions.coco.json and findings.json.

    Images are read and predicted `TEST.IMS_PER_BATCH` at a time. An image that cannot be read
    is logged, skipped and reported in the returned list.

    Args:
        predictor (dental_d2.predictor.Predictor): the model.
        image_paths (Sequence[str]): image files.
        output_dir (str): created if missing.

    Returns:
        list[str]: one message per image that failed (empty when all succeeded).
    """
    _make_output_dir(output_dir)
    file_names = relative_names(image_paths)
    overlays = overlay_names(image_paths)
    batch_size = max(1, predictor.cfg.TEST.IMS_PER_BATCH)
    coco_images, coco_annotations, findings_images, failures = [], [], [], []
    with tqdm(total=len(image_paths), desc="predicting", unit="image") as progress:
        for start in range(0, len(image_paths), batch_size):
            batch = []
            for k in range(start, min(start + batch_size, len(image_paths))):
                try:
                    batch.append((k, read_image(image_paths[k], format="BGR")))
                except DentalError as e:
                    logger.warning("skipped: %s", e)
                    failures.append(str(e))
                    progress.update(1)
                    progress.set_postfix(failed=len(failures))
            outputs = predictor.predict_batch([image for _, image in batch]) if batch else []
            for (k, image), instances in zip(batch, outputs):
                image_id = len(coco_images) + 1
                height, width = image.shape[:2]
                findings = predictor.findings(instances)
                summary = summarize(findings)
                overlay = draw_instances(
                    image[:, :, ::-1],
                    instances,
                    predictor.metadata,
                    findings=findings,
                    summary=summary,
                )
                _write_overlay(os.path.join(output_dir, overlays[k]), overlay)
                coco_images.append(
                    {"id": image_id, "file_name": file_names[k], "height": height, "width": width}
                )
                coco_annotations += instances_to_coco_annotations(
                    instances, image_id, first_id=len(coco_annotations) + 1
                )
                findings_images.append(
                    {"file": file_names[k], "overlay": overlays[k], **findings_to_dict(findings)}
                )
                progress.update(1)

    findings_cfg = predictor.cfg.DENTAL.FINDINGS
    _write_json(
        os.path.join(output_dir, PREDICTIONS_FILE),
        coco_dataset(coco_images, coco_annotations, predictor.class_names),
    )
    _write_json(
        os.path.join(output_dir, FINDINGS_FILE),
        {
            "tooth_classes": list(findings_cfg.TOOTH_CLASSES),
            "min_overlap": findings_cfg.MIN_OVERLAP,
            "images": findings_images,
        },
        indent=2,
    )
    logger.info(
        "wrote %d overlays, %s and %s to %s",
        len(coco_images),
        PREDICTIONS_FILE,
        FINDINGS_FILE,
        output_dir,
    )
    return failures


def load_coco_results(path: str) -> list[dict]:
    """Reads a COCO results file (a list of detections), as COCOEvaluator writes it.

    Args:
        path (str): e.g. OUTPUT_DIR/inference/coco_instances_results.json.

    Raises:
        DentalError: when the file is missing, not JSON or not a list of detections.
    """
    if not os.path.isfile(path):
        raise DentalError(
            f"{path}: predictions file not found; pass the coco_instances_results.json that "
            "evaluation wrote under OUTPUT_DIR/inference/"
        )
    try:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DentalError(f"{path}: not valid JSON ({e}); pass a COCO results file") from e
    required = ("image_id", "category_id", "bbox", "score")
    if not isinstance(results, list) or not all(
        isinstance(r, dict) and all(key in r for key in required) for r in results
    ):
        raise DentalError(
            f"{path}: not a COCO results file (a list of detections with "
            f"{', '.join(required)}); pass the coco_instances_results.json of an evaluation"
        )
    return results


def results_to_instances(
    results: Sequence[dict], image_size: tuple[int, int], dataset_id_to_contiguous: dict
) -> Instances:
    """Builds prediction `Instances` from one image's COCO results.

    Args:
        results (Sequence[dict]): detections with dataset category ids, XYWH boxes and
            optionally RLE `segmentation`.
        image_size (tuple[int, int]): (height, width).
        dataset_id_to_contiguous (dict): the dataset's `thing_dataset_id_to_contiguous_id`.
    """
    instances = Instances(image_size)
    boxes = np.array([r["bbox"] for r in results], dtype=np.float64).reshape(-1, 4)
    boxes = BoxMode.convert(boxes, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
    instances.pred_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32))
    instances.scores = torch.tensor([float(r["score"]) for r in results], dtype=torch.float32)
    instances.pred_classes = torch.tensor(
        [dataset_id_to_contiguous[r["category_id"]] for r in results], dtype=torch.int64
    )
    if results and all("segmentation" in r for r in results):
        masks = [mask_util.decode(_rle_bytes(r["segmentation"])) for r in results]
        instances.pred_masks = torch.as_tensor(np.stack(masks).astype(bool))
    return instances


def _rle_bytes(rle: dict) -> dict:
    counts = rle["counts"]
    return {
        "size": rle["size"],
        "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
    }


def render_saved_predictions(
    cfg,
    predictions_file: str,
    dataset_name: str,
    output_dir: str,
    *,
    confidence_threshold: float = 0.5,
) -> list[str]:
    """Draws ground truth (left) beside saved predictions (right) for a registered dataset.

    The dataset is registered from the config (`DENTAL.DATA_ROOT`, `DENTAL.DATASET_NAME`).
    Category ids of the predictions are dataset ids, mapped through the dataset's
    `thing_dataset_id_to_contiguous_id`. Each side carries its findings summary.

    Args:
        cfg (CfgNode): a dental config.
        predictions_file (str): a COCOEvaluator `coco_instances_results.json`.
        dataset_name (str): e.g. "dental_test".
        output_dir (str): created if missing; gets one `<stem>.jpg` per image.
        confidence_threshold (float): predictions scoring below this are not drawn.

    Returns:
        list[str]: one message per image that could not be read.
    """
    register_from_config(cfg)
    if dataset_name not in DatasetCatalog.list():
        prefix = cfg.DENTAL.DATASET_NAME + "_"
        registered = [name for name in DatasetCatalog.list() if name.startswith(prefix)]
        raise DentalError(
            f"{dataset_name}: no such dataset; registered from DENTAL.DATA_ROOT "
            f"{cfg.DENTAL.DATA_ROOT}: {', '.join(registered) or 'none'}; pass one as --dataset"
        )
    results = load_coco_results(predictions_file)
    metadata = MetadataCatalog.get(dataset_name)
    if not metadata.get("thing_colors"):
        metadata = build_metadata(metadata.thing_classes)
    id_map = metadata.thing_dataset_id_to_contiguous_id
    unknown = sorted({r["category_id"] for r in results} - set(id_map))
    if unknown:
        raise DentalError(
            f"{predictions_file}: category ids {unknown} are not in {dataset_name} (ids "
            f"{sorted(id_map)}); pass the --dataset these predictions were made on"
        )
    records = DatasetCatalog.get(dataset_name)
    by_image = defaultdict(list)
    for r in results:
        if r["score"] >= confidence_threshold:
            by_image[r["image_id"]].append(r)
    record_ids = {record["image_id"] for record in records}
    if results and not record_ids & {r["image_id"] for r in results}:
        raise DentalError(
            f"{predictions_file}: none of its image ids are in {dataset_name}; pass the "
            "--dataset these predictions were made on"
        )

    _make_output_dir(output_dir)
    names = overlay_names([record["file_name"] for record in records])
    findings_options = {
        "tooth_classes": cfg.DENTAL.FINDINGS.TOOTH_CLASSES,
        "min_overlap": cfg.DENTAL.FINDINGS.MIN_OVERLAP,
    }
    failures = []
    for record, name in tqdm(
        list(zip(records, names)), desc=f"rendering {dataset_name}", unit="image"
    ):
        try:
            image_rgb = read_image(record["file_name"], format="RGB")
        except DentalError as e:
            logger.warning("skipped: %s", e)
            failures.append(str(e))
            continue
        size = image_rgb.shape[:2]
        truth = annotations_to_instances(record.get("annotations", []), size, mask_format="bitmask")
        predictions = results_to_instances(by_image[record["image_id"]], size, id_map)
        if predictions.has("pred_masks") and tuple(predictions.pred_masks.shape[1:]) != size:
            raise DentalError(
                f"{predictions_file}: masks of image id {record['image_id']} are "
                f"{tuple(predictions.pred_masks.shape[1:])} but {record['file_name']} is {size}; "
                f"pass the --dataset these predictions were made on"
            )
        panels = []
        for title, instances in (("ground truth", truth), ("predictions", predictions)):
            findings = findings_from_instances(
                instances, metadata.thing_classes, **findings_options
            )
            panels.append(
                draw_instances(
                    image_rgb,
                    instances,
                    metadata,
                    findings=findings,
                    summary=f"{title}: {summarize(findings)}",
                )
            )
        _write_overlay(os.path.join(output_dir, name), side_by_side(*panels))
    logger.info("wrote %d images to %s", len(records) - len(failures), output_dir)
    return failures
