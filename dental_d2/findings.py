"""Per-tooth findings: each predicted lesion placed on the tooth that covers most of it."""

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from detectron2.structures import Instances

from .config import DEFAULT_TOOTH_CLASSES
from .data.categories import is_tooth_class
from .instances import instance_arrays, mask_boxes

# Key of the lesions that no tooth covers enough, in findings.json.
UNASSIGNED = "unassigned"
# What those lesions are called where people read them: summaries, overlays, the service page.
NOT_ON_A_TOOTH = "not on a detected tooth"
# What the tooth labels T1, T2, ... mean, said beside them wherever they are shown: they count
# the teeth found, so they change with the photo's framing and with every tooth missed.
TOOTH_NUMBERS = (
    "T1, T2, ... count the detected teeth left to right in the photo, upper and lower jaw "
    "together; they are not FDI or Universal tooth numbers"
)


@dataclass
class Lesion:
    """One lesion instance.

    Attributes:
        index (int): position of the instance in the image's predictions (and in the image's
            annotations in predictions.coco.json).
        class_name (str): the predicted class.
        score (float | None): the confidence, None for ground truth.
        box (list[float]): XYXY in pixels of the original image.
        overlap (float): share of the lesion's mask covered by its tooth (by the best tooth when
            on no tooth).
    """

    index: int
    class_name: str
    score: float | None
    box: list[float]
    overlap: float


@dataclass
class Tooth:
    """One tooth instance and the lesions assigned to it.

    Attributes:
        number (int): 1..N, left to right in the image by the x of the mask's centroid; shown
            as "T<number>" (`tooth_label`), never as an FDI or Universal number.
        index (int): position of the instance in the image's predictions.
        score (float | None): the confidence, None for ground truth.
        box (list[float]): XYXY in pixels of the original image.
        lesions (list[Lesion]): lesions placed on this tooth, by descending score.
    """

    number: int
    index: int
    score: float | None
    box: list[float]
    lesions: list[Lesion] = field(default_factory=list)


@dataclass
class Findings:
    """The teeth of one image, their lesions and the lesions on no tooth."""

    teeth: list[Tooth] = field(default_factory=list)
    unassigned: list[Lesion] = field(default_factory=list)


def tooth_label(number: int) -> str:
    """How tooth `number` is shown to people: "T3" (see `TOOTH_NUMBERS`)."""
    return f"T{number}"


def mask_centroid_x(mask: np.ndarray) -> float:
    """Returns the mean column of a binary mask's pixels (NaN for an empty mask).

    Args:
        mask (np.ndarray): HxW, bool or 0/1.
    """
    pixels_per_column = np.asarray(mask, dtype=bool).sum(axis=0)
    total = pixels_per_column.sum()
    if total == 0:
        return float("nan")
    return float(pixels_per_column @ np.arange(mask.shape[1]) / total)


def number_teeth(tooth_masks: Sequence[np.ndarray], tooth_boxes: np.ndarray | None = None):
    """Orders teeth left to right.

    Teeth are numbered by the x of their mask's centroid, so a tilted tooth whose box reaches
    over a neighbour still keeps its place. An empty mask falls back to its box centre.

    Args:
        tooth_masks (Sequence[np.ndarray]): N binary HxW masks.
        tooth_boxes (np.ndarray | None): Nx4 XYXY boxes, used for empty masks.

    Returns:
        list[int]: indices into `tooth_masks`; the tooth at position k gets number k + 1.
    """
    centres = []
    for i, mask in enumerate(tooth_masks):
        x = mask_centroid_x(mask)
        if np.isnan(x):
            x = float((tooth_boxes[i][0] + tooth_boxes[i][2]) / 2) if tooth_boxes is not None else 0
        centres.append(x)
    return sorted(range(len(centres)), key=lambda i: (centres[i], i))


def lesion_tooth_overlap(lesion_mask: np.ndarray, tooth_masks: np.ndarray) -> np.ndarray:
    """Returns, for each tooth, the share of the lesion's pixels that the tooth covers.

    Args:
        lesion_mask (np.ndarray): HxW binary mask.
        tooth_masks (np.ndarray): TxHxW binary masks.

    Returns:
        np.ndarray: T floats in [0, 1], |lesion ∩ tooth| / |lesion|; zeros for an empty lesion.
    """
    # Masks that are bool already (predictions) are used as they are, not copied.
    lesion = lesion_mask.astype(bool, copy=False)
    area = int(lesion.sum())
    if area == 0 or len(tooth_masks) == 0:
        return np.zeros(len(tooth_masks), dtype=np.float64)
    # Count inside the lesion's bounding rectangle only: teeth are large, lesions small.
    rows = np.nonzero(lesion.any(axis=1))[0]
    cols = np.nonzero(lesion.any(axis=0))[0]
    window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    lesion = lesion[window]
    teeth = np.asarray(tooth_masks)[(slice(None), *window)].astype(bool, copy=False)
    return (teeth & lesion).sum(axis=(1, 2)) / area


