"""One synthetic intraoral photo (gum, a row of teeth, caries, cavities, cracks) and masks."""

import math

import cv2
import numpy as np

__all__ = ["CLASS_NAMES", "DEFAULT_SIZE", "make_synthetic_image"]

# Classes with their category ids (1..4, as Roboflow numbers them alphabetically).
CLASS_NAMES = ("Caries", "Cavity", "Crack", "Tooth")

# Lengths below are in pixels of a 256x256 image and scale with the image size.
REFERENCE_SIZE = 256

# Gum background (RGB), its per-image jitter, and the strength of its low-frequency blotches.
GUM_COLOR = (190, 88, 98)
GUM_COLOR_JITTER = 18
GUM_BLOTCH_STRENGTH = 10.0

# Teeth: how many in the row, the share of the width the row spans, tooth height, rotation.
TEETH_PER_IMAGE = (3, 6)
ROW_WIDTH_FRACTION = (0.8, 0.94)
TOOTH_WIDTH_FRACTION = 0.86  # of the tooth's slot in the row; the rest is gum between teeth
TOOTH_MAX_WIDTH = 78
TOOTH_HEIGHT = (58, 86)
TOOTH_ROTATION_DEG = 7.0
TOOTH_ARCH_DEPTH = (0, 22)  # how far the outer teeth sit below (or above) the middle ones
ENAMEL_COLOR = (236, 229, 206)
ENAMEL_COLOR_JITTER = 5  # per channel, on top of a shared brightness jitter
ENAMEL_BRIGHTNESS_JITTER = 14
TOOTH_EDGE_SHADE = 0.72  # brightness at the tooth's outline; its centre is 1.0

# Lesions: chance per tooth of a first and of a second lesion, and class weights
# (Caries, Cavity, Crack).
LESION_PROBABILITY = 0.55
SECOND_LESION_PROBABILITY = 0.15
LESION_WEIGHTS = (1.0, 1.0, 1.0)
LESION_MARGIN = 3  # lesions stay this far inside their tooth's outline
MIN_LESION_AREA = 110  # smaller lesions (after clipping to the tooth) are not drawn

CARIES_RADIUS = (9.0, 14.0)
CARIES_COLOR = (118, 72, 32)
CARIES_COLOR_JITTER = 14
CAVITY_RADIUS = (7.0, 11.0)
CAVITY_RIM_WIDTH = (2, 3)
CAVITY_COLOR = (28, 20, 20)
CAVITY_RIM_COLOR = (150, 128, 108)
CRACK_LENGTH_FRACTION = (0.55, 0.85)  # of the tooth's height
CRACK_WIDTH = (5, 7)
CRACK_JAG = 4.0  # sideways jitter of the crack's vertices
CRACK_COLOR = (62, 58, 66)

# Share of images with teeth but no lesions, and with no teeth at all (negatives).
TEETH_ONLY_FRACTION = 0.025
EMPTY_FRACTION = 0.025

# Whole-image effects: brightness and per-channel gains, noise, blur.
BRIGHTNESS_JITTER = 0.1
CHANNEL_GAIN_JITTER = 0.04
NOISE_SIGMA = (2.0, 5.0)
BLUR_SIGMA = (0.3, 0.9)

DEFAULT_SIZE = 256


def _jitter_color(rng: np.random.Generator, color, amount: float, brightness: float = 0.0):
    shift = rng.uniform(-amount, amount, 3) + rng.uniform(-brightness, brightness)
    return np.clip(np.asarray(color, np.float32) + shift, 0, 255).astype(np.float32)


def _gum_background(rng: np.random.Generator, size: int) -> np.ndarray:
    color = _jitter_color(rng, GUM_COLOR, GUM_COLOR_JITTER)
    rows = np.linspace(0.0, math.pi, size, dtype=np.float32)
    # Darker towards the top and bottom, like lips and shadow at the frame's edges.
    shade = 0.82 + 0.18 * np.sin(rows)[:, None, None]
    blotches = rng.normal(0.0, 1.0, (6, 6)).astype(np.float32)
    blotches = cv2.resize(blotches, (size, size), interpolation=cv2.INTER_CUBIC)
    canvas = color[None, None, :] * shade + GUM_BLOTCH_STRENGTH * blotches[:, :, None]
    return np.broadcast_to(canvas, (size, size, 3)).astype(np.float32)


def _paint(canvas: np.ndarray, mask: np.ndarray, color: np.ndarray, shade=None) -> None:
    region = mask.astype(bool)
    pixels = np.broadcast_to(color, (int(region.sum()), 3))
    if shade is not None:
        pixels = pixels * shade[region][:, None]
    canvas[region] = pixels


def _center_shade(mask: np.ndarray, edge: float) -> np.ndarray:
    """1.0 deep inside the mask, `edge` at its outline (rounded, 3D-looking shading)."""
    distance = cv2.distanceTransform(mask, cv2.DIST_L2, 3)
    peak = float(distance.max()) or 1.0
    return edge + (1.0 - edge) * np.sqrt(distance / peak)


