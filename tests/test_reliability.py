"""Long runs a user can trust, through the public tools: weight files run no code, the model
zoo's fine-tuning path loads what it should, and kills, torn files and SIGTERM lose nothing."""

import functools
import http.server
import os
import pickle
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from support import INSTANT_CONFIG as INSTANT
from support import TRAIN_NET, write_evil_pth, write_pkl

from dental_d2.data.synthetic import generate_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]
R50 = str(ROOT / "configs" / "dental_r50.yaml")
# On top of the instant-test config: a log line per iteration, no pictures, no test split.
FAST = [
    "DENTAL.LOG_PERIOD", "1", "DENTAL.EVAL.NUM_VIS_IMAGES", "0", "DATASETS.TEST", "()",
]  # fmt: skip

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_dataset(str(root), num_train=8, num_valid=2, num_test=2, size=128, seed=5)
    return root


def _command(config, *args):
    return [sys.executable, TRAIN_NET, "--config-file", config, *args]


def _run(command, env=None, timeout=900):
    return subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, timeout=timeout, env=env
    )


def _last_line(result):
    return result.stderr.strip().splitlines()[-1]


def _checkpoints_all_load(output):
    for path in output.glob("*.pth"):
        torch.load(path, map_location="cpu", weights_only=True)  # raises on a torn file


