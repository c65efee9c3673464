"""Instances drawn so that they read at a glance on a dental photo: filled masks with solid
outlines, labels on chips of the class colour that keep clear of each other and of the image's
edges, type sized to the image, and a band of wrapped text above it.

The look is detectron2's `Visualizer`'s (its fill opacity, outlines traced along the mask's
contours, labels in matplotlib's DejaVu Sans on a chip of the instance's colour), drawn with
OpenCV and Pillow: the Visualizer lays out one matplotlib artist per polygon and label and
takes seconds for 50 instances (benchmarks/bench_overlay.py).
"""

import functools
import math
import os

import cv2
import matplotlib
import numpy as np
import pycocotools.mask as mask_util
from matplotlib import colors as mplc
from PIL import Image, ImageDraw, ImageFont

from .data.categories import thing_colors as default_thing_colors

# Mask fill opacity: the enamel under a lesion stays visible; the outline carries the shape.
MASK_ALPHA = 0.35
# Opacity of a label's chip: the photo barely shows through, the text reads on any photo.
CHIP_ALPHA = 0.9
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
# Sizes are set in points, as detectron2's Visualizer sets them; it draws at matplotlib's
# default 100 dpi, so a point is 100/72 pixels of the drawing.
PIXELS_PER_POINT = 100 / 72
# Photos whose geometric-mean side is below this many pixels are drawn enlarged (by a whole
# factor) to reach it: on a 209x94 px photo even the smallest readable labels would cover it.
MIN_DRAWN_SIDE = 480
# matplotlib's default sans-serif, the font of detectron2's Visualizer, shipped with matplotlib.
FONT_FILE = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf")
# Horizontal margin of the text band, in pixels.
_BAND_MARGIN = 4


def label_points(height: float, width: float) -> float:
    """The label font size, in points, for a drawn image of `height` x `width` pixels."""
    points = np.sqrt(height * width) * LABEL_POINTS_PER_PIXEL
    return float(np.clip(points, MIN_LABEL_POINTS, MAX_LABEL_POINTS))


def outline_points(height: float, width: float) -> float:
    """The width of mask outlines, in points: visible on a thumbnail, not heavy on a photo."""
    return float(max(1.2, np.sqrt(height * width) / 450))


def drawn_scale(height: int, width: int) -> int:
    """How many times a photo of `height` x `width` pixels is enlarged to be drawn: 1 unless its
    geometric-mean side is below `MIN_DRAWN_SIDE`."""
    return max(1, math.ceil(MIN_DRAWN_SIDE / math.sqrt(max(height * width, 1))))


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
    to draw at all. (Pictures drawn by `draw_overlay` take text as written.)

    Args:
        text (str): a label, e.g. a class name.
    """
    return text.replace("$", r"\$")


@functools.lru_cache(maxsize=32)
def label_font(pixels: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans at `pixels` pixels per em."""
    return ImageFont.truetype(FONT_FILE, max(int(pixels), 1))


def font_for(points: float) -> ImageFont.FreeTypeFont:
    """The label font at `points` points, in drawing pixels."""
    return label_font(round(points * PIXELS_PER_POINT))


def _rgb255(color) -> tuple[int, int, int]:
    return tuple(int(round(v * 255)) for v in mplc.to_rgb(color))


def _mask_crop(mask, scale: float) -> tuple[np.ndarray, np.ndarray | None]:
    """A mask's tight XYXY box in image pixels and its crop in drawing pixels (None if empty).

    Args:
        mask (np.ndarray | dict): an HxW binary mask or a COCO RLE.
        scale (float): drawing pixels per image pixel.
    """
    if isinstance(mask, dict):
        mask = mask_util.decode(mask)
    mask = np.asarray(mask)
    mask = mask.view(np.uint8) if mask.dtype == bool else (mask != 0).view(np.uint8)
    # NumPy's reductions find the extent several times faster than cv2.boundingRect here.
    columns, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    if not len(columns):
        return np.zeros(4), None
    x, y, w, h = columns[0], rows[0], columns[-1] + 1 - columns[0], rows[-1] + 1 - rows[0]
    box = np.array([x, y, x + w, y + h], dtype=np.float64)
    crop = np.ascontiguousarray(mask[y : y + h, x : x + w])
    if scale != 1:
        x0, y0, x1, y1 = _drawn_box(box, scale)
        size = (max(x1 - x0, 1), max(y1 - y0, 1))
        # Nearest keeps an enlarged mask's pixels square; shrinking averages, then thresholds.
        interpolation = cv2.INTER_NEAREST if scale > 1 else cv2.INTER_AREA
        crop = (cv2.resize(crop * 255, size, interpolation=interpolation) >= 128).view(np.uint8)
    return box, crop


