"""Cross-validation: stratified folds, fold exports that leave the test split alone, the summary,
the tool's one-line errors, and a real 2-fold run that resumes."""

import json
import os
import random
import re
from collections import Counter

import pytest
import torch
from support import DEMO_CONFIG as CONFIG
from support import tiny_coco, tool_error_lines

from dental_d2 import DentalError
from dental_d2.cross_validation import (
    FoldRun,
    fold_assignments,
    fold_layout,
    fold_metrics,
    format_summary,
    pool_images,
    summarize_folds,
    write_fold_export,
)
from dental_d2.data.roboflow import load_roboflow_split
from dental_d2.data.synthetic import generate_synthetic_dataset
from dental_d2.evaluation.offline import load_ground_truth


@pytest.fixture
def cross_validate_tool(load_tool):
    return load_tool("cross_validate")


def _labelled_images(seed=0):
    """60 images: Tooth on most, Caries on a third, Crack on 7, Cavity on 4, 6 empty."""
    rng = random.Random(seed)
    images = []
    for i in range(60):
        classes = set()
        if i >= 6:
            classes.add("Tooth")
            if rng.random() < 0.35:
                classes.add("Caries")
        if i in (7, 11, 19, 23, 31, 40, 52):
            classes.add("Crack")
        if i in (8, 12, 33, 51):
            classes.add("Cavity")
        images.append(frozenset(classes))
    return images


def test_folds_are_stratified_disjoint_and_balanced():
    classes = _labelled_images()
    folds = fold_assignments(classes, 4, seed=1)
    assert len(folds) == len(classes) and set(folds) == {0, 1, 2, 3}
    sizes = Counter(folds)
    assert max(sizes.values()) - min(sizes.values()) <= 2, sizes
    totals = Counter(name for image in classes for name in image)
    for name, total in totals.items():
        per_fold = Counter(f for f, image in zip(folds, classes) if name in image)
        # every fold gets its share of each class, rounded either way (Cavity: 1 per fold)
        for k in range(4):
            assert abs(per_fold[k] - total / 4) < 1, (name, per_fold)
    empty_folds = Counter(f for f, image in zip(folds, classes) if not image)
    assert max(empty_folds.values()) - min(empty_folds.values(), default=0) <= 1


def test_rare_class_reaches_as_many_folds_as_it_has_images():
    classes = [frozenset({"Tooth"})] * 18 + [frozenset({"Tooth", "Crack"})] * 3
    for seed in range(5):
        folds = fold_assignments(classes, 5, seed=seed)
        assert len({f for f, image in zip(folds, classes) if "Crack" in image}) == 3
        assert set(folds) == set(range(5))


def test_folds_follow_the_seed():
    classes = _labelled_images()
    assert fold_assignments(classes, 3, seed=7) == fold_assignments(classes, 3, seed=7)
    assert fold_assignments(classes, 3, seed=7) != fold_assignments(classes, 3, seed=8)


@pytest.mark.parametrize("num_folds", [1, 0, 4])
def test_bad_number_of_folds_is_one_line(num_folds):
    with pytest.raises(DentalError, match=r"--folds .*between 2 and 3") as error:
        fold_assignments([frozenset()] * 3, num_folds)
    assert "\n" not in str(error.value)


def test_fold_exports_pool_train_and_valid_and_leave_test_alone(make_export, tmp_path):
    coco = tiny_coco(num_images=5)
    root = make_export(splits=("train", "valid", "test"), coco=coco)
    test_json = root / "test" / "_annotations.coco.json"
    before = (test_json.read_bytes(), test_json.stat().st_mtime_ns)
    images, categories = pool_images(str(root), name="cvtest")
    assert len(images) == 10
    assert {p.split for p in images} == {"train", "valid"}
    assert all(str(root / "test") not in p.image["file_name"] for p in images)
    folds = fold_assignments([p.classes for p in images], 3, seed=0)
    scored = []
    for k in range(3):
        folder = tmp_path / f"fold{k}"
        layout = fold_layout([p.classes for p in images], folds, k, seed=0)
        sizes = write_fold_export(str(folder), images, categories, layout, k)
        split_names = {}
        for split in ("train", "valid", "test"):
            data = json.loads((folder / split / "_annotations.coco.json").read_text())
            # file names stay inside the split's folder; each is the pooled image, linked in
            split_names[split] = {
                os.path.realpath(folder / split / image["file_name"]) for image in data["images"]
            }
            assert all("/" not in image["file_name"] for image in data["images"])
            assert len(data["images"]) == sizes[split] > 0
            ids = {image["id"] for image in data["images"]}
            assert {a["image_id"] for a in data["annotations"]} <= ids
            assert all(os.path.isfile(name) for name in split_names[split])
        # the fold is scored (test); the images choosing its checkpoint (valid) are others
        fold_images = {
            os.path.realpath(p.image["file_name"]) for p, f in zip(images, folds) if f == k
        }
        assert split_names["test"] == fold_images
        assert not split_names["valid"] & split_names["test"]
        assert not split_names["train"] & (split_names["valid"] | split_names["test"])
        assert sum(len(names) for names in split_names.values()) == 10
        scored += sorted(split_names["test"])
    # each image is scored in exactly one fold
    assert sorted(scored) == sorted(os.path.realpath(p.image["file_name"]) for p in images)
    assert (test_json.read_bytes(), test_json.stat().st_mtime_ns) == before


