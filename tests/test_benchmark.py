"""benchmarks/bench_runtimes.py (what tools/benchmark.py runs) on the demo model at a tiny size:
every runtime measured at equal work, one table, one JSON."""

import json
from pathlib import Path

import pytest
import torch
from support import DEMO_CONFIG as CONFIG
from support import TINY_INPUT as TINY

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("restore_loggers")


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


def test_graph_stages_group_profiled_node_times_by_module_path(tmp_path, benchmark_tool):
    """ONNX Runtime's profile: node kernel times summed per stage by their module path; other
    events (session, fences) are not node time."""
    from equal_work.stages import graph_shares

    def node(name, dur):
        return {"cat": "Node", "name": f"{name}_kernel_time", "dur": dur}

    events = [
        node("/backbone/bottom_up/stem/conv1/Conv", 50),
        node("/backbone/fpn_output2/Conv", 10),
        node("/proposal_generator/rpn_head/conv/Conv", 20),
        node("/roi_heads/box_head/fc1/Gemm", 5),
        node("/roi_heads/box_pooler/level_poolers.0/RoiAlign", 5),
        node("/roi_heads/mask_head/mask_fcn1/Conv", 8),
        node("/Sub", 2),
        {"cat": "Node", "name": "/backbone/fpn_output2/Conv_fence_before", "dur": 1000},
        {"cat": "Session", "name": "model_run", "dur": 1000},
    ]
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps(events))
    assert graph_shares(str(profile)) == {
        "backbone + FPN": 0.6,
        "RPN": 0.2,
        "box head": 0.1,
        "mask head": 0.08,
        "graph: other nodes and overhead": 0.02,
    }


@pytest.mark.slow
def test_stage_table_of_eager_float_and_int8_paths(tmp_path, capsys, benchmark_tool):
    """--stages: each path of the trained model, from the photo file to COCO annotations, in
    the same stages; the graph's stages come from ONNX Runtime's profiler."""
    from equal_work.models import equal_work_config, write_equal_work_checkpoint
    from equal_work.stages import STAGES

    from dental_d2.data.synthetic import generate_synthetic_dataset

    generate_synthetic_dataset(str(tmp_path / "photos"), 2, 0, 2, size=96, seed=1)
    weights = write_equal_work_checkpoint(equal_work_config(CONFIG, TINY), str(tmp_path / "m.pth"))
    output = tmp_path / "bench.json"
    code = benchmark_tool.main(
        ["--config-file", CONFIG, "--output", str(output), "--repeats", "1",
         "--only", "onnxruntime", "--weights", weights, "--confidence-threshold", "0",
         "--images", str(tmp_path / "photos" / "test"), "--stages", "--stage-photos", "2",
         "--calibration", str(tmp_path / "photos" / "train"), *TINY]
    )  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "bench.stages.json").read_text())
    columns = report["columns"]
    assert list(columns) == ["PyTorch eager", "ONNX Runtime", "ONNX Runtime int8"]
    graph_only = "graph: other nodes and overhead"
    for name, column in columns.items():
        expected = set(STAGES) - ({graph_only} if name == "PyTorch eager" else set())
        assert set(column["stages"]) == expected, name
        assert all(ms > 0 for ms in column["stages"].values()), column
        assert column["total_ms"] == pytest.approx(sum(column["stages"].values()))
        assert column["detections"] > 0
    # The rows of the main table ran the same exports the stages did.
    rows = {row["name"] for row in json.loads(output.read_text())["rows"]}
    assert {"as trained: ONNX Runtime", "as trained: ONNX Runtime int8"} <= rows
    with open(Path(report["settings"]["exports"]["trained_onnx_int8"]).parent / "model.json") as f:
        assert json.load(f)["precision"] == "int8"
    table = capsys.readouterr().out
    assert all(stage in table for stage in STAGES) and "ONNX Runtime int8" in table