def _tooth_outline(rng, center, half_width, half_height, angle) -> np.ndarray:
    """A rounded, slightly tapered box (superellipse) as an Nx2 int32 polygon."""
    exponent = rng.uniform(2.6, 4.0)
    t = np.linspace(0.0, 2.0 * math.pi, 64, endpoint=False)
    cos, sin = np.cos(t), np.sin(t)
    x = half_width * np.sign(cos) * np.abs(cos) ** (2.0 / exponent)
    y = half_height * np.sign(sin) * np.abs(sin) ** (2.0 / exponent)
    # Crowns narrow a little towards one end.
    x = x * (1.0 - rng.uniform(0.0, 0.18) * (y / half_height + 1.0) / 2.0)
    return _to_image(np.stack([x, y], axis=1), center, angle)


def _to_image(points: np.ndarray, center, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    rotation = np.array([[c, -s], [s, c]])
    return np.round(points @ rotation.T + np.asarray(center)).astype(np.int32)


def _fill(size: int, polygon: np.ndarray) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [polygon], 1)
    return mask


def _random_interior_point(rng, tooth_mask: np.ndarray, clearance: float):
    distance = cv2.distanceTransform(tooth_mask, cv2.DIST_L2, 3)
    candidates = np.flatnonzero(distance >= clearance)
    if not len(candidates):
        return None
    y, x = np.unravel_index(rng.choice(candidates), distance.shape)
    return float(x), float(y)


def _caries(rng, size, free, tooth, scale):
    """A brown irregular blob with a darker core: (mask, paint) or None."""
    radius = rng.uniform(*CARIES_RADIUS) * scale
    center = _random_interior_point(rng, free, radius * 0.9)
    if center is None:
        return None
    angles = np.sort(rng.uniform(0.0, 2.0 * math.pi, 14))
    radii = radius * rng.uniform(0.6, 1.1, len(angles))
    radii = (radii + np.roll(radii, 1) + np.roll(radii, -1)) / 3.0  # smooth but irregular
    points = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    mask = _fill(size, _to_image(points, center, 0.0))

    def paint(canvas, clipped):
        color = _jitter_color(rng, CARIES_COLOR, CARIES_COLOR_JITTER)
        # Darker core, as decay deepens towards its centre.
        _paint(canvas, clipped, color, 1.35 - 0.5 * _center_shade(clipped, 0.0))

    return mask, paint


def _cavity(rng, size, free, tooth, scale):
    """A near-black rounded hole with a lighter rim: (mask, paint) or None."""
    radius = rng.uniform(*CAVITY_RADIUS) * scale
    center = _random_interior_point(rng, free, radius * 1.2)
    if center is None:
        return None
    axes = (
        max(2, round(radius * rng.uniform(0.85, 1.2))),
        max(2, round(radius * rng.uniform(0.85, 1.2))),
    )
    angle = float(rng.uniform(0.0, 180.0))
    mask = np.zeros((size, size), np.uint8)
    point = (round(center[0]), round(center[1]))
    cv2.ellipse(mask, point, axes, angle, 0, 360, 1, thickness=-1)
    rim = max(1, round(rng.integers(CAVITY_RIM_WIDTH[0], CAVITY_RIM_WIDTH[1] + 1) * scale))

    def paint(canvas, clipped):
        _paint(canvas, clipped, _jitter_color(rng, CAVITY_RIM_COLOR, 12))
        hole = cv2.erode(clipped, np.ones((2 * rim + 1, 2 * rim + 1), np.uint8))
        _paint(canvas, hole, _jitter_color(rng, CAVITY_COLOR, 8))

    return mask, paint


def _crack(rng, size, free, tooth, scale):
    """A thin dark jagged band along the tooth: (mask, paint)."""
    center, half_width, half_height, angle = tooth
    length = 2.0 * half_height * rng.uniform(*CRACK_LENGTH_FRACTION)
    num_points = int(rng.integers(4, 7))
    y = np.linspace(-length / 2.0, length / 2.0, num_points) + rng.uniform(-0.1, 0.1) * half_height
    x = (
        rng.uniform(-0.35, 0.35) * half_width
        + rng.uniform(-CRACK_JAG, CRACK_JAG, num_points) * scale
    )
    points = _to_image(np.stack([x, y], axis=1), center, angle + rng.uniform(-0.25, 0.25))
    width = max(2, round(rng.integers(CRACK_WIDTH[0], CRACK_WIDTH[1] + 1) * scale))
    mask = np.zeros((size, size), np.uint8)
    cv2.polylines(mask, [points], isClosed=False, color=1, thickness=width)

    def paint(canvas, clipped):
        _paint(canvas, clipped, _jitter_color(rng, CRACK_COLOR, 10))

    return mask, paint