@pytest.mark.parametrize("num_folds", [2, 3, 5])
def test_the_checkpoint_is_chosen_on_other_folds_stratified(num_folds):
    classes = _labelled_images()
    folds = fold_assignments(classes, num_folds, seed=2)
    for k in range(num_folds):
        layout = fold_layout(classes, folds, k, seed=2)
        assert layout["test"] == [i for i, f in enumerate(folds) if f == k]
        assert all(folds[i] != k for i in layout["train"] + layout["valid"])
        assert sorted(layout["train"] + layout["valid"] + layout["test"]) == list(range(60))
        others = len(classes) - len(layout["test"])
        parts = max(num_folds - 1, 2)
        assert abs(len(layout["valid"]) - others / parts) <= 2, layout["valid"]
        # every class with enough images outside the fold reaches valid: it can choose on it
        counts = Counter(name for i in layout["train"] + layout["valid"] for name in classes[i])
        valid_classes = {name for i in layout["valid"] for name in classes[i]}
        assert {name for name, n in counts.items() if n >= parts} <= valid_classes


def test_too_few_images_outside_a_fold_is_one_line():
    with pytest.raises(DentalError, match=r"fold 2: 1 image outside it.*fewer --folds") as error:
        fold_layout([frozenset()] * 3, [0, 1, 1], 1)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("image_id", 999, "points at image id 999, which is not in 'images'"),
        ("category_id", 77, "has category_id 77, which is not a class in 'categories'"),
    ],
)
def test_a_broken_record_is_refused_with_the_loaders_line(
    make_export, capsys, cross_validate_tool, field, value, message
):
    coco = tiny_coco(num_images=4)
    coco["annotations"][1][field] = value
    root = make_export(splits=("train", "valid"), coco=coco)
    train_json = root / "train" / "_annotations.coco.json"
    with pytest.raises(DentalError) as training:
        load_roboflow_split(train_json)
    assert message in str(training.value)
    with pytest.raises(DentalError) as pooling:
        pool_images(str(root), name=f"cvbroken{field}")
    with pytest.raises(DentalError) as offline:
        load_ground_truth(str(train_json))
    assert str(pooling.value) == str(offline.value) == str(training.value)
    argv = ["--config-file", CONFIG, "--folds", "2", "DENTAL.DATA_ROOT", str(root)]
    assert cross_validate_tool.main(argv) == 1
    assert tool_error_lines(capsys.readouterr().err) == [f"error: {training.value}"]


def test_pooled_records_are_the_loaders_repaired_ones(make_export, caplog):
    coco = tiny_coco(num_images=3)
    # a box poking out of its 64x48 image is clipped, a 2-point polygon dropped, as training
    coco["annotations"][0]["bbox"] = [50.0, 4.0, 30.0, 10.0]
    coco["annotations"][1]["segmentation"] = [[1, 1, 5, 5]]
    root = make_export(splits=("train",), coco=coco)
    expected = load_roboflow_split(root / "train" / "_annotations.coco.json")
    images, _ = pool_images(str(root), name="cvrepaired")
    assert [len(p.annotations) for p in images] == [
        len(r["annotations"]) for r in expected.dataset_dicts
    ]
    pooled_boxes = [a["bbox"] for p in images for a in p.annotations]
    assert pooled_boxes == [a["bbox"] for r in expected.dataset_dicts for a in r["annotations"]]
    assert [50.0, 4.0, 14.0, 10.0] in pooled_boxes


