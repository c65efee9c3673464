"""What a training run had reached after given minutes: per-class test segm AP50 by budget.

Reads the run's log.txt for when training ran and when each checkpoint was saved, scores the
last checkpoint saved within each budget with `tools/train_net.py --eval-only` (into
RUN/budgets/<minutes>min/), and prints a table::

    python benchmarks/budget_table.py output/dental_lite0 --minutes 30,60,120 \\
        DENTAL.DATA_ROOT ../shared/datasets/dentalai

Minutes are minutes of training as the log's timestamps count them (evaluations during
training included); the time a run spent stopped before a `--resume` is not counted.
Trailing KEY VALUE pairs are passed to the evaluation (for example a DENTAL.DATA_ROOT); the
split scored is --dataset.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

TRAIN_NET = Path(__file__).resolve().parents[1] / "tools" / "train_net.py"
# detectron2's log lines: "[12/02 11:21:19] d2.engine.train_loop INFO: Starting training ...".
_STAMP = re.compile(r"^\[(\d\d/\d\d \d\d:\d\d:\d\d)\] ")
_SAVED = re.compile(r"Saving checkpoint to (\S+\.pth)$")
_START = "Starting training from iteration"


def _time(stamp: str, year: int) -> datetime:
    return datetime.strptime(f"{year}/{stamp}", "%Y/%m/%d %H:%M:%S")


def checkpoint_minutes(log_text: str) -> list[tuple[float, str]]:
    """(minutes of training when it was saved, path) for every checkpoint a log saved.

    Args:
        log_text (str): a run's log.txt; a resumed run's log holds every start.

    Returns:
        list[tuple[float, str]]: in the order saved.
    """
    saved, trained, start, last = [], 0.0, None, None
    # The log has no year; 2000 is a leap year, so 02/29 parses too.
    year = 2000
    for line in log_text.splitlines():
        stamp = _STAMP.match(line)
        if not stamp:
            continue
        now = _time(stamp.group(1), year)
        if last is not None and now < last:  # the log crossed a new year
            year += 1
            now = _time(stamp.group(1), year)
        if _START in line:
            # A resumed run: the time it ran before the stop counts, the pause does not.
            if start is not None:
                trained += (last - start).total_seconds() / 60
            start = now
        elif start is not None:
            match = _SAVED.search(line)
            if match:
                saved.append((trained + (now - start).total_seconds() / 60, match.group(1)))
        last = now
    return saved


def within_budget(saved: list[tuple[float, str]], minutes: float) -> tuple[float, str] | None:
    """The last periodic or final checkpoint saved within `minutes`, or None."""
    kept = [
        (at, path)
        for at, path in saved
        if at <= minutes and re.search(r"model_(\d+|final)\.pth$", path)
    ]
    return kept[-1] if kept else None


def _segm_ap50(metrics_path: Path) -> dict[str, float]:
    segm = json.loads(metrics_path.read_text())["segm"]
    scores = {name: row["AP50"] for name, row in segm["per_class"].items()}
    scores["all"] = segm["coco"]["AP50"]
    return scores


def score(run: Path, checkpoint: str, minutes: float, dataset: str, opts: list[str]):
    """Scores `checkpoint` with the run's own config: the per-class segm AP50, or None when the
    evaluation failed (it has said why on stderr, and in its log.txt)."""
    out = run / "budgets" / f"{minutes:g}min"
    command = [
        sys.executable, str(TRAIN_NET), "--eval-only", "--config-file", str(run / "config.yaml"),
        "MODEL.WEIGHTS", checkpoint, "OUTPUT_DIR", str(out), "DATASETS.TEST", f"('{dataset}',)",
        *opts,
    ]  # fmt: skip
    # --eval-only writes into eval/<checkpoint's name>/ (numbered when it exists): a rerun of
    # this table scores again into the same folder.
    folder = out / "eval" / Path(checkpoint).stem
    shutil.rmtree(folder, ignore_errors=True)
    if subprocess.run(command, stdout=subprocess.DEVNULL).returncode != 0:
        return None
    return _segm_ap50(folder / dataset / "metrics.json")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a training run's OUTPUT_DIR")
    parser.add_argument(
        "--minutes", required=True, type=lambda text: [float(m) for m in text.split(",")],
        help="budgets, comma-separated: 30,60,120",
    )  # fmt: skip
    parser.add_argument("--dataset", default="dental_test", help="the registered split to score")
    # What is left (KEY VALUE pairs) overrides the run's config in the evaluation.
    args, args.opts = parser.parse_known_args(argv)
    log = args.run / "log.txt"
    if not log.is_file():
        print(f"error: {log} does not exist; give a training run's OUTPUT_DIR", file=sys.stderr)
        return 1
    saved = checkpoint_minutes(log.read_text())
    rows = []
    for minutes in args.minutes:
        chosen = within_budget(saved, minutes)
        if chosen is None:
            print(f"error: no checkpoint in {log} was saved within {minutes:g} minutes",
                  file=sys.stderr)  # fmt: skip
            return 1
        at, path = chosen
        scores = score(args.run, path, minutes, args.dataset, args.opts)
        if scores is None:
            print(f"error: evaluating {path} failed; see {args.run}/budgets/{minutes:g}min/log.txt",
                  file=sys.stderr)  # fmt: skip
            return 1
        rows.append((minutes, at, os.path.basename(path), scores))
    classes = [name for name in rows[0][3] if name != "all"]
    print(f"{args.run}, {args.dataset}, segm AP50")
    print("| budget | checkpoint (saved at) | " + " | ".join(classes) + " | all |")
    print("|---" * (len(classes) + 3) + "|")
    for minutes, at, name, scores in rows:
        cells = " | ".join(f"{scores[c]:.1f}" for c in [*classes, "all"])
        print(f"| {minutes:g} min | {name} ({at:.1f} min) | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
