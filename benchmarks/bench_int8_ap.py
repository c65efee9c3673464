"""Is the int8 export worth keeping? Per-class segm and bbox AP50 of a trained model's float and
int8 ONNX exports on one COCO split, side by side, and the keep rule's verdict.

    python benchmarks/bench_int8_ap.py --config-file configs/dental_lite0.yaml \\
        --weights output/dental_lite0/model_final.pth --split ../shared/datasets/dentalai/test \\
        --calibration ../shared/datasets/dentalai/train --output output/int8_ap

Both exports keep what the config's evaluation keeps (`MODEL.ROI_HEADS.SCORE_THRESH_TEST`) and
are scored with pycocotools as `--eval-only` scores. The int8 export is kept only when the
all-class segm AP50 and the Tooth segm AP50 are each within 1 point of the float export's and
no lesion class (one not in `DENTAL.FINDINGS.TOOTH_CLASSES`) loses more than 2 points of segm
AP50. Prints the table and the verdict, and writes both to --output/int8_ap.json.
`--float-modules` and `--reduce-range` try other quantization settings than the exporter's.
"""

import argparse
import logging
import math
import os
import sys
import time

from tabulate import tabulate
from tqdm import tqdm

from dental_d2.cli import add_config_overrides, run_tool, tool_parser
from dental_d2.coco_format import instances_to_coco_annotations
from dental_d2.config import build_config
from dental_d2.errors import DentalError
from dental_d2.evaluation import load_ground_truth, per_class_ap, run_coco_eval
from dental_d2.export import export_model
from dental_d2.export.quantize import DEFAULT_CALIBRATION_COUNT, FLOAT_MODULES, export_int8
from dental_d2.file_io import write_json
from dental_d2.predictor import Predictor
from dental_d2.runtime import Backend

logger = logging.getLogger("dental_d2")
ANNOTATIONS = "_annotations.coco.json"
TASKS = ("segm", "bbox")
# The keep rule, in AP50 points: all classes and teeth may lose at most 1, a lesion class 2.
MAX_LOSS_ALL, MAX_LOSS_TOOTH, MAX_LOSS_LESION = 1.0, 1.0, 2.0


def parse_args(argv=None) -> argparse.Namespace:
    parser = tool_parser(__doc__, config_help="the trained model's config")
    parser.add_argument("--weights", required=True, metavar="PTH", help="the trained checkpoint")
    parser.add_argument("--split", required=True, metavar="DIR", help=f"photos and {ANNOTATIONS}")
    parser.add_argument("--calibration", required=True, metavar="DIR", help="training photos")
    parser.add_argument(
        "--calibration-count", type=int, default=DEFAULT_CALIBRATION_COUNT, metavar="N"
    )
    parser.add_argument(
        "--float-modules",
        default=",".join(FLOAT_MODULES),
        metavar="LIST",
        help="module paths kept in float, comma-separated, or 'none' (default: the exporter's)",
    )
    parser.add_argument("--reduce-range", action="store_true", help="7-bit int8 weights")
    parser.add_argument("--output", required=True, metavar="DIR", help="exports and the JSON")
    add_config_overrides(parser, "INPUT.MIN_SIZE_TEST 640")
    return parser.parse_args(argv)


def score_export(model_path: str, split: str, coco_gt, threshold: float) -> dict:
    """AP50 per task: "all" (COCO's mean over classes) and per class name, in percent, and the
    mean milliseconds per photo (`ms_per_photo`).

    Args:
        model_path (str): an exported `model.onnx`.
        split (str): the folder of the ground truth's photos.
        coco_gt (COCO): from `load_ground_truth`.
        threshold (float): the least score kept (the one the graph was exported with).
    """
    predictor = Predictor(None, weights=model_path, confidence_threshold=threshold, device="cpu")
    category_of = {}
    for cat_id, category in coco_gt.cats.items():
        if category["name"] in predictor.class_names:
            category_of[predictor.class_names.index(category["name"])] = cat_id
    results, seconds = [], 0.0
    for image_id, image in tqdm(sorted(coco_gt.imgs.items()), desc=os.path.basename(model_path)):
        start = time.perf_counter()
        instances = predictor.predict(os.path.join(split, image["file_name"]))
        seconds += time.perf_counter() - start
        for annotation in instances_to_coco_annotations(instances, image_id):
            class_index = annotation["category_id"] - 1
            if class_index in category_of:
                results.append({**annotation, "category_id": category_of[class_index]})
    # From the photo file to pasted masks, a side note: tools/benchmark.py times properly.
    scores = {"ms_per_photo": 1000 * seconds / max(1, len(coco_gt.imgs))}
    for task in TASKS:
        evaluated = run_coco_eval(coco_gt, results, task)
        per_class = per_class_ap(evaluated, list(coco_gt.cats))
        scores[task] = {
            "all": float(evaluated.stats[1] * 100) if evaluated is not None else math.nan,
            **{coco_gt.cats[c]["name"]: v["AP50"] for c, v in per_class.items()},
        }
    return scores


