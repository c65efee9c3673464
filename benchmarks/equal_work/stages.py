"""Where each millisecond of a trained model's prediction goes, stage by stage, on real photos.

Each path runs `Predictor` as a user does, from the photo file to COCO annotations. Eager
stages are timed by forward hooks on the model's modules; inside an ONNX graph, ONNX Runtime's
profiler (`SessionOptions.enable_profiling`) times every node, and nodes are grouped into
stages by the module path in their names (`/backbone/...`, `/roi_heads/mask_head/...`).
"""

import json
import os
import tempfile
import time
from collections import defaultdict

import numpy as np
import torch

# Stages in table order, from the photo file to what a client gets.
STAGES = (
    "read + resize photo",
    "backbone + FPN",
    "RPN",
    "box head",
    "mask head",
    "graph: other nodes and overhead",
    "paste masks into photo",
    "findings + COCO encoding",
)
# Node-name prefixes of the exported graph per stage (the module paths of the traced model).
GRAPH_STAGES = (
    ("/backbone/", "backbone + FPN"),
    ("/proposal_generator/", "RPN"),
    ("/roi_heads/box_", "box head"),
    ("/roi_heads/mask_", "mask head"),
)


class _Clock:
    """Forward hooks that note when each stage of an eager GeneralizedRCNN ends.

    Marks: `start` (model called), `rpn_start` (the backbone has run), `box_start` (the RPN
    has run), `mask_start` (the box head's detections are ready, the mask pooler starts),
    `mask_end` (ROI heads done), `end` (masks pasted).
    """

    def __init__(self, model):
        self.marks = {}
        marks = (
            (model, "start", "end"),
            (model.proposal_generator, "rpn_start", "box_start"),
            (model.roi_heads, None, "mask_end"),
            (model.roi_heads.mask_pooler or model.roi_heads.mask_head, "mask_start", None),
        )
        for module, before, after in marks:
            if before:
                module.register_forward_pre_hook(lambda *_, name=before: self._mark(name))
            if after:
                module.register_forward_hook(lambda *_, name=after: self._mark(name))

    def _mark(self, name: str) -> None:
        self.marks[name] = time.perf_counter()

    def stages(self) -> dict:
        m = self.marks
        return {
            "backbone + FPN": m["rpn_start"] - m["start"],
            "RPN": m["box_start"] - m["rpn_start"],
            "box head": m["mask_start"] - m["box_start"],
            "mask head": m["mask_end"] - m["mask_start"],
            "paste masks into photo": m["end"] - m["mask_end"],
        }


def _client_side(predictor, instances) -> None:
    from dental_d2.coco_format import instances_to_coco_annotations

    predictor.findings(instances)
    instances_to_coco_annotations(instances, image_id=1)


def _eager_photo(predictor, clock: _Clock, path: str) -> dict:
    from dental_d2.data import read_image

    start = time.perf_counter()
    model_input = predictor.backend.model_input(read_image(path, format="BGR"))
    prepared = time.perf_counter()
    (instances,) = predictor.backend.run([model_input])
    ran = time.perf_counter()
    _client_side(predictor, instances)
    times = {"read + resize photo": prepared - start, **clock.stages()}
    # Moving the outputs to the CPU ends the run after the paste: counted with the paste.
    times["paste masks into photo"] += ran - clock.marks["end"]
    times["findings + COCO encoding"] = time.perf_counter() - ran
    return times


def _exported_photo(predictor, path: str) -> dict:
    """Times one photo through an exported model: the graph as one stage, split later."""
    from detectron2.modeling.postprocessing import detector_postprocess

    from dental_d2.data import read_image

    backend = predictor.backend
    start = time.perf_counter()
    record = backend.model_input(read_image(path, format="BGR"))
    prepared = time.perf_counter()
    instances = backend.detections(record["image"])
    graph = time.perf_counter()
    instances = detector_postprocess(instances, record["height"], record["width"])
    pasted = time.perf_counter()
    _client_side(predictor, instances)
    return {
        "read + resize photo": prepared - start,
        "graph": graph - prepared,
        "paste masks into photo": pasted - graph,
        "findings + COCO encoding": time.perf_counter() - pasted,
    }


