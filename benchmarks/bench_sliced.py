"""Scores a trained model on a COCO split predicted whole and sliced (TEST.SLICED.*): per-class
segm and bbox AP50 side by side, with seconds per photo and model passes per photo.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_sliced.py \\
        --config-file configs/dental_lite0.yaml \\
        --split ../shared/datasets/dentalai-2048/valid \\
        MODEL.WEIGHTS output/dental_lite0/model_final.pth TEST.SLICED.TILE_SIZE 1024

Both runs go through `Predictor` (the runtime `MODEL.WEIGHTS` picks: a checkpoint, `.onnx` or
`.ts`), differing only in TEST.SLICED.ENABLED; the predictions are scored by the project's
evaluation (`dental_d2.evaluation.evaluate_task`, pycocotools' COCOeval underneath) against the
split's `_annotations.coco.json`. Seconds are wall time of prediction alone (reading photos and
scoring excluded), so run it on an idle machine and say its load.
"""

import contextlib
import io
import os
import sys
import time

from pycocotools.coco import COCO
from tqdm import tqdm

from dental_d2.cli import add_config_overrides, run_tool, tool_parser
from dental_d2.coco_format import instances_to_coco_annotations
from dental_d2.data import read_image
from dental_d2.errors import DentalError
from dental_d2.evaluation import evaluate_task, load_ground_truth
from dental_d2.predictor import Predictor
from dental_d2.runtime.sliced import tile_boxes

ANNOTATION_FILE = "_annotations.coco.json"
TASKS = ("segm", "bbox")


def parse_args(argv=None):
    parser = tool_parser(__doc__, config_help="the model's dental YAML config")
    parser.add_argument(
        "--split",
        required=True,
        metavar="DIR",
        help=f"a COCO split folder: its photos and {ANNOTATION_FILE}",
    )
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=0.05,
        help="least score predicted, as detectron2's evaluation keeps (default %(default)s)",
    )
    parser.add_argument(
        "--limit", type=int, default=0, help="score only the first N photos (default: all)"
    )
    add_config_overrides(parser, "MODEL.WEIGHTS model_final.pth TEST.SLICED.TILE_SIZE 1024")
    return parser.parse_args(argv)


def category_ids(class_names: list[str], coco_gt, gt_path: str) -> list[int]:
    """The ground truth's category id of each of the model's classes, matched by name.

    Raises:
        DentalError: a model class the ground truth does not have.
    """
    by_name = {c["name"].lower(): c["id"] for c in coco_gt.cats.values()}
    missing = [name for name in class_names if name.lower() not in by_name]
    if missing:
        raise DentalError(
            f"{gt_path}: has no class {', '.join(missing)} of the model ({', '.join(class_names)});"
            " score the model on a split with its classes"
        )
    return [by_name[name.lower()] for name in class_names]


def predict_split(predictor: Predictor, coco_gt, folder: str, image_ids: list[int], desc: str):
    """COCO results for the photos, category ids as in `coco_gt`, and the seconds spent in
    `Predictor.predict_batch`."""
    to_gt = category_ids(predictor.class_names, coco_gt, os.path.join(folder, ANNOTATION_FILE))
    batch_size = max(1, predictor.cfg.TEST.IMS_PER_BATCH)
    results, seconds = [], 0.0
    for start in tqdm(range(0, len(image_ids), batch_size), desc=desc, unit="batch"):
        ids = image_ids[start : start + batch_size]
        photos = [
            read_image(os.path.join(folder, coco_gt.imgs[i]["file_name"]), format="BGR")
            for i in ids
        ]
        began = time.perf_counter()
        outputs = predictor.predict_batch(photos)
        seconds += time.perf_counter() - began
        for image_id, instances in zip(ids, outputs):
            first_id = len(results) + 1
            for annotation in instances_to_coco_annotations(instances, image_id, first_id):
                annotation["category_id"] = to_gt[annotation["category_id"] - 1]
                results.append(annotation)
    return results, seconds


def passes_per_photo(cfg, coco_gt, image_ids: list[int]) -> float:
    """Model passes a sliced run makes per photo on average: the whole photo and its tiles."""
    sliced, total = cfg.TEST.SLICED, 0
    for image_id in image_ids:
        image = coco_gt.imgs[image_id]
        tiles = len(tile_boxes(image["height"], image["width"], sliced.TILE_SIZE, sliced.OVERLAP))
        total += 1 + tiles if tiles > 1 else 1
    return total / max(1, len(image_ids))


def limited_ground_truth(coco_gt: COCO, image_ids: list[int]) -> COCO:
    """`coco_gt` with only the photos scored: a photo left out by --limit must not count its
    objects as missed. pycocotools' COCOeval takes `params.imgIds`, but
    `dental_d2.evaluation.evaluate_task` matches every image of the ground truth."""
    keep = set(image_ids)
    limited = COCO()
    limited.dataset = {
        **coco_gt.dataset,
        "images": [image for image in coco_gt.dataset["images"] if image["id"] in keep],
        "annotations": [a for a in coco_gt.dataset["annotations"] if a["image_id"] in keep],
    }
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints "creating index..."
        limited.createIndex()
    return limited


def _score(coco_gt, results: list[dict]) -> dict:
    """task -> {"all": AP50, category id: AP50}, in percent."""
    scores = {}
    for task in TASKS:
        evaluation = evaluate_task(coco_gt, results, task)
        scores[task] = {"all": evaluation.coco.get("AP50", float("nan"))}
        scores[task].update({c: ap["AP50"] for c, ap in evaluation.class_ap.items()})
    return scores


def _print_table(coco_gt, scores: dict, seconds: dict, passes: dict, count: int) -> None:
    modes = list(scores)
    header = [f"{task} AP50 {mode}" for task in TASKS for mode in modes]
    print(f"{count} photos; AP50 in percent")
    print("| class | " + " | ".join(header) + " |")
    print("|---" * (len(header) + 1) + "|")
    rows = [(coco_gt.cats[c]["name"], c) for c in sorted(coco_gt.getCatIds())] + [("all", "all")]
    for name, key in rows:
        cells = [scores[mode][task].get(key, float("nan")) for task in TASKS for mode in modes]
        print(f"| {name} | " + " | ".join(f"{v:.1f}" for v in cells) + " |")
    for name, values in (("s per photo", seconds), ("passes per photo", passes)):
        cells = [values[mode] for _ in TASKS for mode in modes]
        print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in cells) + " |")


def _run(args) -> None:
    gt_path = os.path.join(args.split, ANNOTATION_FILE)
    coco_gt = load_ground_truth(gt_path)
    image_ids = sorted(coco_gt.getImgIds())
    if args.limit > 0:
        image_ids = image_ids[: args.limit]
        coco_gt = limited_ground_truth(coco_gt, image_ids)
    scores, seconds, passes = {}, {}, {}
    for mode in ("whole", "sliced"):
        predictor = Predictor(
            args.config_file,
            opts=[*args.opts, "TEST.SLICED.ENABLED", str(mode == "sliced")],
            confidence_threshold=args.score_threshold,
            require_weights="scoring sliced inference",
        )
        results, spent = predict_split(predictor, coco_gt, args.split, image_ids, mode)
        scores[mode] = _score(coco_gt, results)
        seconds[mode] = spent / max(1, len(image_ids))
        sliced = predictor.cfg.TEST.SLICED.ENABLED
        passes[mode] = passes_per_photo(predictor.cfg, coco_gt, image_ids) if sliced else 1.0
    _print_table(coco_gt, scores, seconds, passes, len(image_ids))


def main(argv=None) -> int:
    return run_tool(parse_args, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
