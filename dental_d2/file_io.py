"""Atomic file writes: every file a run writes appears whole or not at all.

A file is written to a temporary name in its own folder, flushed to disk, then renamed over the
target with `os.replace`, which is atomic on POSIX and Windows within one file system. A kill,
OOM or full disk at any moment leaves the old file or the new one, never half of one.
"""

import contextlib
import json
import os
import tempfile

import cv2
import numpy as np

from .errors import DentalError


@contextlib.contextmanager
def atomic_write(path, mode: str = "w", encoding: str | None = None):
    """Opens a temporary file beside `path`; on a clean exit it replaces `path`.

    On an exception the temporary file is removed and `path` is left as it was.

    Args:
        path (str | os.PathLike): the file to write.
        mode (str): "w" for text or "wb" for bytes.
        encoding (str | None): text encoding; UTF-8 when None and `mode` is text.

    Yields:
        file: the open temporary file.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    # Same folder, so the rename never crosses file systems; a dot name keeps globs off it.
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder
    )
    if mode == "w":
        encoding = encoding or "utf-8"
    try:
        with os.fdopen(descriptor, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the file the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


def write_json(path, data, indent: int | None = None, **kwargs):
    """Writes `data` as JSON to `path` atomically.

    Args:
        path (str | os.PathLike): the file to write.
        data: a JSON-serialisable object.
        indent (int | None): as `json.dump`.
        **kwargs: passed to `json.dump` (e.g. `allow_nan=False`).
    """
    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=indent, **kwargs)


def write_bytes(path, data: bytes):
    """Writes `data` to `path` atomically."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_image(path, image_bgr: np.ndarray, params: tuple[int, ...] = ()) -> bool:
    """Encodes an image with OpenCV (format from the extension) and writes it atomically.

    Args:
        path (str | os.PathLike): the file to write; its extension picks the format.
        image_bgr (np.ndarray): HxWx3 BGR (or HxW) uint8.
        params (tuple[int, ...]): OpenCV encoder parameters, e.g. JPEG quality.

    Returns:
        bool: False when OpenCV cannot encode the image (e.g. an unknown extension).
    """
    extension = os.path.splitext(os.fspath(path))[1] or ".png"
    try:
        ok, encoded = cv2.imencode(extension, np.ascontiguousarray(image_bgr), list(params))
    except cv2.error:  # no encoder for this extension
        ok = False
    if not ok:
        return False
    write_bytes(path, encoded.tobytes())
    return True


def make_output_dir(path) -> None:
    """Creates the folder a tool writes into (`--output`), with a one-line error when it cannot."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise DentalError(
            f"{path}: cannot create the output directory ({e}); pass another --output"
        ) from e


def write_overlay(path, image_rgb: np.ndarray) -> None:
    """Writes a drawn RGB picture (an overlay) atomically, format from the extension.

    Raises:
        DentalError: when it cannot be written.
    """
    if not write_image(path, image_rgb[:, :, ::-1]):
        raise DentalError(f"{path}: cannot write the overlay; check that --output is writable")


def check_output_outside(output_dir, input_folders, image_files=()) -> None:
    """Refuses an output folder that is an input folder, inside one, or an image's own folder.

    Outputs named after their inputs (`photo.jpg` -> `photo.jpg`) would replace the originals
    there, and outputs below an input folder would mix with the photos.

    Args:
        output_dir (str | os.PathLike): where results are to be written.
        input_folders (Iterable[str | os.PathLike]): folders given as inputs.
        image_files (Iterable[str | os.PathLike]): images given one by one (or by a pattern).

    Raises:
        DentalError: naming both folders.
    """
    output = os.path.realpath(output_dir)
    folders = {os.path.realpath(f) for f in input_folders}
    own_folders = {os.path.dirname(os.path.realpath(f)) for f in image_files}
    for folder in sorted(folders | own_folders):
        inside = folder in folders and output.startswith(folder.rstrip(os.sep) + os.sep)
        if output == folder or inside:
            raise DentalError(
                f"--output {output_dir} is the input folder {folder} or inside it: results "
                "would overwrite or mix with the photos; choose an output folder outside it"
            )
