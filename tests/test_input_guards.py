"""Hostile or careless input met through the public tools: one `error:` line, no traceback, and
nothing overwritten. Photos as outputs, decompression bombs, far-off polygons, file names that
leave the export, broken configs, duplicate class names, and class names matplotlib would
read as math."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.text import Text
from PIL import Image
from support import assert_confusion_matrix_plot, assert_pr_curves_plot, write_split

from dental_d2 import DentalError
from dental_d2.data.image_io import MAX_IMAGE_PIXELS
from dental_d2.drawing import plain_text
from dental_d2.file_io import check_output_outside

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "quick_schedules" / "dental_demo_cpu.yaml"


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def check_dataset(load_tool):
    return load_tool("check_dataset")


@pytest.fixture
def train_net(load_tool):
    return load_tool("train_net")


# tools/visualize.py


@pytest.mark.parametrize(
    "given, output",
    [("a.jpg", "."), ("", "."), ("", "vis")],
    ids=["photo-folder", "input-folder", "inside-input-folder"],
)
def test_visualize_refuses_output_among_the_photos(load_tool, tmp_path, capsys, given, output):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.full((40, 50, 3), 200, np.uint8)).save(photos / "a.jpg")
    original = (photos / "a.jpg").read_bytes()
    output = photos / output
    visualize = load_tool("visualize")
    argv = ["--config-file", str(CONFIG), "--input", str(photos / given), "--output", str(output)]
    assert visualize.main([*argv, "MODEL.WEIGHTS", ""]) == 1
    line = one_error_line(capsys)
    assert f"--output {output} is the input folder {photos}" in line, line
    assert (photos / "a.jpg").read_bytes() == original
    assert sorted(p.name for p in photos.iterdir()) == ["a.jpg"]


def test_output_below_a_single_photos_folder_is_allowed(tmp_path):
    # `--input a.jpg --output vis` run beside the photo: nothing is overwritten or read back.
    check_output_outside(tmp_path / "vis", [], [tmp_path / "a.jpg"])
    with pytest.raises(DentalError, match="is the input folder"):
        check_output_outside(tmp_path / "vis", [tmp_path], [tmp_path / "a.jpg"])


# tools/check_dataset.py on broken exports


def test_decompression_bomb_is_named(check_dataset, make_export, capsys):
    root = make_export()
    # A 1-bit PNG of 8200x8200 white pixels: a few kB on disk, 67 megapixels decoded.
    side = int(MAX_IMAGE_PIXELS**0.5) + 200
    Image.new("1", (side, side), 1).save(root / "train" / "img1.jpg", format="PNG")
    assert (root / "train" / "img1.jpg").stat().st_size < 100_000
    assert check_dataset.main([str(root), "--name", "guard_bomb"]) == 1
    line = one_error_line(capsys)
    assert "img1.jpg: image has 8200x8200 (WxH) pixels" in line and "decompression bomb" in line


def test_polygon_far_outside_the_image_is_named(check_dataset, make_export, coco, capsys):
    # Slightly outside (2 px of 64): kept, with the box clipped to the image.
    coco["annotations"][3]["segmentation"] = [[10, 10, 66, 10, 66, 40, 10, 40]]
    coco["annotations"][3]["bbox"] = [10, 10, 56, 30]
    root = make_export(coco=coco, name="near")
    assert check_dataset.main([str(root), "--name", "guard_near"]) == 0
    assert "clipped 1 boxes that extended outside their image (annotation ids 3)" in (
        capsys.readouterr().out
    )
    # A point at x 640 of a 64x48 image was drawn on a 10x larger image.
    coco["annotations"][3]["segmentation"] = [[10, 10, 640, 10, 640, 40, 10, 40]]
    root = make_export(coco=coco, name="far")
    assert check_dataset.main([str(root), "--name", "guard_far"]) == 1
    line = one_error_line(capsys)
    assert "annotation id 3 (image id 1) has the polygon point (640, 10) far outside" in line


@pytest.mark.parametrize("kind", ["parent", "absolute"])
def test_file_name_leaving_the_export_is_refused(check_dataset, make_export, coco, capsys, kind):
    root = make_export(coco=coco)
    # The file exists, so only the path itself is at fault.
    outside = root / "img0.jpg"
    (root / "train" / "img0.jpg").rename(outside)
    coco["images"][0]["file_name"] = "../img0.jpg" if kind == "parent" else str(outside)
    (root / "train" / "_annotations.coco.json").write_text(json.dumps(coco))
    assert check_dataset.main([str(root), "--name", f"guard_{kind}"]) == 1
    line = one_error_line(capsys)
    assert "image id 0 has file_name" in line and "leaves the split's folder" in line, line


def test_duplicate_class_names_are_refused(check_dataset, make_export, coco, capsys):
    coco["categories"][2]["name"] = "Caries"
    root = make_export(splits=("train", "valid"), coco=coco)
    assert check_dataset.main([str(root), "--name", "guard_dup"]) == 1
    line = one_error_line(capsys)
    assert "class name 'Caries' is used by category ids 1, 2" in line, line
    # Roboflow names its project-level category after the project, often the class's name:
    # that one is dropped, so it is no duplicate.
    one_class = {
        "categories": [
            {"id": 0, "name": "caries", "supercategory": "none"},
            {"id": 1, "name": "caries", "supercategory": "caries"},
        ],
        "images": [{"id": 0, "file_name": "a.jpg", "height": 32, "width": 32}],
        "annotations": [
            {"id": 0, "image_id": 0, "category_id": 1, "bbox": [2, 2, 10, 10], "iscrowd": 0,
             "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]], "area": 100.0}
        ],
    }  # fmt: skip
    write_split(root.parent / "one_class", "train", one_class)
    assert check_dataset.main([str(root.parent / "one_class"), "--name", "guard_one"]) == 0
    assert "| caries" in capsys.readouterr().out


# tools/train_net.py start-up


def _write_config(path: Path, text: str) -> str:
    path.write_text(f'_BASE_: "{CONFIG}"\n{text}')
    return str(path)


@pytest.mark.parametrize(
    "body, opts, expected",
    [
        ("SOLVER:\n  BASE_LR: [0.1\n", [], "not valid YAML"),
        ('SOLVER:\n  BASE_LR: "fast"\n', [], "SOLVER.BASE_LR must be of type float, not str"),
        ("SOLVER: !!python/object/apply:os.getcwd []\n", [], "not valid YAML"),
        ("", ["SOLVER.CHECKPOINT_PERIOD", "0"], "SOLVER.CHECKPOINT_PERIOD is 0"),
        ("", ["SOLVER.CHECKPOINT_PERIOD", "-5"], "SOLVER.CHECKPOINT_PERIOD is -5"),
        ("", ["SOLVER.EARLY_STOPPING.MODE", "lowest"], "SOLVER.EARLY_STOPPING.MODE is 'lowest'"),
        ("SOLVER:\n  PLATEAU:\n    MODE: Max\n", [], "SOLVER.PLATEAU.MODE is 'Max'"),
        ("SOLVER:\n  MAX_EPOCH: 3\n", [], "unknown config key SOLVER.MAX_EPOCH; did you mean "
         "SOLVER.MAX_EPOCHS?"),
        ("", ["SOLVER.MAX_EPOCH", "3"], "unknown config key SOLVER.MAX_EPOCH; did you mean "
         "SOLVER.MAX_EPOCHS?"),
        ("", ["dental.data_root", "x"], "unknown config key dental.data_root; did you mean "
         "DENTAL.DATA_ROOT?"),
        ("", ["SOLVER.MAX_EPOCHS", "2", "SOLVER.MAX_ITER", "9"], "SOLVER.MAX_EPOCHS 2 and "
         "SOLVER.MAX_ITER 9 are both on the command line; give one of them"),
    ],
    ids=["yaml-syntax", "yaml-type", "yaml-python-tag", "period-0", "period-neg", "es-mode",
         "plateau-mode", "file-key-misspelt", "override-key-misspelt", "override-key-lowercase",
         "iter-and-epochs"],
)  # fmt: skip
def test_train_net_refuses_a_bad_config_at_start_up(
    train_net, tmp_path, capsys, body, opts, expected
):
    config = _write_config(tmp_path / "bad.yaml", body)
    argv = ["--config-file", config, *opts, "OUTPUT_DIR", str(tmp_path / "out")]
    assert train_net.main(argv) == 1
    line = one_error_line(capsys)
    assert expected in line, line
    assert not (tmp_path / "out").exists()


def test_missing_config_file_lists_the_configs_that_exist(train_net, tmp_path, capsys):
    assert train_net.main(["--config-file", str(tmp_path / "dental_r5O.yaml")]) == 1
    line = one_error_line(capsys)
    assert "dental_r5O.yaml: config file not found; pass --config-file one of" in line, line
    listed = line.split("one of ", 1)[1].split(", ")
    for config in ("dental_r50.yaml", "quick_schedules/dental_demo_cpu.yaml"):
        assert any(path.endswith(f"configs/{config}") for path in listed), line
    assert all(Path(path).is_file() for path in listed), line
    assert not any("Base-" in path for path in listed), line


def test_train_net_refuses_an_unwritable_output_dir(train_net, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    argv = ["--config-file", str(CONFIG), "OUTPUT_DIR", str(blocker / "out")]
    assert train_net.main(argv) == 1
    line = one_error_line(capsys)
    assert line.startswith(f"error: OUTPUT_DIR {blocker / 'out'}: cannot write there"), line


@pytest.mark.slow
def test_train_net_yaml_error_has_no_traceback(tmp_path):
    config = _write_config(tmp_path / "bad.yaml", "SOLVER:\n\tBASE_LR: 0.1\n")
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "train_net.py"), "--config-file", config],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {config}: not valid YAML (") and "line 3" in last, last


# empty MODEL.WEIGHTS: a random model would score, draw, rank and serve without complaint

# The demo config at a small size, for the tiny exports of conftest (classes Caries, Tooth).
TINY_MODEL = [
    "MODEL.WEIGHTS", "", "MODEL.ROI_HEADS.NUM_CLASSES", "2", "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "64", "DENTAL.CLASS_NAMES", "['Caries', 'Tooth']",
]  # fmt: skip


def test_eval_only_refuses_empty_weights(train_net, make_export, tmp_path, capsys, restore_loggers):
    root = make_export(splits=("train", "valid", "test"))
    argv = ["--config-file", str(CONFIG), "--eval-only", *TINY_MODEL, "DENTAL.DATA_ROOT", str(root),
            "DENTAL.DATASET_NAME", "guard_eval", "OUTPUT_DIR", str(tmp_path / "out")]  # fmt: skip
    assert train_net.main(argv) == 1
    line = one_error_line(capsys)
    assert line.startswith("error: MODEL.WEIGHTS is empty: evaluating (--eval-only) needs a "), line
    assert not (tmp_path / "out" / "eval").exists()


@pytest.mark.parametrize("existing", [False, True], ids=["new-output", "output-with-a-file"])
def test_a_failed_start_leaves_no_log(train_net, tmp_path, capsys, restore_loggers, existing):
    output = tmp_path / "out"
    if existing:
        output.mkdir()
        (output / "notes.txt").write_text("mine")
    argv = ["--config-file", str(CONFIG), "DENTAL.DATA_ROOT", str(tmp_path / "missing"),
            "OUTPUT_DIR", str(output)]  # fmt: skip
    assert train_net.main(argv) == 1
    assert "data root not found" in one_error_line(capsys)
    # what the start created is gone; what was there before stays
    if existing:
        assert sorted(p.name for p in output.iterdir()) == ["notes.txt"]
    else:
        assert not output.exists()


@pytest.mark.parametrize("tool, doing", [("visualize", "visualizing"), ("rank_for_labeling",
                                         "ranking"), ("serve", "serving")])  # fmt: skip
def test_tools_refuse_empty_weights(load_tool, tmp_path, capsys, tool, doing):
    photo = tmp_path / "a.jpg"
    Image.fromarray(np.full((40, 50, 3), 200, np.uint8)).save(photo)
    output = tmp_path / "out"
    argv = {
        "visualize": ["--input", str(photo), "--output", str(output)],
        "rank_for_labeling": ["--input", str(photo), "--output", str(output / "ranking.csv")],
        # Refused before anything listens; a port no socket takes, should it get that far.
        "serve": ["--port", "-1"],
    }[tool]
    main = load_tool(tool).main
    assert main(["--config-file", str(CONFIG), *argv, *TINY_MODEL]) == 1
    line = one_error_line(capsys)
    assert line.startswith(f"error: MODEL.WEIGHTS is empty: {doing} needs a trained model"), line
    assert not output.exists()


# class names with &, $ and <


def test_plain_text_keeps_dollars_out_of_mathtext():
    for name in ("$5 fee$", "x^$ & $y", "<Tooth>"):
        text = Text(text=plain_text(name))
        # what matplotlib draws, and whether it parses it as math
        assert text._preprocess_math(text.get_text()) == (name, False)


def test_report_and_plots_render_special_class_names(load_tool, tmp_path):
    names = {1: "Caries & $x^$", 2: "<Tooth>"}
    images, annotations, results = [], [], []
    for image_id in range(2):
        Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(tmp_path / f"{image_id}.jpg")
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "height": 64, "width": 64})
        for category_id, (x, y) in ((1, (4, 4)), (2, (30, 30))):
            box = [x, y, 20, 20]
            polygon = [[x, y, x + 20, y, x + 20, y + 20, x, y + 20]]
            annotations.append({"id": len(annotations), "image_id": image_id, "iscrowd": 0,
                                "category_id": category_id, "bbox": box, "area": 400.0,
                                "segmentation": polygon})  # fmt: skip
            results.append({"image_id": image_id, "category_id": category_id, "bbox": box,
                            "segmentation": polygon, "score": 0.9})  # fmt: skip
    categories = [{"id": i, "name": n, "supercategory": "none"} for i, n in names.items()]
    gt = {"images": images, "annotations": annotations, "categories": categories}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "results.json").write_text(json.dumps(results))
    evaluate = load_tool("evaluate")
    output = tmp_path / "out"
    argv = ["--gt", str(tmp_path / "gt.json"), "--predictions", str(tmp_path / "results.json")]
    assert evaluate.main([*argv, "--images", str(tmp_path), "--output", str(output)]) == 0
    page = (output / "report.html").read_text(encoding="utf-8")
    assert "Caries &amp; $x^$" in page and "&lt;Tooth&gt;" in page
    assert "<Tooth>" not in page and "\\$" not in page
    metrics = json.loads((output / "metrics.json").read_text())
    for task in ("bbox", "segm"):
        assert_pr_curves_plot(output / f"{task}_pr_curves.png", len(names))
        counts = metrics[task]["confusion_matrix"]["counts"]
        assert_confusion_matrix_plot(output / f"{task}_confusion_matrix.png", counts)
