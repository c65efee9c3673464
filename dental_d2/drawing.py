"""Instances drawn with detectron2's Visualizer so that they read at a glance on a dental photo:
filled masks with solid outlines, labels on chips of the class colour that keep clear of each
other and of the image's edges, type sized to the image."""

import numpy as np
import pycocotools.mask as mask_util
from detectron2.utils.visualizer import VisImage, Visualizer
from matplotlib import colors as mplc
from matplotlib.patches import Polygon, Rectangle

from .data.categories import thing_colors as default_thing_colors
from .instances import mask_boxes

# Mask fill opacity: the enamel under a lesion stays visible; the outline carries the shape.
MASK_ALPHA = 0.35
# Label type in points per pixel of the drawn image's geometric-mean side, and its bounds:
# about 2.5% of the image's height (8.4 pt on a report's 512 px thumbnail, 17 pt on a
# 1024 px photo); never so small that it cannot be read.
LABEL_POINTS_PER_PIXEL = 1 / 50
MIN_LABEL_POINTS, MAX_LABEL_POINTS = 6.0, 28.0
# Padding of a label's chip around its text, in points.
CHIP_PAD_POINTS = 1.5
# How many label heights a label may move above or below its box to find a free place.
MAX_LABEL_STEPS = 6
# Relative luminance above which black text reads better than white on a chip (WCAG 2.x
# contrast ratios of the two are equal near 0.18).
_LIGHT_CHIP = 0.18


def label_points(height: float, width: float) -> float:
    """The label font size, in points, for a drawn image of `height` x `width` pixels."""
    points = np.sqrt(height * width) * LABEL_POINTS_PER_PIXEL
    return float(np.clip(points, MIN_LABEL_POINTS, MAX_LABEL_POINTS))


def outline_points(height: float, width: float) -> float:
    """The width of mask outlines, in points: visible on a thumbnail, not heavy on a photo."""
    return float(max(1.2, np.sqrt(height * width) / 450))


def relative_luminance(rgb) -> float:
    """WCAG relative luminance of an RGB colour with channels in [0, 1]."""
    channels = np.asarray(mplc.to_rgb(rgb), dtype=float)
    linear = np.where(channels <= 0.04045, channels / 12.92, ((channels + 0.055) / 1.055) ** 2.4)
    return float(linear @ [0.2126, 0.7152, 0.0722])


def text_color_on(rgb) -> str:
    """ "black" or "white", whichever contrasts more with `rgb`."""
    return "black" if relative_luminance(rgb) > _LIGHT_CHIP else "white"


def class_colors(class_names, thing_colors=None) -> list[tuple[float, float, float]]:
    """The drawing colour of each class, RGB in [0, 1].

    Args:
        class_names (Sequence[str]): class names in contiguous-id order.
        thing_colors (Sequence | None): detectron2 metadata's RGB 0-255 colour per class; None
            (or one not listing every class) takes the colours dental_d2 registers datasets with
            (`dental_d2.data.categories.thing_colors`).
    """
    if not thing_colors or len(thing_colors) != len(class_names):
        thing_colors = default_thing_colors(list(class_names))
    return [tuple(v / 255 for v in color) for color in thing_colors]


def plain_text(text: str) -> str:
    """Escapes `$` so matplotlib draws a class name as written, not as mathtext.

    Between two `$` matplotlib renders TeX-like math: "$5 fee$" loses its space and "x^$" fails
    to draw at all.

    Args:
        text (str): a label, e.g. a class name.
    """
    return text.replace("$", r"\$")


