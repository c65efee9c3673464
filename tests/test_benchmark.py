"""benchmarks/bench_runtimes.py (what tools/benchmark.py runs) on the demo model at a tiny size:
every runtime measured at equal work, one table, one JSON."""

import json
from pathlib import Path

import pytest
import torch
from conftest import DEMO_CONFIG as CONFIG

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("restore_loggers")
TINY = [
    "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "96", "INPUT.MIN_SIZE_TRAIN", "(96,)",
    "INPUT.MAX_SIZE_TRAIN", "96", "SOLVER.IMS_PER_BATCH", "2", "TEST.IMS_PER_BATCH", "2",
]  # fmt: skip


@pytest.fixture
def benchmark_tool(load_tool):
    """The benchmark script in-process; its `equal_work` package is importable beside it."""
    return load_tool("bench_runtimes", "benchmarks")


@pytest.mark.slow
def test_benchmark_measures_every_runtime_at_equal_work(tmp_path, capsys, benchmark_tool):
    output = tmp_path / "bench.json"
    code = benchmark_tool.main(
        ["--config-file", CONFIG, "--output", str(output), "--repeats", "1", "--train-iters", "1",
         "--only", "pytorch,onnxruntime,torchvision_v1,training", *TINY]
    )  # fmt: skip
    assert code == 0
    report = json.loads(output.read_text())
    rows = {(row["name"], row["batch"]): row for row in report["rows"]}
    inference = ["dental_d2 PyTorch eager", "dental_d2 ONNX Runtime",
                 "torchvision maskrcnn_resnet50_fpn"]  # fmt: skip
    for name in inference:
        for batch in (1, 2):
            row = rows[name, batch]
            # Zeroed regressors and thresholds at 0: every model keeps its 100 detections.
            assert row["detections"] == 100
            assert row["median_s"] > 0 and row["images_per_s"] == pytest.approx(
                batch / row["median_s"], rel=0.01
            )
            assert row["peak_rss_mib"] > 100
    eager, torchvision = rows[inference[0], 1], rows[inference[2], 1]
    assert rows[inference[1], 1]["gmac_per_image"] == eager["gmac_per_image"]  # the same graph
    assert eager["proposals"] == 1000
    assert 0 < eager["gmac_per_image"] < torchvision["gmac_per_image"]  # R18 vs R50
    assert eager["gflops_per_s"] == pytest.approx(
        2 * eager["gmac_per_image"] / eager["median_s"], rel=0.05
    )
    for name in ("train: dental_d2 SimpleTrainer step", "train: torchvision plain step"):
        assert rows[name, 2]["images_per_s"] > 0
    table = capsys.readouterr().out
    assert all(name in table for name, _ in rows) and report["machine"]["cpu_count"] >= 1


@pytest.mark.slow
def test_a_trained_model_is_timed_as_trained_eager_and_in_onnx_runtime(tmp_path, benchmark_tool):
    """--weights adds the model's own rows: its config's proposals and detection limit at its
    threshold, not the equal work's 1000 and 100, the same detections in both runtimes."""
    from equal_work.models import equal_work_config, write_equal_work_checkpoint

    from dental_d2.config import build_config

    weights = write_equal_work_checkpoint(equal_work_config(CONFIG, TINY), str(tmp_path / "m.pth"))
    output = tmp_path / "bench.json"
    code = benchmark_tool.main(
        ["--config-file", CONFIG, "--output", str(output), "--repeats", "1",
         "--only", "pytorch,onnxruntime", "--weights", weights, "--confidence-threshold", "0",
         *TINY]
    )  # fmt: skip
    assert code == 0
    rows = {(row["name"], row["batch"]): row for row in json.loads(output.read_text())["rows"]}
    demo = build_config(CONFIG, TINY)
    eager, onnx = rows["as trained: PyTorch eager", 1], rows["as trained: ONNX Runtime", 1]
    assert eager["proposals"] == demo.MODEL.RPN.POST_NMS_TOPK_TEST < 1000
    assert eager["detections"] == onnx["detections"] == demo.TEST.DETECTIONS_PER_IMAGE < 100
    assert rows["dental_d2 PyTorch eager", 1]["detections"] == 100
    assert onnx["runtime"] == "onnxruntime" and onnx["gmac_per_image"] == eager["gmac_per_image"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the error without CUDA")
def test_benchmark_on_cuda_without_a_gpu_is_a_one_line_error(tmp_path, capsys, benchmark_tool):
    code = benchmark_tool.main(
        ["--config-file", CONFIG, "--device", "cuda", "--output", str(tmp_path / "b.json")]
    )
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "CUDA" in err and "\n" not in err


@pytest.mark.slow
def test_benchmark_names_an_empty_image_folder(tmp_path, capsys, benchmark_tool):
    (tmp_path / "empty").mkdir()
    code = benchmark_tool.main(
        ["--config-file", CONFIG, "--images", str(tmp_path / "empty"),
         "--output", str(tmp_path / "b.json"), *TINY]
    )  # fmt: skip
    assert code == 1
    assert "empty" in capsys.readouterr().err


@pytest.mark.slow
def test_training_step_of_a_from_scratch_r50_is_measured(benchmark_tool):
    """The reference R50 (frozen BN, no COCO weights here) has losses in the hundreds at
    random init, and one step at the config's LR sends it to NaN. At LR 0 the step does all its
    work and stays finite, so the R50 training row is measured."""
    from equal_work.models import equal_work_config
    from equal_work.training import measure_dental_training

    cfg = equal_work_config(
        str(ROOT / "configs" / "dental_r50.yaml"),
        ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
         "SOLVER.IMS_PER_BATCH", "1"],
    )  # fmt: skip
    result = measure_dental_training({"cfg": cfg, "device": "cpu", "iters": 3})
    (row,) = result["rows"]
    assert row["batch"] == 1 and row["median_s"] > 0


@pytest.mark.slow
def test_tools_benchmark_runs_the_benchmark_script(load_tool, tmp_path, capfd):
    """tools/benchmark.py, the documented command, runs benchmarks/bench_runtimes.py in a process
    of its own with the same arguments and returns its exit code."""
    (tmp_path / "empty").mkdir()
    code = load_tool("benchmark").main(
        ["--config-file", CONFIG, "--images", str(tmp_path / "empty"),
         "--output", str(tmp_path / "b.json"), *TINY]
    )  # fmt: skip
    assert code == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and str(tmp_path / "empty") in err[-1]
