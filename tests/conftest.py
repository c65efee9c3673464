"""The tests' fixtures. Plain helpers and constants are in support.py, which tests import."""

import importlib.util
import os
from pathlib import Path

import pytest
import torch
from support import (
    CALCULUS_ROOT,
    LONGEST_FIRST,
    REPO_ROOT,
    REQUIRE_CUDA_ENV,
    TEST_THREADS,
    chromium,
    shared_dataset,
    tiny_coco,
    write_split,
)

from dental_d2 import cli


def pytest_configure(config):
    """This process and the tools its tests start get `TEST_THREADS` intra-op threads."""
    os.environ["OMP_NUM_THREADS"] = str(TEST_THREADS)
    torch.set_num_threads(TEST_THREADS)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Runs after pytest's own ordering of the items (which keeps each file's tests together)."""
    _skip_cuda_tests(items)
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
    # A stable sort: the order within each file is kept.
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def _skip_cuda_tests(items):
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


@pytest.fixture
def calculus_root():
    """The shared real Roboflow export with its quirks (see `support.shared_dataset`)."""
    return shared_dataset(CALCULUS_ROOT)


@pytest.fixture(scope="module")
def browser():
    """Headless chromium for a test module's pages (see `support.chromium`)."""
    with chromium() as browser:
        yield browser


@pytest.fixture
def dataset_name(request):
    """A dataset-name prefix unique to the test, removed from detectron2's catalogs after it."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    prefix = f"t_{request.node.name}"[:60]
    yield prefix
    for split in ("train", "valid", "test"):
        for catalog in (DatasetCatalog, MetadataCatalog):
            if f"{prefix}_{split}" in catalog.list():
                catalog.remove(f"{prefix}_{split}")


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