def _drawn_box(box, scale: float) -> tuple[int, int, int, int]:
    """An image-pixel XYXY box in whole drawing pixels, covering it."""
    x0, y0 = (math.floor(v * scale) for v in box[:2])
    x1, y1 = (math.ceil(v * scale) for v in box[2:])
    return x0, y0, x1, y1


def _fill_and_outline(canvas, origin, crop, color, alpha: float, thickness: int) -> None:
    """Blends a mask crop into `canvas` at `alpha` and outlines its contours (holes too)."""
    x0, y0 = origin
    region = canvas[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]]
    crop = crop[: region.shape[0], : region.shape[1]]
    tinted = cv2.addWeighted(region, 1 - alpha, np.full_like(region, color), alpha, 0)
    np.copyto(region, tinted, where=crop[:, :, None].astype(bool))
    contours, _ = cv2.findContours(crop, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE, offset=origin)
    cv2.drawContours(canvas, contours, -1, color, thickness, cv2.LINE_AA)


def place_label(size, box, placed, image_size) -> tuple[float, float]:
    """The top-left corner of a label next to its instance, clear of other labels and inside
    the image.

    The candidates: above the box's left or right corner, inside its top corners, below it,
    beside it, and stacked up to `MAX_LABEL_STEPS` label heights further above, below or down
    over the box. Each is moved inside the image; the one least covered by the labels already
    placed wins, and among equals the one nearest the box (the first on a tie). Where labels
    outnumber the free places, the least overlap is the best it does.

    Args:
        size (tuple[float, float]): the label's width and height, in pixels.
        box (Sequence[float]): the instance's XYXY box.
        placed (list[tuple]): XYXY rectangles of the labels already placed.
        image_size (tuple[int, int]): the image's height and width.

    Returns:
        tuple[float, float]: x and y of the label's top-left corner.
    """
    w, h = size
    x0, y0, x1, y1 = (float(v) for v in box)
    height, width = image_size
    xs = [x0, x0, x0, x1 - w, x1 - w, x1 - w, x0 - w, x1]
    ys = [y0 - h, y0, y1, y0 - h, y0, y1, y0, y0]
    for step in range(1, MAX_LABEL_STEPS + 1):
        for x in (x0, x1 - w, x0 - w, x1):
            xs += [x, x, x]
            ys += [y0 - (step + 1) * h, y1 + step * h, y0 + step * h]
    xs = np.clip(xs, 0, max(width - w, 0))
    ys = np.clip(ys, 0, max(height - h, 0))
    rects = np.stack([xs, ys, xs + w, ys + h], axis=1)
    overlap = np.zeros(len(rects))
    if placed:
        others = np.asarray(placed, dtype=np.float64)[None]  # 1xPx4 against Cx1x4
        ends = np.minimum(rects[:, None, 2:], others[..., 2:])
        starts = np.maximum(rects[:, None, :2], others[..., :2])
        overlap = np.clip(ends - starts, 0, None).prod(axis=-1).sum(axis=1)
    dx = np.maximum(np.maximum(x0 - rects[:, 2], rects[:, 0] - x1), 0)
    dy = np.maximum(np.maximum(y0 - rects[:, 3], rects[:, 1] - y1), 0)
    best = np.lexsort((np.arange(len(rects)), np.hypot(dx, dy), overlap))[0]
    return float(xs[best]), float(ys[best])