_LESION_MAKERS = {"Caries": _caries, "Cavity": _cavity, "Crack": _crack}


def _tooth_layout(rng, size: int, scale: float):
    count = int(rng.integers(TEETH_PER_IMAGE[0], TEETH_PER_IMAGE[1] + 1))
    row_width = size * rng.uniform(*ROW_WIDTH_FRACTION)
    slot = row_width / count
    left = (size - row_width) / 2.0 + rng.uniform(-0.5, 0.5) * (size - row_width)
    row_y = size / 2.0 + rng.uniform(-0.08, 0.08) * size
    arch = rng.uniform(*TOOTH_ARCH_DEPTH) * scale * rng.choice([-1.0, 1.0])
    teeth = []
    for i in range(count):
        x = left + slot * (i + 0.5)
        offset = (x - size / 2.0) / (size / 2.0)
        y = row_y + arch * offset**2 + rng.uniform(-3.0, 3.0) * scale
        half_width = min(slot * TOOTH_WIDTH_FRACTION, TOOTH_MAX_WIDTH * scale) / 2.0
        half_height = rng.uniform(*TOOTH_HEIGHT) * scale / 2.0
        half_height = min(half_height, y - 2.0, size - 2.0 - y)
        angle = math.radians(rng.uniform(-TOOTH_ROTATION_DEG, TOOTH_ROTATION_DEG))
        teeth.append(((x, y), half_width * rng.uniform(0.9, 1.0), half_height, angle))
    return teeth


def make_synthetic_image(rng: np.random.Generator, size: int = DEFAULT_SIZE):
    """Draws one synthetic intraoral photo and its instances.

    Args:
        rng (np.random.Generator): the source of randomness (one per image for determinism).
        size (int): width and height in pixels.

    Returns:
        tuple[np.ndarray, list[tuple[str, np.ndarray]]]: the HxWx3 uint8 RGB image and, per
        instance, its class name and HxW uint8 mask.
    """
    scale = size / REFERENCE_SIZE
    canvas = _gum_background(rng, size)
    instances = []
    kind = rng.uniform()
    if kind >= EMPTY_FRACTION:
        with_lesions = kind >= EMPTY_FRACTION + TEETH_ONLY_FRACTION
        occupied = np.zeros((size, size), np.uint8)
        for tooth in _tooth_layout(rng, size, scale):
            center, half_width, half_height, angle = tooth
            tooth_mask = _fill(size, _tooth_outline(rng, center, half_width, half_height, angle))
            tooth_mask &= 1 - occupied  # keep gum between neighbours that would touch
            if tooth_mask.sum() < 200 * scale * scale:
                continue
            occupied |= cv2.dilate(tooth_mask, np.ones((3, 3), np.uint8))
            color = _jitter_color(rng, ENAMEL_COLOR, ENAMEL_COLOR_JITTER, ENAMEL_BRIGHTNESS_JITTER)
            _paint(canvas, tooth_mask, color, _center_shade(tooth_mask, TOOTH_EDGE_SHADE))
            instances.append(("Tooth", tooth_mask))
            if with_lesions:
                instances += _draw_lesions(rng, canvas, size, scale, tooth, tooth_mask)

    gain = 1.0 + rng.uniform(-BRIGHTNESS_JITTER, BRIGHTNESS_JITTER)
    gains = gain * (1.0 + rng.uniform(-CHANNEL_GAIN_JITTER, CHANNEL_GAIN_JITTER, 3))
    canvas = canvas * gains.astype(np.float32)
    canvas += rng.normal(0.0, rng.uniform(*NOISE_SIGMA), canvas.shape).astype(np.float32)
    sigma = rng.uniform(*BLUR_SIGMA) * scale
    canvas = cv2.GaussianBlur(canvas, (0, 0), sigma)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), instances


def _draw_lesions(rng, canvas, size, scale, tooth, tooth_mask):
    inside = cv2.erode(tooth_mask, np.ones((2 * LESION_MARGIN + 1,) * 2, np.uint8))
    taken = np.zeros_like(tooth_mask)
    lesions = []
    count = int(rng.uniform() < LESION_PROBABILITY)
    count += int(count and rng.uniform() < SECOND_LESION_PROBABILITY)
    weights = np.asarray(LESION_WEIGHTS) / sum(LESION_WEIGHTS)
    for _ in range(count):
        name = CLASS_NAMES[int(rng.choice(3, p=weights))]
        made = _LESION_MAKERS[name](rng, size, inside & (1 - taken), tooth, scale)
        if made is None:
            continue
        mask, paint = made
        mask &= inside
        if (mask & taken).any() or mask.sum() < MIN_LESION_AREA * scale * scale:
            continue
        paint(canvas, mask)
        taken |= cv2.dilate(mask, np.ones((5, 5), np.uint8))
        lesions.append((name, mask))
    return lesions
