"""What the tests share that is not a fixture: paths, configs, tiny exports, error and picture
checks. Test modules import it (`from support import ...`); fixtures live in conftest.py, which
pytest finds by itself and no test imports."""

import contextlib
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
# A real Roboflow "COCO Segmentation" export (see ../shared/README.md).
CALCULUS_ROOT = REPO_ROOT.parent / "shared" / "datasets" / "calculus-segment-v10"
# 110 real DentalAI photos with the project's four classes, kept in git: tests that need real
# photos or a real four-class export read them and never skip.
DENTALAI_DEMO = REPO_ROOT / "datasets" / "dentalai_demo"
ANNOTATION_FILE = "_annotations.coco.json"
# tools/train_net.py, for tests that train in a process of their own.
TRAIN_NET = str(REPO_ROOT / "tools" / "train_net.py")
# The smallest config that trains: tests of a training run's mechanics, seconds per run.
INSTANT_CONFIG = str(REPO_ROOT / "configs" / "quick_schedules" / "dental_instant_test.yaml")
# The demo config: a small CPU model that tests build with random weights or train briefly.
DEMO_CONFIG = str(REPO_ROOT / "configs" / "quick_schedules" / "dental_demo_cpu.yaml")
# The project's four classes, in the order of DENTAL.CLASS_NAMES in the configs.
CLASSES = ["Caries", "Cavity", "Crack", "Tooth"]
# The demo model with random weights on CPU at 128 px (192 at most): seconds per photo.
RANDOM_DEMO_MODEL = [
    "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
    "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192",
]  # fmt: skip
# A training run without evaluation, pictures or validation loss: for tests of the run itself.
NO_EVAL = [
    "DENTAL.LOG_PERIOD", "1", "DENTAL.EVAL.NUM_VIS_IMAGES", "0", "DATASETS.TEST", "()",
    "TEST.EVAL_PERIOD", "0", "TEST.VALIDATION_LOSS", "False", "DATASETS.VALIDATION", "()",
]  # fmt: skip
# The demo model's photos at 96 px and batches of 2: for tools that run a model end to end.
TINY_INPUT = [
    "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "96", "INPUT.MIN_SIZE_TRAIN", "(96,)",
    "INPUT.MAX_SIZE_TRAIN", "96", "SOLVER.IMS_PER_BATCH", "2", "TEST.IMS_PER_BATCH", "2",
]  # fmt: skip
# Export parity (`assert_same_detections`): the demo model at 160 px with random weights, seconds
# on a CPU. At a score threshold of 0.05 it keeps its 50 detections per image (scores near 1/5),
# each with a mask of its own.
PARITY_SIZE = ["INPUT.MIN_SIZE_TEST", "160", "INPUT.MAX_SIZE_TEST", "160"]
PARITY_SCORE = 0.05
# Debian's chromium (`make browser` installs it), driven by Playwright; Playwright's own browser
# download is never used. Flags for a sandbox-less container without a GPU or network.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Set on a GPU machine (benchmarks/gpu_check.sh does): `cuda` tests must run, never skip.
REQUIRE_CUDA_ENV = "DENTAL_D2_REQUIRE_CUDA"
# Intra-op threads for each test process. `make test` runs one pytest worker per core
# (pytest-xdist, which sets PYTEST_XDIST_WORKER_COUNT): each worker, and every tool it starts
# as a process (conftest.py sets OMP_NUM_THREADS), gets its share, so that two workers never
# run four threads on two cores. A plain `pytest` gets every core.
TEST_THREADS = max(
    1, len(os.sched_getaffinity(0)) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
)
# The test files that take longest (45 s to two minutes each on one worker of the idle 2-core
# box), longest first. `make test` runs each file whole on one pytest worker, taking files in
# collection order (`--no-loadscope-reorder`); starting the long files first lets the short
# ones fill in behind them, so the workers finish together instead of one running a long file
# alone at the end. conftest.py moves them to the front; a file not named here keeps its place
# after them.
LONGEST_FIRST = (
    "test_train_net.py",
    "test_reliability.py",
    "test_benchmark.py",
    "test_cluster.py",
    "test_int8.py",
    "test_cross_validation.py",
)


def tiny_coco(num_images: int = 3, height: int = 48, width: int = 64) -> dict:
    """A Roboflow-like COCO dict: superclass id 0, classes 1 "Caries" and 2 "Tooth".

    Image i is `img{i}.jpg`; every image but the last has a Tooth and a Caries polygon, the last
    has no annotations.
    """
    categories = [
        {"id": 0, "name": "lesions", "supercategory": "none"},
        {"id": 1, "name": "Caries", "supercategory": "lesions"},
        {"id": 2, "name": "Tooth", "supercategory": "lesions"},
    ]
    images, annotations = [], []
    for i in range(num_images):
        images.append({"id": i, "file_name": f"img{i}.jpg", "height": height, "width": width})
        if i == num_images - 1:
            continue
        for category_id, (x0, y0, x1, y1) in ((2, (4, 4, 40, 40)), (1, (10, 10, 20, 22))):
            annotations.append(
                {
                    "id": len(annotations),
                    "image_id": i,
                    "category_id": category_id,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": float((x1 - x0) * (y1 - y0)),
                    "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
                    "iscrowd": 0,
                }
            )
    return {"info": {}, "licenses": [], "categories": categories, "images": images,
            "annotations": annotations}  # fmt: skip


