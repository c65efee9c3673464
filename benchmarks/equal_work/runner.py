"""The benchmark bench_runtimes.py runs: every runtime at equal work, one table, one JSON."""

import logging
import os
import platform

import numpy as np
import torch
from tabulate import tabulate
from tqdm import tqdm

from dental_d2.config import DEFAULT_SCORE_THRESHOLD, build_config
from dental_d2.data import read_image
from dental_d2.data.image_files import collect_images
from dental_d2.data.synthetic import make_synthetic_image
from dental_d2.errors import DentalError
from dental_d2.export import export_model
from dental_d2.file_io import write_json

from .inference import measure_dental, measure_torchvision, run_isolated, torch_threads
from .models import EQUAL_WORK_OPTS, equal_work_config, write_equal_work_checkpoint
from .stages import format_stages, measure_stages
from .training import measure_dental_training, measure_torchvision_training

logger = logging.getLogger(__name__)

# What can be measured, in table order.
TARGETS = ("pytorch", "onnxruntime", "torchvision_v1", "torchvision_v2", "training")
# The comparison the speed target is stated against.
REFERENCE = "torchvision maskrcnn_resnet50_fpn_v2"
# The rows of a trained model (--weights) at its own score threshold.
AS_TRAINED = "as trained:"


def load_images(images_dir: str | None, count: int, size: int) -> list[np.ndarray]:
    """`count` BGR images: the first of `images_dir`, repeated if it has fewer, or synthetic
    dental photos of `size` px.
    """
    if not images_dir:
        rng = np.random.default_rng(0)
        return [np.ascontiguousarray(make_synthetic_image(rng, size)[0][:, :, ::-1])] * count
    paths, _ = collect_images([images_dir])
    if not paths:
        raise DentalError(f"{images_dir}: no images found; pass --images a folder of photos")
    images = [read_image(path, format="BGR") for path in sorted(paths)[:count]]
    return [images[i % len(images)] for i in range(count)]


