"""The best and worst images of an evaluation, ground truth beside predictions, for the report."""

import base64
import html
import io
import logging
import os

import numpy as np
from PIL import Image
from pycocotools.coco import COCO

from ..data.image_io import read_image
from ..drawing import class_colors, draw_overlay
from ..errors import DentalError
from .metrics import DetectionMetrics

logger = logging.getLogger(__name__)

# Long side, in pixels, of each drawn image in the report: large photos are shrunk to it, small
# ones enlarged, so that labels take the same share of every picture.
REPORT_IMAGE_SIZE = 512


def ranked_images(metrics: DetectionMetrics, count: int = 4) -> tuple[list[int], list[int]]:
    """The image ids with the best and the worst per-image F1 (pooled over classes).

    Images with neither ground truth nor predictions are left out. Among equal F1s, more true
    positives rank better and more errors (FP + FN) rank worse. The two lists do not overlap.

    Args:
        metrics (DetectionMetrics): the metrics of one task.
        count (int): images in each list.
    """
    scored = [(i, c) for i, c in metrics.per_image.items() if c.tp + c.fp + c.fn > 0]
    best = sorted(scored, key=lambda ic: (-ic[1].f1, -ic[1].tp, ic[0]))[:count]
    chosen = {i for i, _ in best}
    rest = [ic for ic in scored if ic[0] not in chosen]
    worst = sorted(rest, key=lambda ic: (ic[1].f1, -(ic[1].fp + ic[1].fn), ic[0]))[:count]
    return [i for i, _ in best], [i for i, _ in worst]


def _class_colors(metrics: DetectionMetrics, thing_colors=None) -> dict[int, tuple]:
    colors = class_colors(metrics.class_names, thing_colors)
    return dict(zip(metrics.category_ids, colors))


def _image_path(coco_gt: COCO, image_id: int, image_root: str | None) -> str:
    file_name = coco_gt.imgs[image_id]["file_name"]
    if image_root and not os.path.isabs(file_name):
        return os.path.join(image_root, file_name)
    return file_name


def _draw(image: np.ndarray, instances: list[tuple], coco_gt: COCO, iou_type: str) -> np.ndarray:
    scale = REPORT_IMAGE_SIZE / max(image.shape[:2])
    if not instances:
        return draw_overlay(image, scale=scale)
    annotations, labels, colors = zip(*instances)
    boxes = np.asarray([a["bbox"] for a in annotations], dtype=np.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]  # XYWH -> XYXY
    masks = [coco_gt.annToRLE(a) for a in annotations] if iou_type == "segm" else None
    return draw_overlay(
        image, boxes=boxes, masks=masks, labels=list(labels), colors=list(colors), scale=scale
    )


def draw_image_pair(
    coco_gt: COCO,
    metrics: DetectionMetrics,
    image_id: int,
    image_root: str | None = None,
    thing_colors=None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Draws one image's ground truth and its predictions at the score threshold.

    Ground truth nothing matched is labelled "missed"; predictions that matched nothing of their
    class are labelled "FP" (with the class they overlap, for a wrong-class prediction).

    Args:
        coco_gt (COCO): the ground truth.
        metrics (DetectionMetrics): the metrics of one task.
        image_id (int): the image.
        image_root (str or None): folder of the images when their file names are relative.
        thing_colors (list or None): RGB 0-255 per class; see `dental_d2.drawing.class_colors`.

    Returns:
        tuple[np.ndarray, np.ndarray] or None: RGB drawings (ground truth, predictions), or None
        when the image cannot be read.
    """
    path = _image_path(coco_gt, image_id, image_root)
    try:
        image = read_image(path, format="RGB")
    except (DentalError, OSError) as e:
        logger.warning(f"Image {image_id} is left out of the report: {e}")
        return None
    info = coco_gt.imgs[image_id]
    height, width = int(info.get("height", image.shape[0])), int(info.get("width", image.shape[1]))
    if image.shape[:2] != (height, width):
        # Annotations are in the annotated size; draw on the image resized to it.
        image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))

    matches = next(m for m in metrics.images if m.image_id == image_id)
    colors = _class_colors(metrics, thing_colors)
    names = dict(zip(metrics.category_ids, metrics.class_names))
    gt_hit = matches.gt_matched(metrics.score_threshold)
    gt_instances = [
        (a, names[a["category_id"]] + ("" if hit else " missed"), colors[a["category_id"]])
        for a, hit in zip(matches.gt_annotations, gt_hit)
    ]
    pred_instances = []
    kept = matches.kept(metrics.score_threshold)
    for p, pred, same, cross in zip(
        kept, matches.predictions, matches.matched_gt, matches.cross_matched_gt
    ):
        if not p:
            continue
        label = f"{names[pred['category_id']]} {pred['score']:.0%}"
        if same < 0:
            label += " FP"
            if cross >= 0:
                label += f" (is {names[matches.gt_annotations[cross]['category_id']]})"
        pred_instances.append((pred, label, colors[pred["category_id"]]))
    return (
        _draw(image, gt_instances, coco_gt, metrics.iou_type),
        _draw(image, pred_instances, coco_gt, metrics.iou_type),
    )


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def jpeg_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def images_section(
    coco_gt: COCO,
    m: DetectionMetrics,
    image_root: str | None,
    thing_colors,
    count: int,
    heading: str,
) -> str:
    """The report's HTML section of the `count` best and worst images, drawn side by side.

    Args:
        coco_gt (COCO): the ground truth.
        m (DetectionMetrics): the metrics of the task whose matches are drawn.
        image_root (str or None): folder of the images when their file names are relative.
        thing_colors (list or None): RGB 0-255 per class; None takes
            `dental_d2.drawing.class_colors`'s.
        count (int): best and worst images shown, each.
        heading (str): what the task is called in the section's title.
    """
    best, worst = ranked_images(m, count)
    parts = [
        f"<h2>Best and worst images ({heading})</h2>",
        '<p class="note">Ranked by the F1 of each image over all classes. Left: ground truth '
        '("missed" = not found). Right: predictions at the score threshold ("FP" = false alarm; '
        '"is X" = it lies on a ground truth of class X).</p>',
    ]
    drawn = 0
    for title, image_ids in (("Best", best), ("Worst", worst)):
        parts.append(f"<h3>{title}</h3>")
        for image_id in image_ids:
            pair = draw_image_pair(coco_gt, m, image_id, image_root, thing_colors)
            if pair is None:
                continue
            drawn += 1
            c = m.per_image[image_id]
            name = os.path.basename(coco_gt.imgs[image_id]["file_name"])
            parts.append(
                f'<div class="pair"><div>{html.escape(name)}: F1 {c.f1:.2f} '
                f"(TP {c.tp}, FP {c.fp}, FN {c.fn})</div>"
                f'<img alt="ground truth" src="{data_uri(jpeg_bytes(pair[0]), "image/jpeg")}">'
                f'<img alt="predictions" src="{data_uri(jpeg_bytes(pair[1]), "image/jpeg")}"></div>'
            )
    if not drawn:
        parts.append('<p class="note">No image could be read, so none is shown.</p>')
    return "\n".join(parts)