def assign_findings(
    masks: np.ndarray,
    classes: Sequence[int],
    class_names: Sequence[str],
    *,
    scores: Sequence[float] | None = None,
    boxes: np.ndarray | None = None,
    tooth_classes: Sequence[str] = DEFAULT_TOOTH_CLASSES,
    min_overlap: float = 0.1,
) -> Findings:
    """Places every lesion on the tooth that covers the largest share of its mask.

    A lesion is an instance of any class not in `tooth_classes`. Its share on a tooth is
    |lesion ∩ tooth| / |lesion| (so a small caries fully inside a tooth has share 1 whatever
    the tooth's size). It goes to the tooth with the largest share, or to `Findings.unassigned`
    (shown as "not on a detected tooth") when that share is below `min_overlap` (also when there
    are no teeth). Teeth are numbered 1..N left to right by the x of their mask's centroid.

    Args:
        masks (np.ndarray): NxHxW binary masks of all instances.
        classes (Sequence[int]): N contiguous class ids.
        class_names (Sequence[str]): names of the class ids.
        scores (Sequence[float] | None): N confidences; None for ground truth.
        boxes (np.ndarray | None): Nx4 XYXY boxes; None computes them from the masks.
        tooth_classes (Sequence[str]): class names that are teeth, compared case-insensitively
            (`dental_d2.data.categories.is_tooth_class`).
        min_overlap (float): the smallest share that places a lesion on a tooth.

    Returns:
        Findings: teeth by number with their lesions, and the unassigned lesions; lesions by
        descending score.
    """
    masks = np.asarray(masks).astype(bool, copy=False)
    classes = [int(c) for c in classes]
    if boxes is None:
        boxes = mask_boxes(masks)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    rounded_scores = (
        [None] * len(classes) if scores is None else [round(float(v), 4) for v in scores]
    )
    rounded_boxes = [[round(float(v), 1) for v in box] for box in boxes]
    is_tooth = [is_tooth_class(class_names[c], tooth_classes) for c in classes]
    tooth_ids = [i for i, tooth in enumerate(is_tooth) if tooth]
    # Teeth in number order (left to right).
    tooth_ids = [
        tooth_ids[j] for j in number_teeth([masks[i] for i in tooth_ids], boxes[tooth_ids])
    ]
    teeth = [Tooth(k + 1, i, rounded_scores[i], rounded_boxes[i]) for k, i in enumerate(tooth_ids)]
    tooth_masks = masks[tooth_ids] if teeth else np.zeros((0, *masks.shape[1:]))

    lesions = [
        Lesion(i, class_names[classes[i]], rounded_scores[i], rounded_boxes[i], 0.0)
        for i, tooth in enumerate(is_tooth)
        if not tooth
    ]
    return _place_lesions(teeth, tooth_masks, lesions, masks, min_overlap)


def _place_lesions(
    teeth: list[Tooth],
    tooth_masks: np.ndarray,
    lesions: list[Lesion],
    masks: np.ndarray,
    min_overlap: float,
) -> Findings:
    """Puts each lesion on the tooth covering the largest share of it (see `assign_findings`)."""
    findings = Findings(teeth=teeth)
    for lesion in lesions:
        shares = lesion_tooth_overlap(masks[lesion.index], tooth_masks)
        best = int(np.argmax(shares)) if len(shares) else -1
        share = float(shares[best]) if best >= 0 else 0.0
        lesion.overlap = round(share, 4)
        if best >= 0 and share >= min_overlap:
            teeth[best].lesions.append(lesion)
        else:
            findings.unassigned.append(lesion)
    for tooth in teeth:
        tooth.lesions.sort(key=_by_score)
    findings.unassigned.sort(key=_by_score)
    return findings


def _by_score(lesion: Lesion) -> float:
    # Ground truth (no score) counts as certain.
    return -(lesion.score if lesion.score is not None else 1.0)


