"""tools/train_net.py end to end on a tiny synthetic export: learning, --eval-only, class names,
early stopping, scoring with the best model, and 2 CPU processes over gloo (kills, SIGTERM and
resume are in test_reliability.py)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support import CLASSES, TRAIN_NET
from support import INSTANT_CONFIG as CONFIG
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dental_d2.checkpoint import CLASS_NAMES_KEY
from dental_d2.checkpoint_contents import CONFIG_KEY
from dental_d2.data.synthetic import generate_synthetic_dataset

# Every test here runs tools/train_net.py: in a subprocess, or in this process where it stops
# at a one-line error.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _train_net(*args, timeout=600, config=CONFIG):
    config_args = [] if config is None else ["--config-file", str(config)]
    return subprocess.run(
        [sys.executable, TRAIN_NET, *config_args, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.fixture
def train_net_main(load_tool, capsys, restore_loggers):
    """tools/train_net.py's main() in this process, for runs that stop at a one-line error
    before training or evaluating: a process of their own would only add its start-up."""
    tool = load_tool("train_net")

    def main(*args):
        code = tool.main(["--config-file", CONFIG, *args])
        return code, capsys.readouterr().err

    return main


def _one_line_error(train_net_main, *args) -> str:
    """Runs train_net_main(*args); asserts exit code 1, no traceback; returns stderr's last line."""
    code, err = train_net_main(*args)
    assert code == 1 and "Traceback" not in err, err[-3000:]
    return err.strip().splitlines()[-1]


