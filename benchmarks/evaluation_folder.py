"""An evaluation's output folder, read back for the benchmarks that re-score it.

COCOEvaluator writes `coco_instances_results.json` (the detections) and
`<dataset>_coco_format.json` (the ground truth it scored them against) into the folder.
"""

import glob
import json
import os

from pycocotools.coco import COCO

from dental_d2 import DentalError

RESULTS_FILE = "coco_instances_results.json"


def read_evaluation(eval_dir: str) -> tuple[COCO, list[dict]]:
    """The ground truth and the detections of an evaluation folder.

    Args:
        eval_dir (str): a folder an evaluation wrote, e.g. output/dental_lite0/eval/dental_test.

    Raises:
        DentalError: the folder lacks either file.
    """
    results_path = os.path.join(eval_dir, RESULTS_FILE)
    gt_paths = sorted(glob.glob(os.path.join(eval_dir, "*_coco_format.json")))
    if not os.path.isfile(results_path) or not gt_paths:
        raise DentalError(
            f"{eval_dir}: no {RESULTS_FILE} and *_coco_format.json; pass a folder an evaluation "
            "wrote (OUTPUT_DIR/eval/<dataset>)"
        )
    coco_gt = COCO(gt_paths[0])
    with open(results_path) as f:
        return coco_gt, json.load(f)
