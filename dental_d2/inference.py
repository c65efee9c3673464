"""Prediction over image files: overlays, `predictions.coco.json` and `findings.json`.

`tools/visualize.py --input` runs `predict_images`; its COCO file is written by
`dental_d2.coco_format`, as the service's and the active-learning ranking's are.
"""

import logging
import os
from collections.abc import Sequence

import numpy as np
from detectron2.structures import Instances
from tqdm import tqdm

from .coco_format import coco_dataset, instances_to_coco_annotations
from .data import read_image
from .data.image_files import overlay_names, relative_names
from .errors import DentalError
from .file_io import make_output_dir, write_json, write_overlay
from .findings import findings_to_dict

logger = logging.getLogger(__name__)

# Written to the output directory.
PREDICTIONS_FILE = "predictions.coco.json"
FINDINGS_FILE = "findings.json"


def _read_images(image_paths, indices, failures: list, progress) -> list[tuple[int, np.ndarray]]:
    """(index, BGR image) for each readable path; the others are logged into `failures`."""
    batch = []
    for k in indices:
        try:
            batch.append((k, read_image(image_paths[k], format="BGR")))
        except DentalError as e:
            logger.warning("skipped: %s", e)
            failures.append(str(e))
            progress.update(1)
            progress.set_postfix(failed=len(failures))
    return batch


def _draw_overlay(predictor, image_bgr: np.ndarray, instances: Instances, path: str):
    """Writes the overlay of one image's predictions; returns their findings."""
    findings = predictor.findings(instances)
    write_overlay(path, predictor.draw(image_bgr, instances, findings))
    return findings


def _write_prediction_files(predictor, output_dir, images, annotations, findings_images) -> None:
    findings_cfg = predictor.cfg.DENTAL.FINDINGS
    write_json(
        os.path.join(output_dir, PREDICTIONS_FILE),
        coco_dataset(images, annotations, predictor.class_names),
    )
    write_json(
        os.path.join(output_dir, FINDINGS_FILE),
        {
            "tooth_classes": list(findings_cfg.TOOTH_CLASSES),
            "min_overlap": findings_cfg.MIN_OVERLAP,
            # The least score of a prediction, so that "no lesion found" says at what confidence.
            "score_threshold": predictor.score_threshold,
            "images": findings_images,
        },
        indent=2,
    )
    overlays = f"{len(images)} overlay" + ("" if len(images) == 1 else "s")
    logger.info(f"wrote {overlays}, {PREDICTIONS_FILE} and {FINDINGS_FILE} to {output_dir}")


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
    make_output_dir(output_dir)
    file_names, overlays = relative_names(image_paths), overlay_names(image_paths)
    batch_size = max(1, predictor.cfg.TEST.IMS_PER_BATCH)
    images, annotations, findings_images, failures = [], [], [], []
    with tqdm(total=len(image_paths), desc="predicting", unit="image") as progress:
        for start in range(0, len(image_paths), batch_size):
            indices = range(start, min(start + batch_size, len(image_paths)))
            batch = _read_images(image_paths, indices, failures, progress)
            outputs = predictor.predict_batch([image for _, image in batch]) if batch else []
            for (k, image), instances in zip(batch, outputs):
                image_id = len(images) + 1
                overlay_path = os.path.join(output_dir, overlays[k])
                findings = _draw_overlay(predictor, image, instances, overlay_path)
                height, width = image.shape[:2]
                images.append(
                    {"id": image_id, "file_name": file_names[k], "height": height, "width": width}
                )
                annotations += instances_to_coco_annotations(
                    instances, image_id, first_id=len(annotations) + 1
                )
                findings_images.append(
                    {
                        "file": file_names[k],
                        "overlay": overlays[k],
                        **findings_to_dict(findings, predictor.score_threshold),
                    }
                )
                progress.update(1)
    _write_prediction_files(predictor, output_dir, images, annotations, findings_images)
    return failures
