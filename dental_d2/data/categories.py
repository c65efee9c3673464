"""Category handling for Roboflow COCO exports: dropping the superclass, contiguous ids."""

from collections.abc import Iterable

# Roboflow writes this supercategory for the project-level category it adds.
ROBOFLOW_NO_SUPERCATEGORY = "none"


def _is_roboflow_superclass(category: dict, others: list[dict], annotated_ids: set) -> bool:
    if category["id"] in annotated_ids or not others:
        return False
    parent_of_others = any(
        c.get("supercategory") == category["name"] and c["id"] != category["id"] for c in others
    )
    only_root = category.get("supercategory") == ROBOFLOW_NO_SUPERCATEGORY and all(
        c.get("supercategory") != ROBOFLOW_NO_SUPERCATEGORY for c in others
    )
    return parent_of_others or only_root


def thing_categories(categories: list[dict], annotated_ids: Iterable[int]) -> list[dict]:
    """Returns the categories that are real classes, sorted by id.

    Roboflow exports add a category for the project itself (usually id 0): it has no
    annotations and is either the `supercategory` of every other category or the only one whose
    own supercategory is "none". Registered as a class it becomes a phantom class with a NaN AP,
    so it is dropped here.

    Args:
        categories (list[dict]): the `categories` list of a COCO file (`id`, `name`,
            `supercategory`).
        annotated_ids (Iterable[int]): the category ids that at least one annotation uses.

    Returns:
        list[dict]: the kept categories in ascending id order.
    """
    annotated = set(annotated_ids)
    ordered = sorted(categories, key=lambda c: c["id"])
    kept = []
    for category in ordered:
        others = [c for c in ordered if c["id"] != category["id"]]
        if not _is_roboflow_superclass(category, others, annotated):
            kept.append(category)
    return kept


def contiguous_id_map(categories: list[dict]) -> dict[int, int]:
    """Maps dataset category ids (ascending) to detectron2's contiguous ids 0..K-1.

    Args:
        categories (list[dict]): the kept categories, as returned by `thing_categories`.
    """
    return {c["id"]: i for i, c in enumerate(sorted(categories, key=lambda c: c["id"]))}


# Drawing colours from the Okabe-Ito colour-blind-safe palette (RGB). Teeth are blue: a cool
# colour that stands out on white enamel and on pink gums, and leaves the warm ones to lesions.
TOOTH_COLOR = (0, 114, 178)  # blue
# Given to the other classes in class order: warm and strong first (caries, cavity, crack of
# the dental data), none close to the teeth's blue; yellow, faint on enamel, comes last.
LESION_COLORS = (
    (213, 94, 0),  # vermillion
    (230, 159, 0),  # orange
    (204, 121, 167),  # reddish purple
    (0, 158, 115),  # bluish green
    (120, 60, 20),  # brown (not Okabe-Ito: a seventh colour far from the others)
    (0, 0, 0),  # black
    (240, 228, 66),  # yellow
)


def is_tooth_class(name: str, tooth_classes: Iterable[str] | None = None) -> bool:
    """Whether a class is a tooth (lesions are placed on it), not a lesion.

    The one rule for findings, active learning and colours. With `tooth_classes` (a model's
    `DENTAL.FINDINGS.TOOTH_CLASSES`), a class is a tooth when its name is one of them, compared
    case-insensitively. Without (a dataset's colours, where no config is at hand), any name that
    mentions a tooth: "Tooth", "teeth", "molar-tooth".

    Args:
        name (str): a class name.
        tooth_classes (Iterable[str] or None): the names that are teeth; None guesses by name.
    """
    lowered = name.lower()
    if tooth_classes is None:
        return "tooth" in lowered or "teeth" in lowered
    return lowered in {tooth.lower() for tooth in tooth_classes}


def thing_colors(thing_classes: list[str]) -> list[tuple[int, int, int]]:
    """Returns an RGB 0-255 colour per class for detectron2's `Visualizer`.

    Teeth get `TOOTH_COLOR`; the other classes take `LESION_COLORS` in class order (repeating
    after seven).

    Args:
        thing_classes (list[str]): class names in contiguous-id order.
    """
    colors = []
    lesion_index = 0
    for name in thing_classes:
        if is_tooth_class(name):
            colors.append(TOOTH_COLOR)
        else:
            colors.append(LESION_COLORS[lesion_index % len(LESION_COLORS)])
            lesion_index += 1
    return colors
