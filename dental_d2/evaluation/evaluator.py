"""DentalEvaluator: detectron2's COCO AP plus per-class P/R/F1, plots and an HTML report."""

import itertools
import logging
import os
from collections import OrderedDict

import detectron2.utils.comm as comm
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .matching import match_predictions
from .metrics import coco_summary, compute_detection_metrics, per_class_ap, run_coco_eval
from .report import TaskEvaluation, log_class_table, write_outputs

logger = logging.getLogger(__name__)


def evaluate_task(
    coco_gt: COCO,
    results: list[dict],
    iou_type: str,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
    category_ids: list[int] | None = None,
    coco: dict | None = None,
    coco_eval: COCOeval | None = None,
    progress: bool = False,
) -> TaskEvaluation:
    """Matches results to ground truth and computes P/R/F1, the confusion matrix, PR curves and AP.

    Args:
        coco_gt (COCO): the ground truth (crowd annotations are ignored by P/R/F1).
        results (list[dict]): COCO results, category ids as in `coco_gt`.
        iou_type (str): "segm" or "bbox".
        score_threshold (float): predictions scoring below it are not counted.
        iou_threshold (float): the least IoU of a match.
        category_ids (list[int] or None): the classes in report order; by default `coco_gt`'s in
            ascending id order.
        coco (dict or None): COCO AP already computed (detectron2's COCOEvaluator results for the
            task); None runs pycocotools' COCOeval here.
        coco_eval (COCOeval or None): with `coco`, the COCOeval behind it, for per-class AP50;
            None when there were no results.
        progress (bool): show a progress bar while matching.
    """
    if category_ids is None:
        category_ids = sorted(coco_gt.getCatIds())
    names = {c: coco_gt.cats[c]["name"] for c in category_ids}
    if coco is None:
        coco_eval = run_coco_eval(coco_gt, results, iou_type)
        coco = coco_summary(coco_eval, names)
    images = match_predictions(
        coco_gt, results, iou_type, score_threshold, iou_threshold, progress=progress
    )
    metrics = compute_detection_metrics(
        images,
        category_ids,
        [names[c] for c in category_ids],
        iou_type,
        score_threshold,
        iou_threshold,
    )
    return TaskEvaluation(metrics, coco, per_class_ap(coco_eval, category_ids))


class _COCOEvaluatorKeepingEval(COCOEvaluator):
    """COCOEvaluator that keeps each task's COCOeval: per-class AP50 is read from it."""

    def reset(self):
        super().reset()
        self.coco_evals = {}

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        self.coco_evals[iou_type] = coco_eval
        return super()._derive_coco_results(coco_eval, iou_type, class_names=class_names)


class DentalEvaluator(DatasetEvaluator):
    """COCO AP from detectron2's COCOEvaluator, plus per-class TP/FP/FN, precision, recall, F1.

    P/R/F1 count predictions scoring at least `score_threshold`, matched greedily by descending
    score to the still-unmatched ground truth of their class with the highest IoU, if at least
    `iou_threshold` (see `dental_d2.evaluation.matching.match_image`). `evaluate()` returns
    detectron2's {task: {metric: value}} with COCO AP in percent ("AP", "AP50", "AP-<class>", ...)
    and "precision", "recall", "f1", "precision-<class>", ... as fractions. The main process
    writes to `output_dir`: metrics.json, `<task>_pr_curves.png`, `<task>_confusion_matrix.png`,
    report.html, and COCOEvaluator's own files.
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: str,
        tasks: tuple[str, ...] | None = ("bbox", "segm"),
        score_threshold: float = 0.5,
        iou_threshold: float = 0.5,
        distributed: bool = True,
        draw_images: bool = True,
        num_report_images: int = 4,
    ):
        """
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
        """
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._score_threshold = score_threshold
        self._iou_threshold = iou_threshold
        self._distributed = distributed
        self._draw_images = draw_images
        self._num_report_images = num_report_images
        self._metadata = MetadataCatalog.get(dataset_name)
        # Not cached: the cleaned dataset may change between runs with the same output_dir.
        self._coco = _COCOEvaluatorKeepingEval(
            dataset_name,
            tasks=tasks,
            distributed=distributed,
            output_dir=output_dir,
            allow_cached_coco=False,
        )
        id_map = self._metadata.get("thing_dataset_id_to_contiguous_id", None)
        num_classes = len(self._metadata.thing_classes)
        self._contiguous_to_dataset = (
            {v: k for k, v in id_map.items()} if id_map else {k: k for k in range(num_classes)}
        )
        # Report order is the model's class order.
        self._category_ids = [self._contiguous_to_dataset[k] for k in range(num_classes)]

    @classmethod
    def from_config(cls, cfg, dataset_name: str, output_dir: str | None = None):
        """Builds the evaluator from `cfg.DENTAL.EVAL`, `cfg.MODEL.MASK_ON` and `cfg.OUTPUT_DIR`.

        Args:
            cfg (CfgNode): a config with dental_d2's keys.
            dataset_name (str): the registered dataset to evaluate.
            output_dir (str or None): by default `<OUTPUT_DIR>/eval/<dataset_name>`.
        """
        return cls(
            dataset_name,
            output_dir=output_dir or os.path.join(cfg.OUTPUT_DIR, "eval", dataset_name),
            tasks=("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",),
            score_threshold=cfg.DENTAL.EVAL.SCORE_THRESHOLD,
            iou_threshold=cfg.DENTAL.EVAL.IOU_THRESHOLD,
        )

    def reset(self):
        self._coco.reset()

    def process(self, inputs, outputs):
        self._coco.process(inputs, outputs)

    def _gathered_results(self) -> list[dict]:
        predictions = self._coco._predictions
        if self._distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(predictions, dst=0)))
        # Copies: COCOEvaluator maps the category ids of its own dicts in place.
        results = []
        for prediction in predictions:
            for result in prediction.get("instances", []):
                result = dict(result)
                result["category_id"] = self._contiguous_to_dataset[result["category_id"]]
                results.append(result)
        return results

    def evaluate(self):
        # Both gathers are collective: every process takes part before the main one goes on.
        results = self._gathered_results()
        coco_results = self._coco.evaluate()
        if not coco_results or (self._distributed and not comm.is_main_process()):
            return coco_results

        coco_gt = self._coco._coco_api
        evaluations = OrderedDict()
        for task, coco in coco_results.items():
            if task not in ("bbox", "segm"):
                continue
            if task in self._coco.coco_evals:
                coco_eval = self._coco.coco_evals[task]
            else:  # detectron2 changed its internals: compute AP50 per class ourselves
                coco_eval = run_coco_eval(coco_gt, results, task)
            evaluations[task] = evaluate_task(
                coco_gt,
                results,
                task,
                self._score_threshold,
                self._iou_threshold,
                category_ids=self._category_ids,
                coco=coco,
                coco_eval=coco_eval,
            )
            log_class_table(evaluations[task])
            coco_results[task] = evaluations[task].flat_results()

        if comm.is_main_process() and self._output_dir:
            write_outputs(
                self._output_dir,
                evaluations,
                coco_gt,
                title=self._dataset_name,
                draw_images=self._draw_images,
                thing_colors=self._metadata.get("thing_colors", None),
                num_images=self._num_report_images,
            )
        return coco_results
