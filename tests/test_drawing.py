"""Pixel-level tests of the pictures: mask fills, outlines, label chips, the findings band, small
photos, T-numbered teeth."""

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.structures import Boxes, Instances
from support import CLASSES

from dental_d2.drawing import (
    CHIP_ALPHA,
    MASK_ALPHA,
    PIXELS_PER_POINT,
    class_colors,
    draw_overlay,
    drawn_scale,
    font_for,
    label_chips,
    outline_points,
    text_band,
    wrap_text,
)
from dental_d2.findings import TOOTH_NUMBERS, findings_from_instances, summarize
from dental_d2.instances import mask_boxes
from dental_d2.visualize import build_metadata, draw_instances, instance_labels

CARIES, CAVITY, CRACK, TOOTH = range(4)
PALETTE = [np.array(c) * 255 for c in class_colors(CLASSES)]


def textured_photo(height, width, seed=0):
    """A photo-like texture (values 40..215) that no drawing colour hides in."""
    return np.random.default_rng(seed).integers(40, 216, (height, width, 3), dtype=np.uint8)


def disc(shape, centre, radius, hole=0):
    """A filled circle as a bool mask, with a hole of radius `hole` in the middle."""
    mask = np.zeros(shape, np.uint8)
    cv2.circle(mask, centre, radius, 1, -1)
    if hole:
        cv2.circle(mask, centre, hole, 0, -1)
    return mask.astype(bool)


def blend(below, color, alpha):
    return (1 - alpha) * below.astype(float) + alpha * np.asarray(color, dtype=float)