def test_summary_names_the_weights_scored_and_what_chose_them(tmp_path):
    fold = FoldRun(str(tmp_path), 0, "dental")
    argv = fold.train_argv("c.yaml", [], 1)
    chosen_on = argv[argv.index("DATASETS.VALIDATION") + 1]
    scored_on = argv[argv.index("DATASETS.TEST") + 1]
    assert chosen_on == "('dental_cv1_valid',)" and scored_on == "('dental_cv1_test',)"
    assert fold.metrics_file == os.path.join(fold.folder, "eval", "dental_cv1_test", "metrics.json")
    os.makedirs(fold.folder)
    torch.save({"iteration": 7}, os.path.join(fold.folder, "model_best.pth"))
    torch.save({"iteration": 15}, os.path.join(fold.folder, "model_final.pth"))
    # checkpoints store the index of their last iteration; the iterations completed are shown
    assert fold.scored_weights() == "model_best.pth (iteration 8)"
    # no best checkpoint (the metric was never computed): the final weights were scored
    os.remove(os.path.join(fold.folder, "model_best.pth"))
    assert fold.scored_weights() == "model_final.pth (iteration 16)"
    metrics = fold_metrics(_metrics_file(tmp_path / "m.json", 40.0, 0.2, 50.0))
    entry = {"fold": 1, "num_train": 5, "num_valid": 2, "num_test": 3, "metrics": metrics}
    summary = summarize_folds([dict(entry, scored_weights=fold.scored_weights())])
    summary.update(data_root="/d", seed=0, score_threshold=0.5, iou_threshold=0.5)
    page = format_summary(summary)
    assert "| 1 | 5 | 2 | 3 | model_final.pth (iteration 16) |" in page
    assert "No scored image chose the weights it is scored with" in page


def test_pooling_needs_a_train_split(make_export):
    root = make_export(splits=("valid",))
    with pytest.raises(DentalError, match="no train/ split"):
        pool_images(str(root), name="cvnotrain")


def _metrics_file(path, ap, caries_f1, tooth_ap):
    per_class = {
        "Caries": {"precision": 0.5, "recall": 0.5, "f1": caries_f1, "AP": 10.0},
        "Tooth": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "AP": tooth_ap},
    }
    entry = {
        "coco": {"AP": ap, "AP50": 2 * ap},
        "pooled": {"precision": 0.8},
        "per_class": per_class,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"segm": entry, "bbox": entry}))
    return str(path)


def test_summary_mean_and_sample_std_skip_undefined_values(tmp_path):
    a = fold_metrics(_metrics_file(tmp_path / "a" / "metrics.json", 40.0, 0.2, None))
    b = fold_metrics(_metrics_file(tmp_path / "b" / "metrics.json", 50.0, 0.6, 80.0))
    summary = summarize_folds([{"fold": 1, "metrics": a}, {"fold": 2, "metrics": b}])
    assert summary["mean"]["segm/AP"] == pytest.approx(45.0)
    assert summary["std"]["segm/AP"] == pytest.approx(7.0710678)
    assert summary["mean"]["bbox/AP50"] == pytest.approx(90.0)
    assert summary["mean"]["segm/f1-Caries"] == pytest.approx(0.4)
    # Tooth AP is undefined in fold 1: the mean is fold 2's, with no spread
    assert summary["mean"]["segm/AP-Tooth"] == pytest.approx(80.0)
    assert summary["std"]["segm/AP-Tooth"] is None


def test_unreadable_fold_metrics_is_one_line(tmp_path):
    with pytest.raises(DentalError, match="cannot read the fold's metrics") as error:
        fold_metrics(str(tmp_path / "missing.json"))
    assert "\n" not in str(error.value)


def test_tool_bad_folds_is_one_line_error(make_export, capsys, cross_validate_tool):
    root = make_export(splits=("train", "valid"))
    argv = ["--config-file", CONFIG, "--folds", "1", "DENTAL.DATA_ROOT", str(root)]
    assert cross_validate_tool.main(argv) == 1
    err = tool_error_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("error: --folds 1"), err
    argv[3] = "7"  # 6 images pooled
    assert cross_validate_tool.main(argv) == 1
    assert "between 2 and 6" in capsys.readouterr().err


def test_tool_missing_data_root_is_one_line_error(tmp_path, capsys, cross_validate_tool):
    argv = ["--config-file", CONFIG, "--folds", "2", "DENTAL.DATA_ROOT", str(tmp_path / "none")]
    assert cross_validate_tool.main(argv) == 1
    err = tool_error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "data root not found" in err[0]


# The demo model at 96 px, 16 iterations per fold, a checkpoint every 4.
FAST = [
    "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "96",
    "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "96",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_EPOCHS", "0", "SOLVER.MAX_ITER", "16",
    "SOLVER.WARMUP_ITERS", "2", "SOLVER.CHECKPOINT_PERIOD", "4", "TEST.EVAL_PERIOD", "16",
    "DATALOADER.NUM_WORKERS", "0", "DENTAL.EVAL.NUM_VIS_IMAGES", "0",
    "TEST.IMS_PER_BATCH", "2", "DENTAL.LOG_PERIOD", "1",
]  # fmt: skip