def findings_from_instances(
    instances: Instances,
    class_names: Sequence[str],
    *,
    tooth_classes: Sequence[str] = DEFAULT_TOOTH_CLASSES,
    min_overlap: float = 0.1,
) -> Findings:
    """Runs `assign_findings` on a detectron2 `Instances` of predictions or ground truth.

    Reads `pred_masks`/`pred_boxes`/`pred_classes`/`scores`, or the `gt_*` fields of ground
    truth. Without masks, boxes stand in for them.

    Args:
        instances (Instances): one image's instances, on any device.
        class_names (Sequence[str]): names of the contiguous class ids.
        tooth_classes (Sequence[str]): class names that are teeth (see `is_tooth_class`).
        min_overlap (float): the smallest share that places a lesion on a tooth.
    """
    arrays = instance_arrays(instances)
    height, width = instances.image_size
    n = len(instances)
    masks = arrays.masks
    if masks is None:  # boxes stand in for masks
        masks = np.zeros((n, height, width), dtype=bool)
        for mask, (x0, y0, x1, y1) in zip(masks, arrays.boxes if arrays.boxes is not None else []):
            mask[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))] = True
    return assign_findings(
        masks.reshape(n, height, width),
        arrays.classes,
        class_names,
        scores=arrays.scores,
        boxes=arrays.boxes,
        tooth_classes=tooth_classes,
        min_overlap=min_overlap,
    )


def summarize(findings: Findings, score_threshold: float | None = None) -> str:
    """Returns a one-line summary, e.g. "5 teeth; T2: caries 0.91, crack 0.55".

    Teeth are named by `tooth_label`; lesions on no tooth follow as "not on a detected tooth:
    ...". For predictions, an absence says what was
    looked for and at what confidence: "4 teeth; no lesion found at score >= 0.5", "no tooth
    or lesion found at score >= 0.5"; a model that misses lesions must not read as a negative
    finding. Ground truth reads "no lesions" and "no findings".

    Args:
        findings (Findings): one image's findings.
        score_threshold (float | None): the least score of the predictions the findings come
            from; None for ground truth.
    """
    at_score = "" if score_threshold is None else f" found at score >= {score_threshold:g}"
    if not findings.teeth and not findings.unassigned:
        return "no findings" if score_threshold is None else f"no tooth or lesion{at_score}"

    def lesions_text(lesions):
        return ", ".join(
            lesion.class_name.lower() + ("" if lesion.score is None else f" {lesion.score:.2f}")
            for lesion in lesions
        )

    n = len(findings.teeth)
    parts = [f"{n} tooth" if n == 1 else f"{n} teeth"]
    parts += [
        f"{tooth_label(t.number)}: {lesions_text(t.lesions)}" for t in findings.teeth if t.lesions
    ]
    if findings.unassigned:
        parts.append(f"{NOT_ON_A_TOOTH}: {lesions_text(findings.unassigned)}")
    elif n and len(parts) == 1:
        parts.append("no lesions" if score_threshold is None else f"no lesion{at_score}")
    return "; ".join(parts)


def findings_to_dict(findings: Findings, score_threshold: float | None = None) -> dict:
    """Returns the JSON form of one image's findings (`summary`, `tooth_numbers`, `teeth`,
    `unassigned`).

    `tooth_numbers` says what the teeth's numbers are (`TOOTH_NUMBERS`); each tooth carries its
    `number` and the `label` shown on overlays ("T3"). `unassigned` holds the lesions on no
    detected tooth. Lesions carry `class`, `score`, `overlap`, `box` (XYXY pixels) and
    `instance`, the index of the instance among the image's predictions.

    Args:
        findings (Findings): one image's findings.
        score_threshold (float | None): as `summarize`'s.
    """

    def lesion_dict(lesion):
        return {
            "class": lesion.class_name,
            "score": lesion.score,
            "overlap": lesion.overlap,
            "box": lesion.box,
            "instance": lesion.index,
        }

    return {
        "summary": summarize(findings, score_threshold),
        "tooth_numbers": TOOTH_NUMBERS,
        "teeth": [
            {
                "number": t.number,
                "label": tooth_label(t.number),
                "score": t.score,
                "box": t.box,
                "instance": t.index,
                "lesions": [lesion_dict(lesion) for lesion in t.lesions],
            }
            for t in findings.teeth
        ],
        UNASSIGNED: [lesion_dict(lesion) for lesion in findings.unassigned],
    }