def ring(mask, inner, outer):
    """Pixels within `outer` pixels of the mask's edge and more than `inner` inside it."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * outer + 1, 2 * outer + 1))
    grown = cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)
    if inner <= 0:
        return grown
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * inner + 1, 2 * inner + 1))
    return grown & ~cv2.erode(mask.astype(np.uint8), kernel).astype(bool)


def test_overlay_tints_masks_outlines_them_labels_them_and_leaves_the_rest():
    shape = (200, 320)
    photo = textured_photo(*shape)
    tooth = disc(shape, (90, 120), 50)
    caries = disc(shape, (90, 110), 12)  # on the tooth
    crack = disc(shape, (240, 130), 40, hole=15)  # a mask with a hole
    masks = np.stack([tooth, caries, crack])
    colors = [class_colors(CLASSES)[c] for c in (TOOTH, CARIES, CRACK)]
    labels = ["Tooth T1 97%", "Caries 80%", "Crack 60%"]
    drawn = draw_overlay(photo, masks=masks, labels=labels, colors=colors).astype(int)
    assert drawn.shape == photo.shape

    chips = label_chips(labels, mask_boxes(masks), shape)
    on_chip = np.zeros(shape, bool)
    for x0, y0, x1, y1 in chips:
        on_chip[y0:y1, x0:x1] = True
    stroke = round(outline_points(*shape) * PIXELS_PER_POINT)
    # The outline and its anti-aliased fringe reach about stroke + 1 pixels from the edge.
    edges = [ring(m, stroke + 2, stroke + 2) for m in masks]
    clear = ~on_chip & ~np.logical_or.reduce(edges)

    # Inside a mask the photo moves toward the class colour by the fill alpha; the caries is
    # filled over the tooth's tint, the crack's hole is left alone.
    tinted_tooth = blend(photo, PALETTE[TOOTH], MASK_ALPHA)
    for inside, expected in (
        (tooth & ~caries, tinted_tooth),
        (caries, blend(tinted_tooth, PALETTE[CARIES], MASK_ALPHA)),
        (crack, blend(photo, PALETTE[CRACK], MASK_ALPHA)),
    ):
        inside = inside & clear
        assert inside.sum() > 150
        assert np.abs(drawn[inside] - expected[inside]).max() <= 1.01

    # The outline: the mask's edge pixels (the hole's too) are drawn in the full class colour.
    for mask, color in ((tooth, PALETTE[TOOTH]), (crack, PALETTE[CRACK])):
        edge = ring(mask, 1, 0) & ~on_chip & ~ring(caries, 0, stroke + 1)
        on_colour = np.abs(drawn[edge] - color).max(axis=-1) <= 12
        assert on_colour.mean() > 0.9, on_colour.mean()
    hole = disc(shape, (240, 130), 15)
    hole_edge = crack & ring(hole, 0, 1) & ~on_chip
    assert hole_edge.sum() > 50
    assert (np.abs(drawn[hole_edge] - PALETTE[CRACK]).max(axis=-1) <= 12).mean() > 0.9

    # Each label: a chip of its class colour at CHIP_ALPHA over what is drawn below it, with
    # text in a contrasting colour.
    unlabelled = draw_overlay(photo, masks=masks, colors=colors)
    np.testing.assert_array_equal(drawn[~on_chip], unlabelled[~on_chip])
    for (x0, y0, x1, y1), color, label in zip(chips, (TOOTH, CARIES, CRACK), labels):
        assert x1 - x0 > 3 * len(label) and y1 - y0 > 10
        chip = drawn[y0:y1, x0:x1]
        below = blend(unlabelled[y0:y1, x0:x1], PALETTE[color], CHIP_ALPHA)
        background = np.abs(chip - below).max(axis=-1) <= 2
        assert 0.5 < background.mean() < 0.95, (label, background.mean())
        text = np.abs(chip - below).max(axis=-1) > 60
        assert text.sum() > 8 * len(label.replace(" ", "")), label

    # Everything else is the photo, unchanged.
    untouched = ~on_chip & ~np.logical_or.reduce([ring(m, 0, stroke + 2) for m in masks])
    np.testing.assert_array_equal(drawn[untouched], photo[untouched])


@pytest.mark.parametrize("scale", [3, 0.5])
def test_overlay_at_another_scale_puts_masks_where_they_belong(scale):
    shape = (80, 120)
    photo = np.full((*shape, 3), 128, np.uint8)  # uniform: resizing leaves it as it is
    lesion = disc(shape, (40, 40), 16)
    drawn = draw_overlay(
        photo, masks=lesion[None], colors=[class_colors(CLASSES)[CARIES]], scale=scale
    )
    assert drawn.shape == (round(80 * scale), round(120 * scale), 3)
    centre = np.round(np.array([40, 40]) * scale).astype(int)
    expected = blend(np.array([128] * 3), PALETTE[CARIES], MASK_ALPHA)
    assert np.abs(drawn[centre[1], centre[0]] - expected).max() <= 2
    far = np.round(np.array([100, 60]) * scale).astype(int)
    np.testing.assert_array_equal(drawn[far[1], far[0]], [128, 128, 128])


def test_boxes_without_masks_are_outlined():
    photo = np.full((60, 80, 3), 200, np.uint8)
    drawn = draw_overlay(
        photo, boxes=np.array([[10.0, 10.0, 50.0, 40.0]]), colors=[class_colors(CLASSES)[CRACK]]
    ).astype(int)
    assert np.abs(drawn[25, 10] - PALETTE[CRACK]).max() <= 12  # the box's left side
    np.testing.assert_array_equal(drawn[25, 30], [200, 200, 200])  # its inside is not filled


def crowded_small_photo(height=94, width=209, teeth=8):
    """Teeth side by side on a small photo, each scored: the case where labels buried photos."""
    instances = Instances((height, width))
    masks = torch.zeros((teeth, height, width), dtype=torch.bool)
    step = width // teeth
    for k in range(teeth):
        masks[k, 10 : height - 10, k * step + 1 : (k + 1) * step - 1] = True
    instances.pred_masks = masks
    instances.pred_boxes = Boxes(torch.tensor(mask_boxes(masks.numpy()), dtype=torch.float32))
    instances.pred_classes = torch.full((teeth,), TOOTH)
    instances.scores = torch.linspace(0.99, 0.6, teeth)
    return instances


def test_small_photos_are_drawn_enlarged_so_labels_leave_them_visible():
    height, width = 94, 209
    instances = crowded_small_photo(height, width)
    findings = findings_from_instances(instances, CLASSES)
    photo = textured_photo(height, width)
    overlay = draw_instances(photo, instances, build_metadata(CLASSES), findings=findings)
    k = drawn_scale(height, width)
    assert k > 1 and overlay.shape == (height * k, width * k, 3)
    labels = instance_labels([TOOTH] * 8, instances.scores.numpy(), CLASSES, findings)
    chips = label_chips(labels, mask_boxes(instances.pred_masks.numpy()) * k, overlay.shape[:2])
    covered = np.zeros(overlay.shape[:2], bool)
    for x0, y0, x1, y1 in chips:
        covered[y0:y1, x0:x1] = True
    assert covered.mean() < 0.3, covered.mean()
    # Photos of a usual size are drawn as they are.
    assert drawn_scale(682, 1024) == 1 and drawn_scale(480, 640) == 1


def test_findings_band_wraps_so_that_every_finding_shows():
    few = "3 teeth; T2: caries 0.91"
    many = "16 teeth; " + "; ".join(
        f"T{k}: caries 0.{k + 50}, cavity 0.{k + 20}" for k in range(16)
    )
    width, points = 320, 10.0
    short, long = text_band([few], width, points), text_band([many], width, points)
    assert short.shape[1] == long.shape[1] == width
    assert long.shape[0] > 4 * short.shape[0] // 2  # more lines, not smaller type
    # All text inside the band: its margins stay black, its last line is drawn.
    for band in (short, long):
        assert band[:, -3:].max() == 0 and band[:, :2].max() == 0 and band[-2:].max() == 0
        assert band[band.shape[0] // 2 : -2].max() > 200
    font = font_for(points)
    lines = wrap_text(many, font, width - 8)
    assert len(lines) > 3 and " ".join(lines) == many
    assert max(font.getlength(line) for line in lines) <= width - 8
    # A word longer than the line is broken, not drawn past the edge.
    lines = wrap_text("x" * 200, font, 100)
    assert "".join(lines) == "x" * 200 and max(font.getlength(line) for line in lines) <= 100


def test_teeth_are_labelled_with_t_numbers_and_the_band_says_what_they_are():
    instances = crowded_small_photo(teeth=3)
    findings = findings_from_instances(instances, CLASSES)
    labels = instance_labels([TOOTH] * 3, [0.97, 0.9, 0.8], CLASSES, findings)
    assert labels == ["Tooth T1 97%", "Tooth T2 90%", "Tooth T3 80%"]
    assert instance_labels([CARIES], None, CLASSES) == ["Caries"]
    assert "not FDI" in TOOTH_NUMBERS and "left to right" in TOOTH_NUMBERS
    photo = textured_photo(94, 209)
    summary = summarize(findings, 0.5)
    metadata = build_metadata(CLASSES)
    numbered = draw_instances(photo, instances, metadata, findings=findings, summary=summary)
    unnumbered = draw_instances(photo, instances, metadata, summary=summary)
    # The legend adds lines to the band above the same photo.
    assert numbered.shape[0] > unnumbered.shape[0] and numbered.shape[1] == unnumbered.shape[1]


def test_masks_as_coco_rles_draw_as_arrays_do():
    shape = (90, 140)
    photo = textured_photo(*shape, seed=1)
    masks = np.stack([disc(shape, (50, 45), 30), disc(shape, (100, 50), 20, hole=6)])
    rles = [mask_util.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]
    colors = [class_colors(CLASSES)[c] for c in (TOOTH, CAVITY)]
    labels = ["Tooth missed", "Cavity 70% FP"]
    for scale in (1, 0.5, 2):
        np.testing.assert_array_equal(
            draw_overlay(photo, masks=rles, labels=labels, colors=colors, scale=scale),
            draw_overlay(photo, masks=masks, labels=labels, colors=colors, scale=scale),
        )