def verdict(float_ap: dict, int8_ap: dict, tooth_classes) -> tuple[bool, list[str]]:
    """The keep rule on segm AP50: whether to keep the int8 export, and each rule it broke.

    Args:
        float_ap (dict): `score_export` of the float export.
        int8_ap (dict): `score_export` of the int8 export.
        tooth_classes (Sequence[str]): the tooth classes; every other class is a lesion.
    """
    broken = []
    float_segm, int8_segm = float_ap["segm"], int8_ap["segm"]
    for name in float_segm:
        if math.isnan(float_segm[name]):
            continue  # no ground truth of this class in the split
        loss = float_segm[name] - int8_segm[name]
        if name == "all" or name in tooth_classes:
            limit = MAX_LOSS_ALL if name == "all" else MAX_LOSS_TOOTH
        else:
            limit = MAX_LOSS_LESION
        if not loss <= limit:  # a NaN int8 AP50 breaks the rule too
            broken.append(f"{name} segm AP50 lost {loss:.1f} points (at most {limit:g})")
    return not broken, broken


def format_table(float_ap: dict, int8_ap: dict) -> str:
    rows = []
    for name in float_ap["segm"]:
        row = [name]
        for task in TASKS:
            a, b = float_ap[task][name], int8_ap[task][name]
            row += [f"{a:.1f}", f"{b:.1f}", f"{b - a:+.1f}"]
        rows.append(row)
    headers = ["class", "segm AP50 float", "int8", "change", "bbox AP50 float", "int8", "change"]
    return tabulate(rows, headers=headers, tablefmt="github")


def _run(args) -> int:
    gt_path = os.path.join(args.split, ANNOTATIONS)
    if not os.path.isfile(gt_path):
        raise DentalError(f"--split {args.split}: no {ANNOTATIONS}; give a COCO split folder")
    coco_gt = load_ground_truth(gt_path)
    cfg = build_config(args.config_file, [*args.opts, "MODEL.WEIGHTS", args.weights])
    float_path = export_model(cfg, os.path.join(args.output, "float"))
    int8_path = export_int8(
        cfg,
        os.path.join(args.output, "int8"),
        args.calibration,
        Backend(cfg).model_input,
        count=args.calibration_count,
        float_modules=[m for m in args.float_modules.split(",") if m and m != "none"],
        reduce_range=args.reduce_range,
    )
    threshold = cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST
    float_ap = score_export(float_path, args.split, coco_gt, threshold)
    int8_ap = score_export(int8_path, args.split, coco_gt, threshold)
    keep, broken = verdict(float_ap, int8_ap, cfg.DENTAL.FINDINGS.TOOTH_CLASSES)
    print(f"{args.weights} on {args.split} ({len(coco_gt.imgs)} photos), AP50 in percent:")
    print(format_table(float_ap, int8_ap))
    print(
        f"ms per photo, file to pasted masks: float {float_ap['ms_per_photo']:.0f}, int8 "
        f"{int8_ap['ms_per_photo']:.0f} (load average {os.getloadavg()[0]:.1f})"
    )
    print("verdict: " + ("keep the int8 export" if keep else "keep float: " + "; ".join(broken)))
    write_json(
        os.path.join(args.output, "int8_ap.json"),
        {"float": float_ap, "int8": int8_ap, "keep": keep, "broken": broken,
         "weights": args.weights, "split": args.split, "opts": list(args.opts)},
        indent=2,
    )  # fmt: skip
    return 0


def main(argv=None) -> int:
    return run_tool(parse_args, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