def graph_shares(profile_json: str) -> dict:
    """Each stage's share of the node time in an ONNX Runtime profile (`GRAPH_STAGES`, the rest
    under "graph: other nodes and overhead")."""
    with open(profile_json) as f:
        events = json.load(f)
    totals = defaultdict(float)
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        stage = next(
            (s for prefix, s in GRAPH_STAGES if event["name"].startswith(prefix)),
            "graph: other nodes and overhead",
        )
        totals[stage] += event["dur"]
    whole = sum(totals.values()) or 1.0
    return {stage: total / whole for stage, total in totals.items()}


def _profile_graph(predictor, model_path: str, threads: int, paths: list[str]) -> dict:
    """Node time shares of the exported graph over `paths`, from ONNX Runtime's profiler."""
    import onnxruntime as ort

    from dental_d2.data import read_image
    from dental_d2.runtime.exported import onnx_session_options

    options = onnx_session_options(threads)
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.gettempdir(), "dental_ort")
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    for path in paths:
        image = predictor.backend.model_input(read_image(path, format="BGR"))["image"]
        session.run(None, {"image": image.numpy()})
    profile = session.end_profiling()
    try:
        return graph_shares(profile)
    finally:
        os.remove(profile)


def measure_stages(spec: dict, paths: list[str]) -> dict:
    """Milliseconds per photo in each of `STAGES`, for one path (eager, ONNX float or int8).

    Args:
        spec (dict): `config_file` (None for an export), `weights`, `opts`, `confidence`,
            `repeats` (timed passes over `paths` after one warm-up pass), `threads`.
        paths (list[str]): photo files.

    Returns:
        dict: `stages` (ms per photo, mean over photos and passes), `total_ms`, `detections`
        (mean per photo), `runtime`.
    """
    from dental_d2.predictor import Predictor

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    predictor = Predictor(
        spec["config_file"], spec["weights"], spec["opts"],
        confidence_threshold=spec["confidence"], device="cpu",
    )  # fmt: skip
    if predictor.model is not None:
        clock = _Clock(predictor.model)
        run_photo = lambda path: _eager_photo(predictor, clock, path)  # noqa: E731
    else:
        run_photo = lambda path: _exported_photo(predictor, path)  # noqa: E731
    samples = defaultdict(list)
    with torch.no_grad():
        for index in range(spec["repeats"] + 1):
            for path in paths:
                times = run_photo(path)
                for stage, seconds in times.items():
                    if index:  # the first pass warms up
                        samples[stage].append(seconds * 1000)
    stages = {stage: float(np.mean(values)) for stage, values in samples.items()}
    if "graph" in stages:
        graph = stages.pop("graph")
        shares = _profile_graph(predictor, spec["weights"], spec.get("threads") or 0, paths)
        for stage, share in shares.items():
            stages[stage] = graph * share
    detections = [len(instances) for instances in predictor.predict_batch(paths)]
    return {
        "stages": stages,
        "total_ms": sum(stages.values()),
        "detections": float(np.mean(detections)),
        "runtime": predictor.backend.name,
    }


def format_stages(columns: dict[str, dict]) -> str:
    """One row per stage, one column per path (ms per photo), and the totals."""
    from tabulate import tabulate

    names = list(columns)
    rows = [
        [stage, *(_ms(columns[name]["stages"].get(stage)) for name in names)] for stage in STAGES
    ]
    rows.append(["total", *(_ms(columns[name]["total_ms"]) for name in names)])
    rows.append(["detections per photo", *(f"{columns[n]['detections']:.1f}" for n in names)])
    return tabulate(rows, headers=["ms per photo", *names], tablefmt="github")


def _ms(value) -> str:
    return "" if value is None else f"{value:.1f}"