def write_split(root: Path, split: str, coco: dict) -> Path:
    """Writes `coco` and a random image per image record into root/split; returns the JSON."""
    folder = Path(root) / split
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for image in coco["images"]:
        pixels = rng.integers(0, 256, (image["height"], image["width"], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / image["file_name"])
    json_file = folder / ANNOTATION_FILE
    json_file.write_text(json.dumps(coco))
    return json_file


def tool_error_lines(err: str) -> list[str]:
    """A tool's own lines on stderr (those starting "error:"). In-process runs of a tool after
    another test's may also show logging's complaints about a handler that detectron2's
    (cached) setup_logger left on that test's closed capture stream; a real run has none."""
    return [line for line in err.splitlines() if line.startswith("error:")]


def colour_pixels(png: Path, rgb) -> int:
    """How many pixels of the image file `png` have the colour `rgb` (0-255, +-3 per channel)."""
    pixels = np.asarray(Image.open(png).convert("RGB"), dtype=int)
    return int((np.abs(pixels - np.asarray(rgb)).max(axis=-1) <= 3).sum())


def assert_pr_curves_plot(png: Path, num_classes: int) -> None:
    """A PR-curve figure (`plot_pr_curves`) in the class colours, matplotlib's cycle C0, C1, ...
    in class order: each colour in the legend (its line sample is about 50 pixels), and curves
    drawn beyond it. Equal curves cover each other, so not every class's curve need show."""
    from matplotlib.colors import to_rgb

    with Image.open(png) as image:
        assert image.format == "PNG" and min(image.size) > 300, image.size
    counts = [
        colour_pixels(png, [round(255 * c) for c in to_rgb(f"C{k}")]) for k in range(num_classes)
    ]
    assert min(counts) >= 30, f"{png}: a class colour is missing: {counts} pixels"
    assert sum(counts) > 60 * num_classes + 500, f"{png}: no curves, {counts} pixels"


def assert_confusion_matrix_plot(png: Path, counts) -> None:
    """A confusion-matrix figure (`plot_confusion_matrix`) whose cells are shaded by the share of
    their row in `counts`: each share's "Blues" colour covers at least a cell (the colour bar
    alone holds a few rows of pixels of each)."""
    from matplotlib import colormaps

    with Image.open(png) as image:
        assert image.format == "PNG" and min(image.size) > 200, image.size
    counts = np.asarray(counts, dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    cells = {float(share): int((shares == share).sum()) for share in np.unique(shares)}
    for share, number in cells.items():
        rgb = [round(255 * c) for c in colormaps["Blues"](share)[:3]]
        assert colour_pixels(png, rgb) > 2000 * number, f"{png}: no cell of share {share:.2f}"


def require(condition: bool, message: str) -> None:
    """Skips the test on a developer machine that lacks what it needs (../shared, chromium,
    openssl); fails it in CI, where everything must be present."""
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI must have it)")
        pytest.skip(message)


def shared_dataset(root: Path) -> Path:
    """A shared real export (see `require`)."""
    require(root.is_dir(), f"shared dataset not found at {root} (needs ../shared beside the repo)")
    return root


@contextlib.contextmanager
def chromium():
    """Headless `CHROMIUM` launched by Playwright (see `require`); yields the browser."""
    require(shutil.which(CHROMIUM) is not None, f"{CHROMIUM} not installed (`make browser`)")
    if not os.environ.get("CI"):
        pytest.importorskip("playwright.sync_api")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def demo_photos(split: str = "test", count: int = 1) -> list[str]:
    """The first `count` photos (by name) of a split of the in-repository DentalAI demo."""
    return [str(p) for p in sorted((DENTALAI_DEMO / split).glob("*.jpg"))[:count]]


def assert_same_detections(expected, actual):
    """The parity contract: same count and classes, boxes within 1 px, scores within 1e-3,
    mask IoU >= 0.99 per instance."""
    assert len(actual) == len(expected)
    assert actual.pred_classes.tolist() == expected.pred_classes.tolist()
    torch.testing.assert_close(actual.scores, expected.scores, atol=1e-3, rtol=0)
    torch.testing.assert_close(
        actual.pred_boxes.tensor, expected.pred_boxes.tensor, atol=1.0, rtol=0
    )
    intersection = (actual.pred_masks & expected.pred_masks).flatten(1).sum(1)
    union = (actual.pred_masks | expected.pred_masks).flatten(1).sum(1).clamp(min=1)
    iou = intersection / union
    assert bool((iou >= 0.99).all()), iou.min()


class TinyModel(nn.Module):
    """A one-layer model that returns a loss dict, for trainer, hook and checkpoint tests."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(3, 1)

    def forward(self, x):
        return {"loss": self.layer(x).abs().mean()}


class CreatesFile:
    """Unpickling this creates `path`: what a booby-trapped weight file would do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def write_evil_pth(path, marker):
    torch.save({"model": {"weight": torch.zeros(1)}, "payload": CreatesFile(marker)}, path)


def write_pkl(path, state, payload_marker=None):
    data = {"model": {k: v.numpy() for k, v in state.items()}, "__author__": "someone"}
    if payload_marker is not None:
        data["payload"] = CreatesFile(payload_marker)
    with open(path, "wb") as f:
        pickle.dump(data, f)