def _gap(rect, box) -> float:
    """The distance between two XYXY rectangles (0 when they touch or overlap)."""
    dx = max(box[0] - rect[2], rect[0] - box[2], 0.0)
    dy = max(box[1] - rect[3], rect[1] - box[3], 0.0)
    return float(np.hypot(dx, dy))


def label_chips(labels, boxes, image_size) -> list[tuple[int, int, int, int]]:
    """The XYXY chip of each label, placed by `place_label`, in whole pixels.

    Small instances are placed first: they get the places nearest them (a lesion is small and
    matters most).

    Args:
        labels (list[str]): one per instance.
        boxes (np.ndarray): Nx4 XYXY boxes in drawing pixels.
        image_size (tuple[int, int]): the drawing's height and width.
    """
    font = font_for(label_points(*image_size))
    pad = round(CHIP_PAD_POINTS * PIXELS_PER_POINT)
    ascent, descent = font.getmetrics()
    chips = [None] * len(labels)
    placed = []
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for index in np.argsort(areas, kind="stable"):
        size = (math.ceil(font.getlength(labels[index])) + 2 * pad, ascent + descent + 2 * pad)
        x, y = (round(v) for v in place_label(size, boxes[index], placed, image_size))
        chips[index] = (x, y, x + size[0], y + size[1])
        placed.append(chips[index])
    return chips


def draw_labels(canvas: np.ndarray, labels, boxes, colors) -> np.ndarray:
    """Writes each label on a chip of its instance's colour, placed by `label_chips`.

    A label moved off its box gets a thin line to it.

    Args:
        canvas (np.ndarray): the HxWx3 RGB uint8 drawing, instances already on it.
        labels (list[str]): one per instance.
        boxes (np.ndarray): Nx4 XYXY boxes in drawing pixels.
        colors (list): RGB in [0, 1], one per instance.

    Returns:
        np.ndarray: the drawing with its labels.
    """
    chips = label_chips(labels, boxes, canvas.shape[:2])
    for chip, box, color in zip(chips, boxes, colors):
        if _gap(chip, box) > 0:
            # From the label's middle to the nearest point of the box.
            mx, my = (chip[0] + chip[2]) / 2, (chip[1] + chip[3]) / 2
            tx, ty = np.clip(mx, box[0], box[2]), np.clip(my, box[1], box[3])
            end = (int(round(tx)), int(round(ty)))
            cv2.line(canvas, (int(mx), int(my)), end, _rgb255(color), 1, cv2.LINE_AA)
    for (x0, y0, x1, y1), color in zip(chips, colors):
        region = canvas[y0:y1, x0:x1]
        paint = np.full_like(region, _rgb255(color))
        region[:] = cv2.addWeighted(region, 1 - CHIP_ALPHA, paint, CHIP_ALPHA, 0)
    picture = Image.fromarray(canvas)
    pen = ImageDraw.Draw(picture)
    font = font_for(label_points(*canvas.shape[:2]))
    pad = round(CHIP_PAD_POINTS * PIXELS_PER_POINT)
    for label, chip, color in zip(labels, chips, colors):
        pen.text((chip[0] + pad, chip[1] + pad), label, fill=text_color_on(color), font=font)
    return np.asarray(picture).copy()


def _draw_masks(canvas, crops, colors, alpha: float, thickness: int, scale: float) -> None:
    """Fills and outlines the masks (`_mask_crop`s), largest first so that small lesions stay
    on top."""
    areas = [0 if crop is None else int(crop.sum()) for _, crop in crops]
    for index in np.argsort(areas, kind="stable")[::-1]:
        box, crop = crops[index]
        if crop is not None:
            origin = _drawn_box(box, scale)[:2]
            _fill_and_outline(canvas, origin, crop, colors[index], alpha, thickness)