def _losses(fold_dir):
    with open(fold_dir / "metrics.json") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [row["total_loss"] for row in rows if "total_loss" in row]


@pytest.mark.slow
def test_two_fold_run_learns_summarizes_and_resumes(tmp_path, capsys, cross_validate_tool):
    export = tmp_path / "export"
    generate_synthetic_dataset(str(export), num_train=6, num_valid=2, num_test=2, size=96, seed=5)
    output = tmp_path / "out"
    argv = [
        "--config-file", CONFIG, "--folds", "2", "--seed", "3", *FAST,
        "DENTAL.DATA_ROOT", str(export), "OUTPUT_DIR", str(output),
    ]  # fmt: skip
    assert cross_validate_tool.main(argv) == 0, capsys.readouterr().err
    assert "segm/AP:" in capsys.readouterr().out
    cv = output / "cv"
    summary = json.loads((cv / "summary.json").read_text())
    assert summary["num_folds"] == 2 and [f["num_test"] for f in summary["folds"]] == [4, 4]
    plan = json.loads((cv / "folds.json").read_text())
    for k, fold in enumerate(summary["folds"], start=1):
        # the weights scored on fold k were chosen on images of the other fold
        assert fold["chosen_on"].startswith(f"dental_cv{k}_valid")
        assert fold["scored_on"].startswith(f"dental_cv{k}_test")
        assert re.fullmatch(r"model_(best|final)\.pth \(iteration \d+\)", fold["scored_weights"])
        choosers = [i for i in plan["images"] if k in i["chooses_checkpoint_of_folds"]]
        assert len(choosers) == fold["num_valid"] > 0
        assert all(i["fold"] != k for i in choosers)
    assert {"segm/AP", "bbox/AP50", "segm/f1-Tooth", "bbox/recall-Caries"} <= set(summary["mean"])
    assert re.search(
        r"\| metric +\| fold 1 +\| fold 2 +\| mean +\| std +\|", (cv / "summary.md").read_text()
    )
    for k in (1, 2):
        losses = _losses(cv / f"fold_{k}")
        assert losses[-1] < 0.8 * losses[0], losses  # each fold learned
    # the export's test split was never read into a fold nor evaluated
    assert "/test/" not in (cv / "folds.json").read_text()
    assert not list(output.rglob("dental_test"))

    # Interrupt fold 2 after its checkpoint at iteration 4: no final weights, no metrics.
    fold1_final = (cv / "fold_1" / "model_final.pth").stat().st_mtime_ns
    fold2 = FoldRun(str(cv), 1, "dental")
    (cv / "fold_2" / "model_final.pth").unlink()
    os.remove(fold2.metrics_file)
    (cv / "fold_2" / "last_checkpoint").write_text("model_0000003.pth")
    (cv / "summary.json").unlink()
    assert cross_validate_tool.main(argv) == 0, capsys.readouterr().err
    assert (cv / "fold_1" / "model_final.pth").stat().st_mtime_ns == fold1_final
    log = (cv / "fold_2" / "log.txt").read_text()
    assert "Starting training from iteration 4" in log
    assert os.path.isfile(fold2.metrics_file)
    assert json.loads((cv / "summary.json").read_text())["num_folds"] == 2

    # other folds in the same OUTPUT_DIR are refused, in one line
    assert cross_validate_tool.main([*argv[:3], "3", *argv[4:]]) == 1
    err = tool_error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "other folds" in err[0], err


def test_real_export_folds_share_its_one_class(calculus_root):
    images, categories = pool_images(str(calculus_root), name="cvcalculus")
    counts = {}
    for split in ("train", "valid"):
        data = json.loads((calculus_root / split / "_annotations.coco.json").read_text())
        counts[split] = len(data["images"])
    assert len(images) == counts["train"] + counts["valid"]
    assert "Calculus" in {c["name"] for c in categories}
    folds = fold_assignments([p.classes for p in images], 5, seed=0)
    with_calculus = Counter(f for f, p in zip(folds, images) if "Calculus" in p.classes)
    total = sum(with_calculus.values())
    assert all(abs(with_calculus[k] - total / 5) < 1 for k in range(5)), with_calculus
    sizes = Counter(folds)
    assert max(sizes.values()) - min(sizes.values()) <= 1, sizes
