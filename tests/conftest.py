"""Shared fixtures: tiny Roboflow-style exports written to tmp_path, and the shared real export."""

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dental_d2 import cli

REPO_ROOT = Path(__file__).resolve().parents[1]
# A real Roboflow "COCO Segmentation" export (see ../shared/README.md).
CALCULUS_ROOT = REPO_ROOT.parent / "shared" / "datasets" / "calculus-segment-v10"
# Real intraoral photos with the project's four classes, as a Roboflow-style COCO export.
DENTALAI_ROOT = REPO_ROOT.parent / "shared" / "datasets" / "dentalai"
ANNOTATION_FILE = "_annotations.coco.json"
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
# Set on a GPU machine (benchmarks/gpu_check.sh does): `cuda` tests must run, never skip.
REQUIRE_CUDA_ENV = "DENTAL_D2_REQUIRE_CUDA"


def pytest_collection_modifyitems(config, items):
    """Skips the `cuda` tests, saying why, where CUDA is not available; where it is, they run.

    With DENTAL_D2_REQUIRE_CUDA=1 a missing CUDA stops the run instead: on a machine lent for
    the GPU tier, a skip would hide that torch was installed without CUDA.
    """
    cuda_tests = [item for item in items if item.get_closest_marker("cuda")]
    if not cuda_tests or torch.cuda.is_available():
        return
    if os.environ.get(REQUIRE_CUDA_ENV) == "1":
        raise pytest.UsageError(
            f"{REQUIRE_CUDA_ENV}=1 but torch.cuda.is_available() is False (torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda}): check nvidia-smi, "
            "CUDA_VISIBLE_DEVICES and that torch is a CUDA build"
        )
    skip = pytest.mark.skip(
        reason="needs a CUDA GPU (torch.cuda.is_available() is False); `make test-gpu` runs "
        "this tier on a GPU machine"
    )
    for item in cuda_tests:
        item.add_marker(skip)


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


@pytest.fixture
def make_export(tmp_path):
    """Factory: make_export(splits=("train",), coco=None) -> root of a tiny export."""

    def make(splits=("train",), coco=None, name="export") -> Path:
        root = tmp_path / name
        for split in splits:
            write_split(root, split, coco if coco is not None else tiny_coco())
        return root

    return make


@pytest.fixture
def coco() -> dict:
    """A fresh `tiny_coco()` for a test to break before passing it to `make_export`."""
    return tiny_coco()


def _shared_dataset(root: Path) -> Path:
    """A shared real export. CI always has ../shared, so there its absence fails; a checkout
    without it elsewhere skips the test."""
    if not root.is_dir():
        message = f"shared dataset not found at {root} (needs ../shared beside the repo)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return root


@pytest.fixture
def calculus_root() -> Path:
    """The shared real Roboflow export (see `_shared_dataset`)."""
    return _shared_dataset(CALCULUS_ROOT)


@pytest.fixture
def dentalai_root() -> Path:
    """The shared DentalAI export, COCO with four classes (see `_shared_dataset`)."""
    return _shared_dataset(DENTALAI_ROOT)


@pytest.fixture
def load_tool(monkeypatch):
    """Factory: load_tool(name, folder="tools") -> <folder>/<name>.py as a fresh module, for
    calling its `main(argv)` in-process. The one way tests load a script.

    Its logging set-up (`setup_logger`, `dental_d2.cli.setup_tool_logging`) is made a no-op: a
    handler bound to one test's captured stderr would be closed in later tests. A script outside
    tools/ (benchmarks/) imports modules beside it, so its folder goes on sys.path for the test,
    as it is when the script runs.
    """

    def load(name: str, folder: str = "tools"):
        if folder != "tools":
            monkeypatch.syspath_prepend(str(REPO_ROOT / folder))
        path = REPO_ROOT / folder / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"{name}_tool", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for setup in ("setup_logger", "setup_tool_logging"):
            if hasattr(module, setup):
                monkeypatch.setattr(module, setup, lambda *args, **kwargs: None)
        # Tools that run through `cli.run_tool` set up logging there.
        monkeypatch.setattr(cli, "setup_tool_logging", lambda *args, **kwargs: None)
        return module

    return load


@pytest.fixture
def restore_loggers():
    """For tests that call a tool's main() in-process: its setup_logger adds handlers bound to
    this test's captured stdout, which later tests would log into after it is closed."""
    import logging

    from detectron2.utils.logger import setup_logger

    names = ("detectron2", "dental_d2", "d2")
    before = {name: list(logging.getLogger(name).handlers) for name in names}
    yield
    for name in names:
        logging.getLogger(name).handlers = before[name]
    setup_logger.cache_clear()


@pytest.fixture
def count_cross_class_ious(monkeypatch):
    """Call it to count the IoU rows the matcher computes itself (the cross-class pass) and to
    refuse a second COCOeval from then on; it returns the list the counts go to."""
    from dental_d2.evaluation import matching

    def install() -> list[int]:
        rows, real = [], matching.pairwise_ious

        def counting_ious(coco_gt, predictions, gt_annotations, iou_type):
            rows.append(len(predictions))
            return real(coco_gt, predictions, gt_annotations, iou_type)

        def no_second_coco_eval(*args):
            raise AssertionError("COCOeval ran a second time")

        monkeypatch.setattr(matching, "pairwise_ious", counting_ious)
        monkeypatch.setattr(matching, "run_coco_eval", no_second_coco_eval)
        return rows

    return install