def machine() -> dict:
    """What the numbers were measured on, with the load other processes put on it."""
    model = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        model = names[0] if names else model
    import onnxruntime

    return {
        "cpu": model,
        "cpu_count": os.cpu_count(),
        "torch_threads": run_isolated(torch_threads),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _export_onnx(cfg, weights: str, folder: str) -> str:
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = weights
    return export_model(cfg, folder)


def _export_int8(cfg, weights: str, folder: str, calibration: str) -> str:
    from dental_d2.export.quantize import export_int8
    from dental_d2.runtime import Backend

    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = weights
    return export_int8(cfg, folder, calibration, Backend(cfg).model_input)


def _dental_weights(spec: dict, cfg, equal_work_weights: str, workdir: str, exports: dict) -> dict:
    """The spec with the weights its row runs: the equal-work or trained `.pth`, or its ONNX
    (int8 when the spec has `calibration`), exported once per run into `exports` (kind -> path).
    """
    trained = spec.get("trained")
    weights = trained or equal_work_weights
    if spec["config_file"] is not None:
        return {**spec, "weights": weights}
    if trained:
        # Exported at the threshold the eager row runs, so both keep the same detections.
        cfg = build_config(spec["trained_config"], [*spec["trained_opts"], "MODEL.DEVICE", "cpu"])
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = spec["confidence"]
    kind = "trained_onnx" if trained else "equal_work_onnx"
    if spec.get("calibration"):
        kind += "_int8"
    if kind not in exports:
        folder = os.path.join(workdir, kind)
        if spec.get("calibration"):
            exports[kind] = run_isolated(_export_int8, cfg, weights, folder, spec["calibration"])
        else:
            exports[kind] = run_isolated(_export_onnx, cfg, weights, folder)
    return {**spec, "weights": exports[kind]}


def _jobs(config_file, opts, cfg, options: dict) -> list[tuple[str, object, dict]]:
    """(row name, measuring function, spec) per measurement, in table order."""
    device, targets = options["device"], options["targets"]
    common = {
        "device": device,
        "batches": sorted({1, max(1, cfg.TEST.IMS_PER_BATCH)}),
        "repeats": options["repeats"],
        "count_gmac": True,
    }
    dental = {**common, "config_file": config_file, "opts": [*opts, *EQUAL_WORK_OPTS]}
    jobs = []
    if "pytorch" in targets:
        jobs.append(("dental_d2 PyTorch eager", measure_dental, dental))
    if "onnxruntime" in targets:
        onnx = {**dental, "config_file": None, "opts": [], "count_gmac": False}
        jobs.append(("dental_d2 ONNX Runtime", measure_dental, onnx))
    if options.get("weights"):
        # The trained model with its own threshold: the work it does on these photos.
        trained = {**dental, "opts": list(opts), "trained": options["weights"],
                   "confidence": options["confidence"]}  # fmt: skip
        if "pytorch" in targets:
            jobs.append((f"{AS_TRAINED} PyTorch eager", measure_dental, trained))
        if "onnxruntime" in targets:
            onnx = {**trained, "config_file": None, "opts": [], "count_gmac": False,
                    "trained_config": config_file, "trained_opts": list(opts)}  # fmt: skip
            jobs.append((f"{AS_TRAINED} ONNX Runtime", measure_dental, onnx))
            if options.get("calibration"):
                int8 = {**onnx, "calibration": options["calibration"]}
                jobs.append((f"{AS_TRAINED} ONNX Runtime int8", measure_dental, int8))
    for variant, suffix in (("v1", ""), ("v2", "_v2")):
        if f"torchvision_{variant}" in targets:
            spec = {**common, "cfg": cfg, "variant": variant}
            jobs.append((f"torchvision maskrcnn_resnet50_fpn{suffix}", measure_torchvision, spec))
    if "training" in targets:
        train = {"cfg": cfg, "device": device, "iters": options["train_iters"]}
        jobs.append(("train: dental_d2 SimpleTrainer step", measure_dental_training, train))
        jobs.append(("train: torchvision plain step", measure_torchvision_training, train))
    return jobs


def _row(name: str, result: dict, row: dict) -> dict:
    gmac = result.get("gmac")
    return {
        "name": name,
        "runtime": result.get("runtime"),
        **row,
        "gmac_per_image": round(gmac, 1) if gmac else None,
        "gflops_per_s": round(2 * gmac * row["batch"] / row["median_s"], 1) if gmac else None,
        "peak_rss_mib": result["peak_rss_mib"],
        "gpu_peak_mib": result.get("gpu_peak_mib"),
        "proposals": result.get("proposals"),
        "detections": result.get("detections"),
    }


def run_benchmark(config_file: str, opts, output_json: str, **options) -> dict:
    """Measures inference and training of a dental config against torchvision at equal work.

    Args:
        config_file (str): a dental config (sizes, classes, batch sizes, solver).
        opts (Sequence[str]): KEY VALUE overrides.
        output_json (str): where the results are written (atomically).
        **options: `device` ("cpu"), `images` (a folder, or None for synthetic photos),
            `repeats` (5), `train_iters` (3), `targets` (a subset of `TARGETS`), `workdir`
            (for the equal-work checkpoint and the ONNX exports), `weights` (a trained `.pth`
            timed too, as trained, at score >= `confidence`, 0.5).

    Returns:
        dict: `machine`, `settings` and `rows` (one per runtime and batch size).
    """
    options = {"device": "cpu", "images": None, "repeats": 5, "train_iters": 3,
               "targets": TARGETS, "weights": None, "confidence": DEFAULT_SCORE_THRESHOLD,
               "workdir": os.path.dirname(os.path.abspath(output_json)), **options}  # fmt: skip
    if options["device"].startswith("cuda") and not torch.cuda.is_available():
        raise DentalError("--device cuda but CUDA is not available; use --device cpu")
    cfg = equal_work_config(config_file, opts)
    cfg.MODEL.DEVICE = options["device"]
    cfg.freeze()
    settings = {
        **options,
        "config_file": config_file,
        "opts": list(opts),
        "image_size": [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST],
        "train_size": cfg.INPUT.MIN_SIZE_TRAIN[0],
        "train_batch": cfg.SOLVER.IMS_PER_BATCH,
    }
    # The ONNX files exported for the rows, by kind: `run_stages` times the same files.
    report = {"machine": machine(), "settings": settings, "exports": {}, "rows": []}
    images = load_images(options["images"], max(1, cfg.TEST.IMS_PER_BATCH), cfg.INPUT.MIN_SIZE_TEST)
    # Every torch op runs in a child, so that the memory and caches of one are not another's.
    weights = run_isolated(
        write_equal_work_checkpoint, cfg, os.path.join(options["workdir"], "equal_work.pth")
    )
    for name, function, spec in tqdm(_jobs(config_file, opts, cfg, options), desc="benchmark"):
        if function is measure_dental:
            spec = _dental_weights(spec, cfg, weights, options["workdir"], report["exports"])
        logger.info("measuring %s", name)
        training = function in (measure_dental_training, measure_torchvision_training)
        try:
            result = run_isolated(function, spec, None if training else images)
        except FloatingPointError as e:  # a from-scratch model whose losses left the floats
            logger.warning("%s: not measured: %s", name, e)
            continue
        if function is measure_dental and spec["config_file"] is None:
            # ONNX Runtime runs the eager model's traced graph: the same multiply-adds.
            eager = name.removesuffix(" int8").replace("ONNX Runtime", "PyTorch eager")
            result["gmac"] = next(
                (r["gmac_per_image"] for r in report["rows"] if r["name"] == eager), None
            )
        report["rows"] = _compare(report["rows"] + [_row(name, result, r) for r in result["rows"]])
        write_json(output_json, report, indent=2)  # what is measured survives an interruption
    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["settings"]["targets"] = list(options["targets"])
    write_json(output_json, report, indent=2)
    return report


def run_stages(config_file: str, opts, output_json: str, **options) -> dict:
    """Milliseconds per photo in each stage of a trained model (`stages.STAGES`): eager, ONNX
    Runtime float and, with `calibration`, int8; each path in its own process.

    Args:
        config_file (str): the model's config.
        opts (Sequence[str]): KEY VALUE overrides.
        output_json (str): the stage report is written beside it, `<name>.stages.json`.
        **options: `weights` (the trained `.pth`), `images` (a folder of photos), `photos`
            (how many of them, 8), `repeats`, `confidence`, `calibration` (a folder of training
            photos, for the int8 path), `workdir`, `exports` (the `exports` of a
            `run_benchmark` report on the same model: its files are timed, not exported again).

    Returns:
        dict: `machine`, `settings` and `columns` (path name -> `measure_stages` result).
    """
    options = {"photos": 8, "repeats": 3, "confidence": DEFAULT_SCORE_THRESHOLD,
               "calibration": None, "exports": {},
               "workdir": os.path.dirname(os.path.abspath(output_json)), **options}  # fmt: skip
    if not options.get("weights") or not options.get("images"):
        raise DentalError("--stages needs --weights (a trained model) and --images (its photos)")
    paths, _ = collect_images([options["images"]])
    paths = sorted(paths)[: options["photos"]]
    cfg = build_config(config_file, [*opts, "MODEL.DEVICE", "cpu"])
    trained = {"config_file": config_file, "opts": list(opts), "weights": options["weights"],
               "confidence": options["confidence"], "repeats": options["repeats"]}  # fmt: skip
    exported = {**trained, "config_file": None, "opts": [], "trained": options["weights"],
                "trained_config": config_file, "trained_opts": list(opts)}  # fmt: skip
    specs = {"PyTorch eager": trained, "ONNX Runtime": exported}
    if options["calibration"]:
        specs["ONNX Runtime int8"] = {**exported, "calibration": options["calibration"]}
    report = {"machine": machine(), "settings": {**options, "config_file": config_file,
              "opts": list(opts), "image_size": [cfg.INPUT.MIN_SIZE_TEST,
              cfg.INPUT.MAX_SIZE_TEST], "photo_files": paths}, "columns": {}}  # fmt: skip
    for name, spec in tqdm(specs.items(), desc="stages"):
        if spec["config_file"] is None:
            spec = _dental_weights(spec, cfg, "", options["workdir"], options["exports"])
        report["columns"][name] = run_isolated(measure_stages, spec, paths)
    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    write_json(os.path.splitext(output_json)[0] + ".stages.json", report, indent=2)
    return report


def format_stage_report(report: dict) -> str:
    """The stage table with the photos, size and load it was measured at."""
    m, s = report["machine"], report["settings"]
    header = (
        f"{s['config_file']} as trained (score >= {s['confidence']}), {len(s['photo_files'])} "
        f"photos of {s['images']} at {s['image_size'][0]} px, mean of {s['repeats']} passes "
        f"after a warm-up ({m['cpu']}, {m['cpu_count']} cores, load "
        f"{m['load_average_at_start'][0]} -> {m['load_average_at_end'][0]})"
    )
    return header + "\n" + format_stages(report["columns"])


def _compare(rows: list[dict]) -> list[dict]:
    """Adds each inference row's latency per image relative to torchvision v2 at its batch."""
    reference = {r["batch"]: r["median_s"] for r in rows if r["name"] == REFERENCE}
    for row in rows:
        base = reference.get(row["batch"]) if not row["name"].startswith("train") else None
        row["x_torchvision_v2"] = round(row["median_s"] / base, 2) if base else None
    return rows


def format_table(report: dict) -> str:
    """The benchmark's rows as one text table, with the machine it ran on."""
    columns = [
        ("name", "what"), ("batch", "batch"), ("median_s", "median s"), ("p90_s", "p90 s"),
        ("images_per_s", "img/s"), ("x_torchvision_v2", "x tv v2"), ("gmac_per_image", "GMAC/img"),
        ("gflops_per_s", "GFLOP/s"), ("peak_rss_mib", "peak RSS MiB"),
        ("gpu_peak_mib", "GPU MiB"), ("proposals", "proposals"), ("detections", "dets"),
    ]  # fmt: skip
    if not any(row.get("gpu_peak_mib") for row in report["rows"]):
        columns = [c for c in columns if c[0] != "gpu_peak_mib"]
    table = [[row.get(key) for key, _ in columns] for row in report["rows"]]
    m, s = report["machine"], report["settings"]
    header = (
        f"{s['config_file']} at {s['image_size'][0]} px on {s['device']} ({m['cpu']}, "
        f"{m['cpu_count']} cores, {m['torch_threads']} torch threads, load "
        f"{m['load_average_at_start'][0]} -> {m['load_average_at_end'][0]}); training at "
        f"{s['train_size']} px, {s['train_batch']} images per step"
    )
    body = tabulate(table, headers=[h for _, h in columns], tablefmt="github", missingval="")
    return header + "\n" + body