def _mask_boxes(masks) -> np.ndarray:
    """XYXY boxes of binary masks (NxHxW) or COCO RLEs."""
    if isinstance(masks, np.ndarray):
        return mask_boxes(masks)
    boxes = np.asarray(mask_util.toBbox(list(masks)), dtype=np.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def _overlap(rect, others) -> float:
    """Summed area of `rect` (x0, y0, x1, y1) covered by each of `others`."""
    total = 0.0
    for other in others:
        w = min(rect[2], other[2]) - max(rect[0], other[0])
        h = min(rect[3], other[3]) - max(rect[1], other[1])
        if w > 0 and h > 0:
            total += w * h
    return total


def place_label(size, box, placed, image_size) -> tuple[float, float]:
    """The top-left corner of a label next to its instance, clear of other labels and inside
    the image.

    The candidates: above the box's left or right corner, inside its top corners, below it,
    beside it, and stacked up to `MAX_LABEL_STEPS` label heights further above, below or down
    over the box. Each is moved inside the image; the one least covered by the labels already
    placed wins, and among equals the one nearest the box (the first on a tie). Where labels
    outnumber the free places, the least overlap is the best it does.

    Args:
        size (tuple[float, float]): the label's width and height, in image pixels.
        box (Sequence[float]): the instance's XYXY box.
        placed (list[tuple]): XYXY rectangles of the labels already placed.
        image_size (tuple[int, int]): the image's height and width.

    Returns:
        tuple[float, float]: x and y of the label's top-left corner.
    """
    w, h = size
    x0, y0, x1, y1 = box
    height, width = image_size
    candidates = [(x0, y0 - h), (x0, y0), (x0, y1), (x1 - w, y0 - h), (x1 - w, y0), (x1 - w, y1)]
    candidates += [(x0 - w, y0), (x1, y0)]
    for step in range(1, MAX_LABEL_STEPS + 1):
        for x in (x0, x1 - w, x0 - w, x1):
            candidates += [(x, y0 - (step + 1) * h), (x, y1 + step * h), (x, y0 + step * h)]
    best, best_cost = None, None
    for x, y in candidates:
        x = float(np.clip(x, 0, max(width - w, 0)))
        y = float(np.clip(y, 0, max(height - h, 0)))
        cost = (_overlap((x, y, x + w, y + h), placed), _gap((x, y, x + w, y + h), box))
        if best_cost is None or cost < best_cost:
            best, best_cost = (x, y), cost
    return best


def _gap(rect, box) -> float:
    """The distance between two XYXY rectangles (0 when they touch or overlap)."""
    dx = max(box[0] - rect[2], rect[0] - box[2], 0.0)
    dy = max(box[1] - rect[3], rect[1] - box[3], 0.0)
    return float(np.hypot(dx, dy))


def draw_labels(visualizer: Visualizer, labels, boxes, colors) -> None:
    """Writes each label on a chip of its instance's colour, placed by `place_label`.

    Small instances are labelled first: they get the places nearest them (a lesion is small
    and matters most). A label moved off its box gets a thin line to it.

    Args:
        visualizer (Visualizer): the drawing, its instances already overlaid.
        labels (list[str]): one per instance.
        boxes (np.ndarray): Nx4 XYXY boxes in image pixels.
        colors (list): RGB in [0, 1], one per instance.
    """
    output = visualizer.output
    renderer = output.canvas.get_renderer()
    points = label_points(output.height * output.scale, output.width * output.scale)
    # Points to drawn pixels (VisImage's figure dpi), then to image pixels.
    pad = CHIP_PAD_POINTS * output.fig.dpi / 72 / output.scale
    placed = []
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for index in np.argsort(areas, kind="stable"):
        label, box, color = labels[index], boxes[index], colors[index]
        # draw_text scales the size by output.scale itself.
        visualizer.draw_text(
            label, (0, 0), font_size=points / output.scale, horizontal_alignment="left"
        )
        artist = output.ax.texts[-1]
        artist.set_color(text_color_on(color))
        artist.set_bbox(
            {
                "facecolor": mplc.to_rgb(color),
                "alpha": 0.9,
                "pad": CHIP_PAD_POINTS,
                "edgecolor": "none",
            }
        )
        extent = artist.get_window_extent(renderer=renderer)
        size = (extent.width / output.scale + 2 * pad, extent.height / output.scale + 2 * pad)
        x, y = place_label(size, box, placed, (output.height, output.width))
        artist.set_position((x + pad, y + pad))
        rect = (x, y, x + size[0], y + size[1])
        placed.append(rect)
        if _gap(rect, box) > 0:
            # From the label's middle to the nearest point of the box.
            mx, my = (rect[0] + rect[2]) / 2, (rect[1] + rect[3]) / 2
            tx, ty = float(np.clip(mx, box[0], box[2])), float(np.clip(my, box[1], box[3]))
            visualizer.draw_line([mx, tx], [my, ty], color=color, linewidth=0.8)


def draw_overlay(
    visualizer: Visualizer, *, boxes=None, masks=None, labels=None, colors=(), alpha=MASK_ALPHA
) -> VisImage:
    """Draws instances with detectron2's Visualizer, made readable on a dental photo.

    Masks are filled at `alpha` and outlined in their full colour (detectron2 outlines them one
    pixel wide); with masks no box is drawn, the outline shows the extent. Labels go on chips
    (see `draw_labels`) instead of detectron2's text on the instance, which neighbours cover.

    Args:
        visualizer (Visualizer): a Visualizer of the image.
        boxes (np.ndarray | None): Nx4 XYXY boxes; None takes the masks' boxes.
        masks (np.ndarray | list | None): NxHxW binary masks or COCO RLEs.
        labels (list[str] | None): one per instance.
        colors (Sequence): RGB in [0, 1], one per instance.
        alpha (float): mask fill opacity.

    Returns:
        VisImage: the drawing.
    """
    colors = [mplc.to_rgb(c) for c in colors]
    has_masks = masks is not None and len(masks) > 0
    if boxes is None and has_masks:
        boxes = _mask_boxes(masks)
    if boxes is None or len(boxes) == 0:
        return visualizer.output
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    visualizer.overlay_instances(
        boxes=None if has_masks else boxes,
        masks=masks if has_masks else None,
        assigned_colors=colors,
        alpha=alpha,
    )
    output = visualizer.output
    width = outline_points(output.height * output.scale, output.width * output.scale)
    for patch in output.ax.patches:
        if isinstance(patch, Polygon | Rectangle):
            patch.set_edgecolor(mplc.to_rgb(patch.get_edgecolor()) + (1.0,))
            patch.set_linewidth(width)
    if labels:
        draw_labels(visualizer, labels, boxes, colors)
    return output
