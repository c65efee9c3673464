"""Inference latency, throughput, memory and GMAC of one runtime, measured in its own process.

Each `measure_*` function runs in a child process (see `run_isolated`), so its peak RSS is its
own and one runtime's caches cannot speed up or slow down the next.
"""

import concurrent.futures
import logging
import multiprocessing
import resource
import time

import numpy as np
import torch

from .models import OutputCounter, torchvision_inputs, torchvision_maskrcnn

logger = logging.getLogger(__name__)


def run_isolated(function, *args):
    """Runs `function(*args)` in a child process of its own and returns its result.

    Args:
        function: a module-level function (it is named, not pickled, across the fork).
        *args: picklable arguments.
    """
    # A fork server, not a plain fork: a parent that has run torch ops (a test session, a
    # notebook) has an OpenMP pool, and a plain fork of it deadlocks at the first parallel op.
    context = multiprocessing.get_context("forkserver")
    # The server imports these once for every child. It does not see the parent's sys.path
    # (each child does), so only installed modules can be preloaded, not this package.
    context.set_forkserver_preload(["dental_d2.engine.trainer", "dental_d2.predictor"])
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(function, *args).result()


def torch_threads() -> int:
    """PyTorch's intra-op threads (asked in a child: it starts OpenMP, see `run_isolated`)."""
    return torch.get_num_threads()


def memory_mib(device: str) -> dict:
    """Peak resident memory of this process, and peak CUDA memory when on a GPU, in MiB."""
    memory = {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    if device.startswith("cuda"):
        memory["gpu_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return memory


def time_calls(function, repeats: int, device: str) -> list[float]:
    """Seconds per call of `function`, after one warm-up call.

    Args:
        function: called without arguments.
        repeats (int): timed calls.
        device (str): synchronised before each clock reading when CUDA.
    """
    times = []
    for index in range(repeats + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if index:
            times.append(time.perf_counter() - start)
    return times


def latency(times: list[float], batch: int) -> dict:
    """Median and 90th percentile seconds per call, and images per second at the median."""
    median = float(np.median(times))
    return {
        "batch": batch,
        "median_s": round(median, 4),
        "p90_s": round(float(np.percentile(times, 90)), 4),
        "images_per_s": round(batch / median, 3),
        "repeats": len(times),
    }


def dental_gmac(model, model_input: dict) -> float:
    """GMAC of one image through a detectron2 model, counted by fvcore (a MAC is one op)."""
    from detectron2.utils.analysis import FlopCountAnalysis

    analysis = FlopCountAnalysis(model, [model_input])
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return analysis.total() / 1e9


class _TensorOutputs(torch.nn.Module):
    """torchvision's detection output (a list of dicts) as a tuple of tensors, for fvcore."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        output = self.model([image])[0]
        return tuple(output[key] for key in sorted(output))


def torchvision_gmac(model, image: torch.Tensor) -> float:
    """GMAC of one image through a torchvision detection model, counted by fvcore."""
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(_TensorOutputs(model).eval(), (image,))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return analysis.total() / 1e9


def _rows(run_batch, batches, repeats: int, device: str) -> list[dict]:
    return [latency(time_calls(lambda b=b: run_batch(b), repeats, device), b) for b in batches]


def measure_dental(spec: dict, images: list[np.ndarray]) -> dict:
    """Times `Predictor` (PyTorch eager or ONNX Runtime) on `images`.

    Args:
        spec (dict): `config_file`, `weights` (a `.pth` or `.onnx`), `opts`, `device`,
            `batches`, `repeats`, `count_gmac`, and `confidence` (the least score kept, 0).
        images (list[np.ndarray]): BGR uint8, at least max(batches).
    """
    from dental_d2.predictor import Predictor

    torch.set_num_threads(spec.get("threads") or torch.get_num_threads())
    opts = [*spec["opts"], "TEST.IMS_PER_BATCH", str(max(spec["batches"]))]
    predictor = Predictor(
        spec["config_file"],
        spec["weights"],
        opts,
        confidence_threshold=spec.get("confidence", 0.0),
        device=spec["device"],
    )
    counter = predictor.model and OutputCounter(predictor.model.proposal_generator)
    detections = len(predictor.predict(images[0]))
    result = {
        "rows": _rows(
            lambda b: predictor.predict_batch(images[:b]),
            spec["batches"],
            spec["repeats"],
            spec["device"],
        ),
        "detections": detections,
        "proposals": counter.count if counter else None,
        "runtime": predictor.backend.name,
    }
    if spec["count_gmac"] and predictor.model is not None:
        result["gmac"] = dental_gmac(predictor.model, predictor.backend.model_input(images[0]))
    result.update(memory_mib(spec["device"]))
    return result


def measure_torchvision(spec: dict, images: list[np.ndarray]) -> dict:
    """Times torchvision's Mask R-CNN ("v1" or "v2" in `spec["variant"]`) on `images`.

    Args:
        spec (dict): `cfg` (a dental config for sizes and classes), `variant`, `device`,
            `batches`, `repeats`, `count_gmac`.
        images (list[np.ndarray]): BGR uint8, at least max(batches).
    """
    device = spec["device"]
    torch.manual_seed(0)
    model = torchvision_maskrcnn(spec["cfg"], spec["variant"]).eval().to(device)
    counter = OutputCounter(model.rpn)

    def run_batch(batch: int):
        with torch.no_grad():
            return model(torchvision_inputs(images[:batch], device))

    detections = len(run_batch(1)[0]["boxes"])
    result = {
        "rows": _rows(run_batch, spec["batches"], spec["repeats"], device),
        "detections": detections,
        "proposals": counter.count,
        "runtime": "pytorch",
    }
    if spec["count_gmac"]:
        result["gmac"] = torchvision_gmac(model, torchvision_inputs(images[:1], device)[0])
    result.update(memory_mib(device))
    return result