def test_weight_files_with_code_run_nothing_in_any_tool(
    export, tmp_path, load_tool, capsys, restore_loggers
):
    # Each tool's main() in this process: an unpickled file's code would run here, and the
    # marker would appear.
    marker = tmp_path / "pwned"
    evil_pth, evil_pkl = tmp_path / "model_final.pth", tmp_path / "model.pkl"
    write_evil_pth(evil_pth, marker)
    write_pkl(evil_pkl, {"weight": torch.zeros(1)}, marker)
    for weights in (evil_pth, evil_pkl):
        evaluate = [
            "--config-file", INSTANT, "--eval-only", *FAST, "DATASETS.TEST", "('dental_test',)",
            "MODEL.WEIGHTS", str(weights), "DENTAL.DATA_ROOT", str(export),
            "OUTPUT_DIR", str(tmp_path / "eval"),
        ]  # fmt: skip
        draw = [
            "--config-file", INSTANT, "--input", str(export / "test"),
            "--output", str(tmp_path / "vis"), "MODEL.WEIGHTS", str(weights),
            # class names from the config, so that the .pkl (which has none) gets to be loaded
            "DENTAL.CLASS_NAMES", "['Caries', 'Cavity', 'Crack', 'Tooth']",
        ]  # fmt: skip
        for tool, argv in (("train_net", evaluate), ("visualize", draw)):
            assert load_tool(tool).main(argv) == 1, tool
            err = capsys.readouterr().err
            last = err.strip().splitlines()[-1]
            assert last.startswith(f"error: {weights}") and "DENTAL.ALLOW_PICKLE True" in last
            assert "Traceback" not in err
    assert not marker.exists()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_folder(tmp_path):
    """Serves tmp_path/served on 127.0.0.1 at a free port; yields (folder, base URL)."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _model_zoo_stand_in(path):
    """detectron2's COCO Mask R-CNN R50-FPN file layout: a pickled dict, "model" mapping
    detectron2 parameter names to numpy arrays, 80 classes in the heads."""
    from detectron2.modeling import build_model

    from dental_d2.config import build_config

    cfg = build_config(R50, ["MODEL.ROI_HEADS.NUM_CLASSES", "80", "MODEL.DEVICE", "cpu"])
    torch.manual_seed(1)
    state = build_model(cfg).state_dict()
    weights = {name: tensor.numpy() for name, tensor in state.items()}
    with open(path, "wb") as f:
        pickle.dump({"model": weights, "__author__": "Detectron2 Model Zoo"}, f)
    return weights


def test_fine_tuning_from_the_model_zoo_over_http(export, tmp_path, http_folder):
    folder, url = http_folder
    zoo = _model_zoo_stand_in(folder / "model_final_f10217.pkl")
    output = tmp_path / "fine_tuned"
    # BASE_LR 0 keeps the loaded weights as they are, so model_final shows what was loaded.
    result = _run(
        _command(
            R50, "MODEL.WEIGHTS", f"{url}/model_final_f10217.pkl", "DENTAL.ALLOW_PICKLE", "True",
            "MODEL.DEVICE", "cpu", "DENTAL.DATA_ROOT", str(export), "OUTPUT_DIR", str(output),
            "SOLVER.MAX_EPOCHS", "0", "SOLVER.MAX_ITER", "2", "SOLVER.BASE_LR", "0.0",
            "SOLVER.IMS_PER_BATCH", "1", "SOLVER.WARMUP_ITERS", "1",
            "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
            "DATASETS.VALIDATION", "()", "DATASETS.TEST", "()", "DENTAL.EVAL.NUM_VIS_IMAGES", "0",
            "DATALOADER.NUM_WORKERS", "0",
        ),
        env=dict(os.environ, FVCORE_CACHE=str(tmp_path / "cache")),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    # downloaded into the cache, then read as a model-zoo file
    assert (tmp_path / "cache" / "model_final_f10217.pkl").is_file()
    assert f"Loading from {url}/model_final_f10217.pkl" in log
    assert "Reading a file from 'Detectron2 Model Zoo'" in log
    final = torch.load(output / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    skipped = {name for name, array in zoo.items() if tuple(final[name].shape) != array.shape}
    # 80 COCO classes against our 4: the class scores, box deltas and mask logits differ.
    assert skipped == {
        "roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.bias",
        "roi_heads.box_predictor.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.bias",
        "roi_heads.mask_head.predictor.weight", "roi_heads.mask_head.predictor.bias",
    }  # fmt: skip
    for name in skipped:
        assert f"Skip loading parameter '{name}' to the model due to incompatible shapes" in log
    for name, array in zoo.items():
        if name not in skipped:
            assert torch.equal(final[name], torch.from_numpy(array)), name


def _start(command, log_path, **kwargs):
    # The child keeps its own copy of the file descriptor after the parent closes it.
    with open(log_path, "w") as log:
        return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=log, **kwargs)


def _wait_for(predicate, process, seconds=300):
    deadline = time.time() + seconds
    while not predicate():
        assert process.poll() is None, "training ended before the moment to interrupt it"
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


def test_sigkill_at_random_moments_always_resumes(export, tmp_path):
    output = tmp_path / "killed"
    opts = [
        *FAST, "DENTAL.DATA_ROOT", str(export), "OUTPUT_DIR", str(output),
        "SOLVER.MAX_ITER", "24", "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.EVAL_PERIOD", "6",
        # Plateau cuts and the best checkpoint still count evaluations across the kills, but
        # no early stop: the run must reach its last iteration.
        "SOLVER.EARLY_STOPPING.ENABLED", "False",
    ]  # fmt: skip
    rng = random.Random(20261128)
    tag = output / "last_checkpoint"
    for attempt in range(3):
        command = _command(INSTANT, *(["--resume"] if attempt else []), *opts)
        before = tag.read_text() if tag.exists() else None
        log_path = tmp_path / f"run{attempt}.log"
        process = _start(command, log_path)
        _wait_for(lambda before=before: tag.exists() and tag.read_text() != before, process)
        time.sleep(rng.uniform(0.0, 2.0))  # somewhere in a step, an evaluation or a save
        process.kill()
        process.wait()
        assert not (output / "model_final.pth").exists(), "the run ended before the kill"
        _checkpoints_all_load(output)
        # each run went on from the checkpoint the one before it had named
        start = int(before.removeprefix("model_").removesuffix(".pth")) + 1 if before else 0
        assert f"Starting training from iteration {start}\n" in log_path.read_text()
    start = int(tag.read_text().removeprefix("model_").removesuffix(".pth")) + 1
    result = _run(_command(INSTANT, "--resume", *opts))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Starting training from iteration {start}\n" in result.stdout + result.stderr
    final = torch.load(output / "model_final.pth", map_location="cpu", weights_only=True)
    assert final["iteration"] == 23
    assert not list(output.glob(".*.tmp")), "temporary files of killed saves are cleaned up"


def test_resume_skips_a_torn_newest_checkpoint(export, tmp_path):
    output = tmp_path / "torn"
    opts = [
        *FAST, "DENTAL.DATA_ROOT", str(export), "OUTPUT_DIR", str(output),
        "SOLVER.CHECKPOINT_PERIOD", "3", "TEST.EVAL_PERIOD", "0", "TEST.VALIDATION_LOSS", "False",
        "DATASETS.VALIDATION", "()",
    ]  # fmt: skip
    first = _run(_command(INSTANT, *opts, "SOLVER.MAX_ITER", "6"))
    assert first.returncode == 0, first.stderr[-3000:]
    # A copy, or another tool, tore the newest periodic checkpoint; last_checkpoint names it.
    newest = output / "model_0000005.pth"
    newest.write_bytes(newest.read_bytes()[:1000])
    (output / "model_final.pth").unlink()
    (output / "last_checkpoint").write_text("model_0000005.pth")
    resumed = _run(_command(INSTANT, "--resume", *opts, "SOLVER.MAX_ITER", "9"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert f"Cannot resume from {newest}" in log
    assert f"resuming from {output / 'model_0000002.pth'} instead" in log
    assert "Starting training from iteration 3" in log


def test_sigterm_saves_the_iteration_and_resume_continues(export, tmp_path):
    output = tmp_path / "preempted"
    opts = [
        *FAST, "DENTAL.DATA_ROOT", str(export), "OUTPUT_DIR", str(output),
        "SOLVER.MAX_ITER", "400", "SOLVER.CHECKPOINT_PERIOD", "1000", "TEST.EVAL_PERIOD", "0",
        "TEST.VALIDATION_LOSS", "False", "DATASETS.VALIDATION", "()",
        # A data-loader worker gets the signal too when it is sent to the whole group.
        "DATALOADER.NUM_WORKERS", "1",
    ]  # fmt: skip
    log_path = tmp_path / "run.log"
    # Its own process group, as a job under a scheduler: the signal goes to every process.
    process = _start(_command(INSTANT, *opts), log_path, start_new_session=True)
    metrics = output / "metrics.json"
    _wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 3, process)
    os.killpg(process.pid, signal.SIGTERM)
    sent = time.time()
    process.wait(timeout=60)
    assert time.time() - sent < 60
    text = log_path.read_text()
    assert process.returncode == 128 + signal.SIGTERM, text[-3000:]
    last = text.strip().splitlines()[-1]
    saved = (output / "last_checkpoint").read_text()
    iteration = int(saved.removeprefix("model_").removesuffix(".pth"))
    assert last == (
        f"error: training stopped by SIGTERM after {iteration + 1} iterations; "
        f"{output / saved} is saved; continue with the same command and --resume"
    )
    assert "Traceback" not in text
    state = torch.load(output / saved, map_location="cpu", weights_only=True)
    assert state["iteration"] == iteration

    opts[opts.index("SOLVER.MAX_ITER") + 1] = str(iteration + 4)
    resumed = _run(_command(INSTANT, "--resume", *opts))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Starting training from iteration {iteration + 1}" in resumed.stdout + resumed.stderr
    final = torch.load(output / "model_final.pth", map_location="cpu", weights_only=True)
    assert final["iteration"] == iteration + 3


def test_sigterm_stops_every_ddp_process_at_one_iteration(export, tmp_path):
    output = tmp_path / "ddp"
    opts = [
        "--num-gpus", "2", *FAST, "DENTAL.DATA_ROOT", str(export), "OUTPUT_DIR", str(output),
        "SOLVER.MAX_ITER", "400", "SOLVER.CHECKPOINT_PERIOD", "1000", "TEST.EVAL_PERIOD", "0",
        "TEST.VALIDATION_LOSS", "False", "DATASETS.VALIDATION", "()",
    ]  # fmt: skip
    log_path = tmp_path / "run.log"
    process = _start(_command(INSTANT, *opts), log_path, start_new_session=True)
    metrics = output / "metrics.json"
    _wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 3, process)
    # Only the launcher is signalled, as some schedulers do: it passes the signal on.
    os.kill(process.pid, signal.SIGTERM)
    process.wait(timeout=60)
    text = log_path.read_text()
    assert process.returncode == 128 + signal.SIGTERM, text[-3000:]
    assert text.strip().splitlines()[-1] == (
        "error: training stopped by a signal after saving a checkpoint; continue with the same "
        "command and --resume"
    )
    saved = (output / "last_checkpoint").read_text()
    iteration = int(saved.removeprefix("model_").removesuffix(".pth"))
    # Both processes stopped after the same iteration: the main one logged it once.
    assert f"training stopped by SIGTERM after {iteration + 1} iterations;" in text
    state = torch.load(output / saved, map_location="cpu", weights_only=True)
    assert state["iteration"] == iteration
