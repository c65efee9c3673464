"""DentalEvaluator: detectron2's COCO AP plus per-class P/R/F1, plots and an HTML report."""

import contextlib
import itertools
import logging
import os
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Sequence

import detectron2.utils.comm as comm
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.utils.events import get_event_storage
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..config import DEFAULT_IOU_THRESHOLD, DEFAULT_SCORE_THRESHOLD, DEFAULT_TOOTH_CLASSES
from ..data.categories import is_tooth_class
from ..modeling.postprocessing import MASK_FROM_PEAK
from .coco_eval import run_coco_eval
from .matching import match_predictions
from .metrics import coco_summary, compute_detection_metrics, per_class_ap
from .per_tooth import per_tooth_scores
from .report import TaskEvaluation, log_class_table, write_outputs

logger = logging.getLogger(__name__)


def evaluate_task(
    coco_gt: COCO,
    results: list[dict],
    iou_type: str,
    *,
    category_ids: list[int] | None = None,
    coco_ap: dict | None = None,
    coco_eval: COCOeval | None = None,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    progress: bool = False,
) -> TaskEvaluation:
    """Matches results to ground truth and computes P/R/F1, the confusion matrix, PR curves and AP.

    Args:
        coco_gt (COCO): the ground truth (crowd annotations are ignored by P/R/F1).
        results (list[dict]): COCO results, category ids as in `coco_gt`.
        iou_type (str): "segm" or "bbox".
        category_ids (list[int] or None): the classes in report order; by default `coco_gt`'s in
            ascending id order.
        coco_ap (dict or None): COCO AP already computed (detectron2's COCOEvaluator results for the
            task); None runs pycocotools' COCOeval here.
        coco_eval (COCOeval or None): with `coco_ap`, the COCOeval behind it, for per-class AP50
            and the IoUs of the matching; None when there were no results.
        score_threshold (float): predictions scoring below it are not counted.
        iou_threshold (float): the least IoU of a match.
        progress (bool): show a progress bar while matching.
    """
    if category_ids is None:
        category_ids = sorted(coco_gt.getCatIds())
    names = {c: coco_gt.cats[c]["name"] for c in category_ids}
    if coco_ap is None:
        coco_eval = run_coco_eval(coco_gt, results, iou_type)
        coco_ap = coco_summary(coco_eval, names)
    # On COCOeval's IoUs, so that P/R/F1 compute none of them a second time.
    images = match_predictions(
        coco_gt,
        results,
        iou_type,
        score_threshold,
        iou_threshold,
        progress=progress,
        coco_eval=coco_eval,
    )
    metrics = compute_detection_metrics(
        images,
        category_ids,
        [names[c] for c in category_ids],
        iou_type,
        score_threshold,
        iou_threshold,
    )
    return TaskEvaluation(metrics, coco_ap, per_class_ap(coco_eval, category_ids))


def describe_evaluation(cfg, dataset_name: str, iteration: int | None = None) -> dict[str, str]:
    """What an evaluation scores, for its report: the model, the config and the data.

    During training the model is the one being trained; otherwise it is `MODEL.WEIGHTS`, after
    `iteration`. Either way the iteration shown is the number of iterations completed, as the
    training log counts.

    Args:
        cfg (CfgNode): the config of the evaluation.
        dataset_name (str): the registered dataset evaluated.
        iteration (int | None): the training iteration stored with `MODEL.WEIGHTS`, from the
            caller that read them (the report does not open the file again); None for none.
    """
    try:
        # The storage holds the index of the iteration just run (from 0); after training, the
        # evaluation that ends it sees one more, which is the number of iterations run.
        iteration = min(get_event_storage().iter + 1, cfg.SOLVER.MAX_ITER)
        model = f"the model being trained in {cfg.OUTPUT_DIR}, after iteration {iteration}"
    except AssertionError:  # detectron2's way of saying that no training storage is open
        weights = cfg.MODEL.WEIGHTS or "random weights (MODEL.WEIGHTS is empty)"
        model = weights if iteration is None else f"{weights} (iteration {iteration})"
    saved = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
    metadata = MetadataCatalog.get(dataset_name)
    split = metadata.get("roboflow_json") or metadata.get("json_file") or "registered in code"
    return {
        "Model": model,
        "Config": saved if os.path.isfile(saved) else "not saved",
        "Data": f"{dataset_name} ({split})",
    }