def draw_overlay(
    image_rgb: np.ndarray,
    *,
    boxes=None,
    masks=None,
    labels=None,
    colors=(),
    alpha: float = MASK_ALPHA,
    scale: float = 1.0,
) -> np.ndarray:
    """Draws instances on a photo, readable on teeth.

    Masks are filled at `alpha` and outlined in their full colour, largest first so that small
    lesions stay on top; with masks no box is drawn, the outline shows the extent. Labels go on
    chips (see `draw_labels`) instead of on the instance, which neighbours would cover.

    Args:
        image_rgb (np.ndarray): HxWx3 RGB uint8.
        boxes (np.ndarray | None): Nx4 XYXY boxes in image pixels; None takes the masks' boxes.
        masks (np.ndarray | list | None): NxHxW binary masks or COCO RLEs.
        labels (list[str] | None): one per instance, drawn as written.
        colors (Sequence): RGB in [0, 1], one per instance.
        alpha (float): mask fill opacity.
        scale (float): drawing pixels per image pixel (the photo is resized by it).

    Returns:
        np.ndarray: the drawing, RGB uint8, the photo's size times `scale`.
    """
    height, width = image_rgb.shape[:2]
    size = (max(round(width * scale), 1), max(round(height * scale), 1))
    if scale == 1:
        canvas = np.array(image_rgb, dtype=np.uint8, order="C")
    else:
        interpolation = cv2.INTER_LINEAR if scale > 1 else cv2.INTER_AREA
        canvas = cv2.resize(np.ascontiguousarray(image_rgb), size, interpolation=interpolation)
    has_masks = masks is not None and len(masks) > 0
    crops = [_mask_crop(mask, scale) for mask in masks] if has_masks else []
    if boxes is None and has_masks:
        boxes = np.stack([box for box, _ in crops])
    if boxes is None or len(boxes) == 0:
        return canvas
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    colors = [_rgb255(c) for c in colors]
    thickness = max(1, round(outline_points(*canvas.shape[:2]) * PIXELS_PER_POINT))
    if has_masks:
        _draw_masks(canvas, crops, colors, alpha, thickness, scale)
    else:
        for box, color in zip(boxes * scale, colors):
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            cv2.rectangle(canvas, (x0, y0), (x1 - 1, y1 - 1), color, thickness, cv2.LINE_AA)
    if labels:
        colors01 = [tuple(v / 255 for v in c) for c in colors]
        canvas = draw_labels(canvas, list(labels), boxes * scale, colors01)
    return canvas


def wrap_text(text: str, font: ImageFont.FreeTypeFont, width: float) -> list[str]:
    """Breaks `text` into lines no wider than `width` pixels in `font`.

    Breaks at spaces; a word wider than a line is broken between characters. (textwrap counts
    characters, not pixels, and Pillow draws but does not wrap.)
    """
    lines, line = [], ""
    for word in text.split(" "):
        candidate = f"{line} {word}" if line else word
        if font.getlength(candidate) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        line = ""
        for char in word:
            if line and font.getlength(line + char) > width:
                lines.append(line)
                line = ""
            line += char
    lines.append(line)
    return lines


def text_band(paragraphs, width: int, points: float) -> np.ndarray:
    """A black band `width` pixels wide with white text, each paragraph wrapped to fit.

    Args:
        paragraphs (Sequence[str]): each starts on a new line.
        width (int): the width of the image the band goes above.
        points (float): the font size in points.

    Returns:
        np.ndarray: hxwx3 RGB uint8, as tall as its lines.
    """
    font = font_for(points)
    ascent, descent = font.getmetrics()
    line_height = ascent + descent + max(1, round(0.2 * font.size))
    lines = [
        line
        for paragraph in paragraphs
        for line in wrap_text(paragraph, font, width - 2 * _BAND_MARGIN)
    ]
    band = Image.new("RGB", (width, len(lines) * line_height + 2 * _BAND_MARGIN))
    pen = ImageDraw.Draw(band)
    for k, line in enumerate(lines):
        pen.text((_BAND_MARGIN, _BAND_MARGIN + k * line_height), line, fill="white", font=font)
    return np.asarray(band).copy()