def _metrics_rows(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_dataset(str(root), num_train=12, num_valid=4, num_test=4, size=128, seed=3)
    return root


@pytest.fixture(scope="module")
def trained(export, tmp_path_factory):
    output = tmp_path_factory.mktemp("train")
    result = _train_net(
        "DENTAL.DATA_ROOT", str(export), "OUTPUT_DIR", str(output),
        "SOLVER.MAX_ITER", "30", "TEST.EVAL_PERIOD", "15", "SOLVER.CHECKPOINT_PERIOD", "1000",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return output, result


def test_training_loss_falls_and_everything_is_written(trained):
    output, result = trained
    rows = [row for row in _metrics_rows(output) if "total_loss" in row]
    assert len(rows) >= 5
    # medians over the first 5 and the last 20 iterations
    assert rows[-1]["total_loss"] < 0.8 * rows[0]["total_loss"], rows
    # validation loss, COCO AP per class and P/R/F1 reach the storage (and TensorBoard)
    evaluated = [row for row in _metrics_rows(output) if "validation_loss" in row]
    assert evaluated and all(math_finite(row["validation_loss"]) for row in evaluated)
    keys = set().union(*_metrics_rows(output))
    assert {"segm/AP", "segm/AP-Caries", "segm/precision", "segm/f1-Tooth", "lr"} <= keys
    events = EventAccumulator(str(output), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert "val_predictions/0_truth_vs_predicted" in events.Tags()["images"]
    assert {"validation_loss", "segm/AP-Crack", "segm/recall", "lr"} <= set(
        events.Tags()["scalars"]
    )
    for name in ("model_final.pth", "model_best.pth", "config.yaml", "log.txt"):
        assert (output / name).is_file(), name
    # after training, the test split is evaluated with detectron2's usual tables
    assert "copypaste: Task: segm" in result.stdout + result.stderr
    metrics = json.loads((output / "eval" / "dental_test" / "metrics.json").read_text())
    assert set(metrics["segm"]["per_class"]) == set(CLASSES)


def test_log_file_is_plain_and_the_run_ends_with_a_summary(trained):
    output, result = trained
    log = (output / "log.txt").read_text()
    # detectron2 logs the config highlighted in colour and the class histograms in cyan
    assert "Running with full config" in log and "Distribution of instances" in log
    assert "\x1b[" not in log
    assert "SOLVER.MAX_ITER 30 (command line) decides the length of training" in log
    # evaluations after iterations 14 and 29: first left out and said so, then counted
    assert re.search(r"eta: \d+:\d\d:\d\d \+ 2 evaluations  iter: 4 ", log), log[-3000:]
    assert re.search(r"eta: \d+:\d\d:\d\d with 1 evaluation  iter: 19 ", log), log[-3000:]
    summary = log[log.index("Training summary") :]
    best = torch.load(output / "model_best.pth", map_location="cpu", weights_only=True)
    assert (
        f"best checkpoint: {output / 'model_best.pth'}, iteration {best['iteration'] + 1} "
        "(validation_loss "
    ) in summary
    table = summary[summary.index("test scores on dental_test (segm") :]
    for name in [*CLASSES, "(all)"]:
        assert re.search(rf"\| {re.escape(name)} +\| +(n/a|\d+\.\d{{3}}) +\|", table), table
    report = output / "eval" / "dental_test" / "report.html"
    assert f"report: {report}" in summary and report.is_file()
    assert f"--output {output / 'overlays' / 'dental_test'}" in summary
    assert f"tensorboard --logdir {output}" in summary
    # detectron2's conversion to COCO json leaves a lock file; none is left
    assert not list(output.rglob("*.lock"))
    assert (output / "eval" / "dental_valid" / "dental_valid_coco_format.json").is_file()


def test_reports_say_what_they_scored(trained, export):
    output, _ = trained
    best = torch.load(output / "model_best.pth", map_location="cpu", weights_only=True)
    rows = {}
    for dataset in ("dental_valid", "dental_test"):
        page = (output / "eval" / dataset / "report.html").read_text(encoding="utf-8")
        rows[dataset] = dict(re.findall(r"<tr><th>(\w[\w ]*)</th><td>([^<]*)</td></tr>", page))
        split = dataset.removeprefix("dental_")
        assert rows[dataset]["Data"] == f"{dataset} ({export / split / '_annotations.coco.json'})"
        assert rows[dataset]["Config"] == str(output / "config.yaml")
        assert {"Date", "Thresholds"} <= set(rows[dataset])
    # the validation split last evaluated after training (30 iterations done); the test split
    # with model_best.pth, which stores detectron2's index of its last iteration (from 0)
    assert rows["dental_valid"]["Model"] == (
        f"the model being trained in {output}, after iteration 30"
    )
    assert rows["dental_test"]["Model"] == (
        f"{output / 'model_best.pth'} (iteration {best['iteration'] + 1})"
    )


def test_console_is_plain_and_short_when_redirected(trained):
    output, result = trained
    console = result.stdout + result.stderr
    assert "\x1b" not in console
    # the config, the environment and the model's layers are in config.yaml and log.txt only
    assert f"Full config saved to {output / 'config.yaml'}" in console
    assert f"the full config are in {output / 'log.txt'}, not shown here" in console
    for dump in ("Running with full config", "ANCHOR_GENERATOR", "DentalRCNN(", "PyTorch built"):
        assert dump not in console, dump
    assert "Running with full config" in (output / "log.txt").read_text()
    # third-party warnings a user cannot act on
    assert "is_fx_tracing" not in console and "No CUDA runtime" not in console
    # the commands suggested at the end run with the interpreter that ran
    relative = os.path.relpath(sys.executable, ROOT)
    python = sys.executable if relative.startswith("..") else relative
    assert f"overlays of dental_test: {python} tools/visualize.py --config-file " in console


def test_one_iteration_number_per_checkpoint(trained):
    # Every message and report counts the iterations completed: evaluations after 15 and 30.
    output, result = trained
    console = result.stdout + result.stderr
    # Checkpoints store detectron2's index of their last iteration, counted from 0.
    best_done = torch.load(output / "model_best.pth", weights_only=True)["iteration"] + 1
    final_done = torch.load(output / "model_final.pth", weights_only=True)["iteration"] + 1
    assert final_done == 30 and best_done in (15, 30)
    assert re.findall(r"Validation loss at iteration (\d+):", console) == ["15", "30"]
    saved = re.findall(r"Saved model_best: validation_loss = \S+ at iteration (\d+)", console)
    assert saved[0] == "15" and saved[-1] == str(best_done), saved
    assert f"Evaluating model_best.pth (iteration {best_done}, chosen by " in console
    assert f"(model_final.pth: iteration {final_done})" in console
    assert f"best checkpoint: {output / 'model_best.pth'}, iteration {best_done} (" in console
    assert not re.search(r"iteration (14|29|31)\b", console), console[-3000:]
    test_report = (output / "eval" / "dental_test" / "report.html").read_text(encoding="utf-8")
    assert f"model_best.pth (iteration {best_done})</td>" in test_report


def test_command_line_max_iter_beats_the_files_max_epochs(export, tmp_path):
    config = tmp_path / "epochs.yaml"
    config.write_text(f'_BASE_: "{CONFIG}"\nSOLVER:\n  MAX_EPOCHS: 50\n')
    output = tmp_path / "out"
    result = _train_net(
        "DENTAL.DATA_ROOT", str(export), "OUTPUT_DIR", str(output), "SOLVER.MAX_ITER", "3",
        "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()", "TEST.VALIDATION_LOSS", "False",
        "DENTAL.EVAL.NUM_VIS_IMAGES", "0", config=config,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        "SOLVER.MAX_ITER 3 (command line) decides the length of training, not SOLVER.MAX_EPOCHS "
        "50 (config): SOLVER.MAX_ITER 3, TEST.EVAL_PERIOD 6 (one epoch: 6 iterations)"
    ) in result.stdout + result.stderr
    final = torch.load(output / "model_final.pth", map_location="cpu", weights_only=True)
    assert final["iteration"] == 2


def math_finite(value):
    return value == value and abs(value) != float("inf")


def test_checkpoint_and_config_carry_class_names(trained):
    output, _ = trained
    checkpoint = torch.load(output / "model_final.pth", map_location="cpu", weights_only=True)
    assert checkpoint[CLASS_NAMES_KEY]["thing_classes"] == CLASSES
    hooks_state = checkpoint["trainer"]["hooks"]
    assert {"EarlyStopping", "ReduceLROnPlateau"} <= set(hooks_state)
    saved = (output / "config.yaml").read_text()
    assert "CLASS_NAMES:\n  - Caries\n  - Cavity\n  - Crack\n  - Tooth\n" in saved
    # The checkpoint holds the whole config it was trained with, as the run saved it.
    assert checkpoint[CONFIG_KEY]["yaml"] == saved
    best = torch.load(output / "model_best.pth", map_location="cpu", weights_only=True)
    assert best[CONFIG_KEY]["yaml"] == saved


def test_eval_only_takes_the_weights_alone(trained, export, tmp_path):
    output, _ = trained
    scored = []
    for name, config in (("alone", None), ("configured", CONFIG)):
        result = _train_net(
            "--eval-only", "MODEL.WEIGHTS", str(output / "model_final.pth"),
            "DENTAL.DATA_ROOT", str(export), "OUTPUT_DIR", str(tmp_path / name), config=config,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        # --eval-only's reports go to a folder named after the weights.
        metrics = tmp_path / name / "eval/model_final/dental_test/metrics.json"
        scored.append(json.loads(metrics.read_text()))
    assert scored[0]["segm"] == scored[1]["segm"] and scored[0]["bbox"] == scored[1]["bbox"]


def _reorder_categories(export, destination):
    """A copy of the export whose category ids list the classes in another order."""
    new_ids = {"Caries": 4, "Cavity": 3, "Crack": 2, "Tooth": 1}
    for split in ("train", "valid", "test"):
        (destination / split).mkdir(parents=True)
        for image in (export / split).iterdir():
            if image.suffix == ".jpg":
                os.symlink(image, destination / split / image.name)
        data = json.loads((export / split / "_annotations.coco.json").read_text())
        old_names = {c["id"]: c["name"] for c in data["categories"]}
        for category in data["categories"]:
            category["id"] = new_ids.get(category["name"], 0) if category["id"] else 0
        for annotation in data["annotations"]:
            annotation["category_id"] = new_ids[old_names[annotation["category_id"]]]
        (destination / split / "_annotations.coco.json").write_text(json.dumps(data))


def test_eval_only_remaps_reordered_classes_by_name(trained, export, tmp_path):
    output, _ = trained
    reordered = tmp_path / "reordered"
    _reorder_categories(export, reordered)
    plain = _train_net(
        "--eval-only", "MODEL.WEIGHTS", str(output / "model_final.pth"),
        "DENTAL.DATA_ROOT", str(export), "OUTPUT_DIR", str(tmp_path / "plain"),
    )  # fmt: skip
    remapped = _train_net(
        "--eval-only", "MODEL.WEIGHTS", str(output / "model_final.pth"),
        "DENTAL.DATA_ROOT", str(reordered), "OUTPUT_DIR", str(tmp_path / "remapped"),
    )  # fmt: skip
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert remapped.returncode == 0, remapped.stderr[-3000:]
    assert "predictions are remapped by name" in remapped.stdout + remapped.stderr
    first = json.loads((tmp_path / "plain/eval/model_final/dental_test/metrics.json").read_text())
    second = json.loads(
        (tmp_path / "remapped/eval/model_final/dental_test/metrics.json").read_text()
    )
    assert list(second["segm"]["per_class"]) == ["Tooth", "Crack", "Cavity", "Caries"]
    for name in CLASSES:
        assert second["segm"]["per_class"][name]["tp"] == first["segm"]["per_class"][name]["tp"]
        assert second["segm"]["per_class"][name]["fp"] == first["segm"]["per_class"][name]["fp"]


def test_eval_only_never_replaces_a_report(trained, export, tmp_path):
    # The README's command without OUTPUT_DIR: the config's OUTPUT_DIR is the training's own.
    output = tmp_path / "run"
    shutil.copytree(trained[0], output)
    training_report = output / "eval" / "dental_test" / "report.html"
    before = training_report.read_bytes()
    weights = output / "model_best.pth"
    done = torch.load(weights, weights_only=True)["iteration"] + 1
    folders = [{p.name for p in (output / "eval").iterdir()}]
    for _ in range(2):
        result = _train_net(
            "--eval-only", "MODEL.WEIGHTS", str(weights), "DENTAL.DATA_ROOT", str(export),
            "OUTPUT_DIR", str(output),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        # the training's reports are as they were
        assert training_report.read_bytes() == before
        folders.append({p.name for p in (output / "eval").iterdir()})
        if len(folders) == 2:
            first = (output / "eval" / "model_best" / "dental_test" / "report.html").read_bytes()
    # each evaluation has a folder of its own, and the second left the first's as it was
    assert folders[1] - folders[0] == {"model_best"}
    assert folders[2] - folders[1] == {"model_best-2"}
    assert (output / "eval" / "model_best" / "dental_test" / "report.html").read_bytes() == first
    second = output / "eval" / "model_best-2" / "dental_test" / "report.html"
    assert f"{weights} (iteration {done})</td>" in second.read_text(encoding="utf-8")
    assert f"reports in {output / 'eval' / 'model_best-2'}/<dataset>/" in result.stdout


def test_eval_only_refuses_other_classes(trained, tmp_path, train_net_main):
    output, _ = trained
    other = tmp_path / "other"
    generate_synthetic_dataset(str(other), num_train=2, num_valid=2, num_test=2, size=64, seed=1)
    test_json = other / "test" / "_annotations.coco.json"
    data = json.loads(test_json.read_text())
    data["categories"] = [
        c | {"name": "Plaque"} if c["name"] == "Crack" else c for c in data["categories"]
    ]
    for split in ("train", "valid", "test"):
        (other / split / "_annotations.coco.json").write_text(json.dumps(
            json.loads((other / split / "_annotations.coco.json").read_text())
            | {"categories": data["categories"]}
        ))  # fmt: skip
    last = _one_line_error(
        train_net_main, "--eval-only", "MODEL.WEIGHTS", str(output / "model_final.pth"),
        "DENTAL.DATA_ROOT", str(other), "OUTPUT_DIR", str(tmp_path / "out"),
    )  # fmt: skip
    assert last.startswith("error: the model predicts") and "Plaque" in last, last


def test_missing_weights_is_one_line_error(tmp_path, export, train_net_main):
    last = _one_line_error(
        train_net_main, "--eval-only", "MODEL.WEIGHTS", str(tmp_path / "nope.pth"),
        "DENTAL.DATA_ROOT", str(export), "OUTPUT_DIR", str(tmp_path / "out"),
    )  # fmt: skip
    assert last.startswith("error: MODEL.WEIGHTS"), last


def test_two_cpu_processes_over_gloo(export, tmp_path):
    output = tmp_path / "ddp"
    result = _train_net(
        "--num-gpus", "2", "DENTAL.DATA_ROOT", str(export), "OUTPUT_DIR", str(output),
        "SOLVER.MAX_ITER", "6", "TEST.EVAL_PERIOD", "3", "DATASETS.TEST", "()",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "World size: 2" in log
    assert (output / "model_final.pth").is_file()
    rows = _metrics_rows(output)
    assert any("validation_loss" in row for row in rows)


def test_early_stopping_ends_training_cleanly(export, tmp_path):
    # No change of the validation loss beats min_delta 1000: the 2nd evaluation stops training.
    output = tmp_path / "early"
    result = _train_net(
        "DENTAL.DATA_ROOT", str(export), "OUTPUT_DIR", str(output),
        "SOLVER.MAX_ITER", "40", "TEST.EVAL_PERIOD", "4", "DATASETS.TEST", "()",
        "SOLVER.EARLY_STOPPING.MIN_DELTA", "1000.0", "SOLVER.EARLY_STOPPING.PATIENCE", "1",
        "SOLVER.LR_SCHEDULER_NAME", "WarmupMultiStepLR", "DENTAL.EVAL.NUM_VIS_IMAGES", "0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "Early stopping at iteration 8: validation_loss" in log
    assert "Training ended early at iteration 8" in log
    # evaluated at iterations 4 and 8, and not once more for the stop
    assert log.count("Validation loss at iteration") == 2
    assert log.count("Evaluation results for dental_valid in csv format") == 2
    final = torch.load(output / "model_final.pth", map_location="cpu", weights_only=True)
    assert final["iteration"] == 7
    assert not (output / "model_0000039.pth").exists()


def test_reference_config_derives_schedule_from_epochs(export):
    from dental_d2.config import build_config
    from dental_d2.engine.launch import prepare_dental_config

    cfg = build_config(
        str(ROOT / "configs" / "dental_r50.yaml"),
        ["DENTAL.DATA_ROOT", str(export), "DENTAL.DATASET_NAME", "epochs_check",
         "DATASETS.TRAIN", "('epochs_check_train',)", "SOLVER.ACCUMULATION_STEPS", "3"],
    )  # fmt: skip
    prepare_dental_config(cfg)
    # 12 train images at 2 images x 3 accumulated batches: 2 iterations per epoch, 50 epochs
    assert (cfg.SOLVER.MAX_ITER, cfg.TEST.EVAL_PERIOD) == (100, 2)
    assert cfg.DENTAL.CLASS_NAMES == CLASSES
    if not torch.cuda.is_available():
        assert cfg.MODEL.DEVICE == "cpu"


def test_undownloadable_weights_is_one_line_error(tmp_path, export, train_net_main):
    # Nothing listens on port 9 of the loopback address: the download fails at once.
    last = _one_line_error(
        train_net_main, "MODEL.WEIGHTS", "http://127.0.0.1:9/model_final.pkl",
        "SOLVER.MAX_ITER", "1", "DENTAL.DATA_ROOT", str(export),
        "OUTPUT_DIR", str(tmp_path / "out"),
    )  # fmt: skip
    assert last.startswith("error: MODEL.WEIGHTS http://127.0.0.1:9/model_final.pkl: cannot be")
    # every step of the fix at once: the local .pkl is a pickle, and the config needing none
    assert "pass its local path with DENTAL.ALLOW_PICKLE True" in last, last
    assert "train with no internet from configs/dental_lite0.yaml" in last, last


def test_test_split_is_scored_with_the_best_model(export, tmp_path):
    # The learning rate rises through warm-up, so "lowest lr" makes the first evaluation the
    # best one and the second one ends training (patience 1): best and final differ.
    output = tmp_path / "best"
    result = _train_net(
        "DENTAL.DATA_ROOT", str(export), "OUTPUT_DIR", str(output),
        "SOLVER.MAX_ITER", "40", "TEST.EVAL_PERIOD", "4", "SOLVER.WARMUP_ITERS", "100",
        "SOLVER.EARLY_STOPPING.METRIC", "lr", "SOLVER.EARLY_STOPPING.PATIENCE", "1",
        "SOLVER.LR_SCHEDULER_NAME", "WarmupMultiStepLR", "DENTAL.EVAL.NUM_VIS_IMAGES", "0",
        "TEST.VALIDATION_LOSS", "False",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "Early stopping at iteration 8: lr" in log
    assert "Evaluating model_best.pth (iteration 4, chosen by lr)" in log
    final_report = output / "eval" / "final" / "dental_test" / "report.html"
    assert f"report of the final weights: {final_report}" in log
    best = torch.load(output / "model_best.pth", map_location="cpu", weights_only=True)
    assert best["iteration"] == 3
    # the best checkpoint holds the early-stopping state after counting its own evaluation
    assert best["trainer"]["hooks"]["EarlyStopping"]["best_iter"] == 4
    assert best["trainer"]["hooks"]["EarlyStopping"]["num_bad_evals"] == 0
    chosen = json.loads((output / "eval" / "dental_test" / "metrics.json").read_text())
    final = json.loads((output / "eval" / "final" / "dental_test" / "metrics.json").read_text())
    assert set(chosen["segm"]["per_class"]) == set(final["segm"]["per_class"]) == set(CLASSES)