class DentalEvaluator(COCOEvaluator):
    """detectron2's COCOEvaluator plus per-class TP/FP/FN, precision, recall and F1.

    P/R/F1 count predictions scoring at least `score_threshold`, matched greedily by descending
    score to the still-unmatched ground truth of their class with the highest IoU, if at least
    `iou_threshold` (see `dental_d2.evaluation.matching.match_image`). `evaluate()` returns
    detectron2's {task: {metric: value}} with COCO AP in percent ("AP", "AP50", "AP-<class>", ...)
    and "precision", "recall", "f1", "precision-<class>", ... as fractions. The main process
    writes to `output_dir`: metrics.json, `<task>_pr_curves.png`, `<task>_confusion_matrix.png`,
    report.html, and COCOEvaluator's own files, each one whole (see `evaluate`).

    Built from a config as detectron2's configurable classes are: `DentalEvaluator(cfg, name)`
    (see `from_config`), or from explicit arguments.

    Args:
        dataset_name (str): a registered dataset with `thing_classes` (and
            `thing_dataset_id_to_contiguous_id`) in its metadata.
        output_dir (str): where the metrics, plots and report go.
        tasks (tuple[str] or None): "bbox" and/or "segm"; None infers them from the
            predictions as COCOEvaluator does.
        score_threshold (float): predictions scoring below it are not counted by P/R/F1.
        iou_threshold (float): the least IoU of a match for P/R/F1.
        distributed (bool): gather predictions from all processes and evaluate in the main.
        draw_images (bool): draw the best and worst images in the report.
        num_report_images (int): best and worst images drawn, each.
        provenance (dict[str, str] or None): what is scored (model, config, data), for the
            report; see `describe_evaluation`.
        tooth_classes (Sequence[str]): class names that are teeth; with masks and teeth in the
            data, the report adds per-tooth sensitivity and specificity of each lesion class.
        min_overlap (float): the least share of a lesion on a tooth that places it there.
    """

    @configurable
    def __init__(
        self,
        dataset_name: str,
        output_dir: str,
        tasks: tuple[str, ...] | None = ("bbox", "segm"),
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        iou_threshold: float = DEFAULT_IOU_THRESHOLD,
        distributed: bool = True,
        draw_images: bool = True,
        num_report_images: int = 4,
        provenance: dict[str, str] | None = None,
        tooth_classes: Sequence[str] = DEFAULT_TOOTH_CLASSES,
        min_overlap: float = 0.1,
    ):
        # Not cached: the cleaned dataset may change between runs with the same output_dir.
        super().__init__(
            dataset_name,
            tasks=tasks,
            distributed=distributed,
            output_dir=output_dir,
            allow_cached_coco=False,
        )
        self._dataset_name = dataset_name
        self._score_threshold = score_threshold
        self._iou_threshold = iou_threshold
        self._draw_images = draw_images
        self._num_report_images = num_report_images
        self._provenance = dict(provenance or {})
        self._tooth_classes = list(tooth_classes)
        self._min_overlap = min_overlap
        id_map = self._metadata.get("thing_dataset_id_to_contiguous_id", None)
        num_classes = len(self._metadata.thing_classes)
        # Report order is the model's class order.
        self._category_ids = (
            [{v: k for k, v in id_map.items()}[k] for k in range(num_classes)]
            if id_map
            else list(range(num_classes))
        )

    @classmethod
    def from_config(
        cls, cfg, dataset_name: str, output_dir: str | None = None, iteration: int | None = None
    ) -> dict:
        """The arguments of `__init__` from `cfg.DENTAL.EVAL`, `cfg.MODEL.MASK_ON` and
        `cfg.OUTPUT_DIR`, as detectron2's `@configurable` wants: `DentalEvaluator(cfg, name)`.

        Args:
            cfg (CfgNode): a config with dental_d2's keys.
            dataset_name (str): the registered dataset to evaluate.
            output_dir (str or None): by default `<OUTPUT_DIR>/eval/<dataset_name>`.
            iteration (int or None): the iteration of `MODEL.WEIGHTS`, for the report.
        """
        return {
            "dataset_name": dataset_name,
            "output_dir": output_dir or os.path.join(cfg.OUTPUT_DIR, "eval", dataset_name),
            "tasks": ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",),
            "score_threshold": cfg.DENTAL.EVAL.SCORE_THRESHOLD,
            "iou_threshold": cfg.DENTAL.EVAL.IOU_THRESHOLD,
            "provenance": describe_evaluation(cfg, dataset_name, iteration),
            "tooth_classes": list(cfg.DENTAL.FINDINGS.TOOTH_CLASSES),
            "min_overlap": cfg.DENTAL.FINDINGS.MIN_OVERLAP,
        }

    def reset(self):
        super().reset()
        self._coco_evals = {}

    def process(self, inputs, outputs):
        first = len(self._predictions)
        super().process(inputs, outputs)
        # Marks the COCO results whose outline came from half their peak probability, so the
        # results file and the report say how many (see dental_d2.modeling.postprocessing).
        by_image = {p["image_id"]: p for p in self._predictions[first:] if "instances" in p}
        for record, output in zip(inputs, outputs):
            instances = output.get("instances")
            if instances is None or not instances.has(MASK_FROM_PEAK):
                continue
            results = by_image[record["image_id"]]["instances"]
            for k in torch.nonzero(instances.get(MASK_FROM_PEAK)).flatten().tolist():
                results[k][MASK_FROM_PEAK] = True

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        # Kept for the per-class AP50 of the report.
        self._coco_evals[iou_type] = coco_eval
        return super()._derive_coco_results(coco_eval, iou_type, class_names=class_names)

    def evaluate(self, img_ids=None):
        # COCOEvaluator writes its files in place; let it write into a hidden folder beside
        # them and rename each finished file over the old one, so a kill tears none.
        final_dir = self._output_dir
        if not final_dir or not comm.is_main_process():
            return super().evaluate(img_ids)
        os.makedirs(final_dir, exist_ok=True)
        self._output_dir = tempfile.mkdtemp(prefix=".coco-", dir=final_dir)
        try:
            results = super().evaluate(img_ids)
            self._remove_conversion_lock(final_dir)
            for name in os.listdir(self._output_dir):
                os.replace(os.path.join(self._output_dir, name), os.path.join(final_dir, name))
            if results:
                self._write_outputs(final_dir)
            return results
        finally:
            shutil.rmtree(self._output_dir, ignore_errors=True)
            self._output_dir = final_dir

    def _remove_conversion_lock(self, output_dir: str):
        # detectron2's convert_to_coco_json holds an iopath file lock, `<json>.lock`, while it
        # writes `<dataset>_coco_format.json` in __init__, and leaves the lock file behind. Every
        # process built its evaluator before the gathering in evaluate(), so none holds it now.
        lock = os.path.join(output_dir, f"{self._dataset_name}_coco_format.json.lock")
        with contextlib.suppress(FileNotFoundError):
            os.remove(lock)

    def _eval_predictions(self, predictions, img_ids=None):
        # Runs in the main process only, on the gathered predictions. COCOEvaluator maps their
        # category ids to the dataset's in place: what it evaluated, P/R/F1 count too.
        super()._eval_predictions(predictions, img_ids=img_ids)
        results = list(itertools.chain(*[p["instances"] for p in predictions]))
        self._evaluations = OrderedDict()
        for task in ("bbox", "segm"):
            if task not in self._results:
                continue
            # None when there were no results; missing only if detectron2 changed its internals.
            if task in self._coco_evals:
                coco_eval = self._coco_evals[task]
            else:
                coco_eval = run_coco_eval(self._coco_api, results, task)
            evaluation = evaluate_task(
                self._coco_api,
                results,
                task,
                score_threshold=self._score_threshold,
                iou_threshold=self._iou_threshold,
                category_ids=self._category_ids,
                coco_ap=self._results[task],
                coco_eval=coco_eval,
            )
            if task == "segm":
                evaluation.masks_from_peak = self._count_masks_from_peak(results)
            if task == "segm" and self._has_teeth():
                evaluation.per_tooth = per_tooth_scores(
                    self._coco_api,
                    results,
                    tooth_classes=self._tooth_classes,
                    score_threshold=self._score_threshold,
                    iou_threshold=self._iou_threshold,
                    min_overlap=self._min_overlap,
                )
            log_class_table(evaluation)
            self._results[task] = evaluation.flat_results()
            self._evaluations[task] = evaluation

    def _count_masks_from_peak(self, results: list[dict]) -> dict[str, int]:
        """Class name -> detections whose outline came from half their peak probability."""
        names = {c: self._coco_api.cats[c]["name"] for c in self._category_ids}
        counts = {name: 0 for name in names.values()}
        for result in results:
            if result.get(MASK_FROM_PEAK):
                counts[names[result["category_id"]]] += 1
        if any(counts.values()):
            logger.warning(
                f"{sum(counts.values())} of {len(results)} detections ("
                + ", ".join(f"{name} {n}" for name, n in counts.items() if n)
                + ") had no pixel at mask probability >= 0.5; each is outlined where its "
                "probability is at least half its peak (mask_from_peak in "
                "coco_instances_results.json)"
            )
        return counts

    def _has_teeth(self) -> bool:
        return any(
            is_tooth_class(name, self._tooth_classes) for name in self._metadata.thing_classes
        )

    def _write_outputs(self, output_dir: str):
        if not getattr(self, "_evaluations", None):
            return
        write_outputs(
            output_dir,
            self._evaluations,
            self._coco_api,
            title=self._dataset_name,
            draw_images=self._draw_images,
            thing_colors=self._metadata.get("thing_colors", None),
            num_images=self._num_report_images,
            provenance=self._provenance,
        )
