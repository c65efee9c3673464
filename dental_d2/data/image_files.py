"""Input images for prediction: expanding files, folders and globs, and naming their outputs."""

import glob
import os
from collections import Counter, defaultdict
from collections.abc import Sequence

from ..errors import DentalError
from .dicom import DICOM_SUFFIXES, is_dicom_file

# Files a directory given as input contributes (compared case-insensitively); other files count
# when they are DICOM (PACS and sensor software often write them without an extension).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", *DICOM_SUFFIXES)


def collect_images(inputs: Sequence[str]) -> tuple[list[str], list[str]]:
    """Expands files, directories and glob patterns into image paths.

    A directory contributes its images (IMAGE_EXTENSIONS, and DICOM files of any name; not
    recursive), sorted; a glob
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
                if is_image_file(os.path.join(item, name))
            )
        else:
            found = sorted(p for p in glob.glob(item, recursive=True) if is_image_file(p))
        if not found:
            problems.append(_no_image(item))
        for path in found:
            key = os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                paths.append(path)
    if not paths:
        # The same words as when other inputs gave images, all of them on the one line.
        raise DentalError("; ".join(problems))
    return paths, problems


def _no_image(item: str) -> str:
    """What is wrong with an input that gave no image, and the fix."""
    extensions = ", ".join(IMAGE_EXTENSIONS)
    if os.path.isdir(item):
        return f"{item}: no image in this folder (extensions {extensions}, or DICOM files)"
    if any(wildcard in item for wildcard in "*?["):  # glob's wildcards
        return f"{item}: matched no image file (extensions {extensions}, or DICOM files)"
    return f"{item}: no such file; pass an existing image file, a folder or a glob pattern"


def is_image_file(path: str) -> bool:
    """Whether a path is a file with an image extension, or a DICOM file of any name.

    Args:
        path (str): a path.
    """
    if not os.path.isfile(path):
        return False
    if path.lower().endswith(IMAGE_EXTENSIONS):
        return True
    # PACS exports name files by their DICOM instance UID ("1.2.840....3"), so any ending counts.
    return is_dicom_file(path)


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
