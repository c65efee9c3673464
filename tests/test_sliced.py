"""Sliced inference (`TEST.SLICED.*`): the tiles cover the photo with their overlap, a tile's
lesions land where they are in the photo, duplicates merge, teeth come from the whole photo."""

import cv2
import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from support import CLASSES, RANDOM_DEMO_MODEL, write_split
from support import DEMO_CONFIG as CONFIG

from dental_d2 import DentalError
from dental_d2.checkpoint import CLASS_NAMES_KEY
from dental_d2.config import build_config
from dental_d2.predictor import Predictor
from dental_d2.runtime import Backend, SlicedBackend, TorchBackend
from dental_d2.runtime.sliced import tile_boxes

# The demo config's input (BGR) at 128 px (192 at most); tiles of 200 px overlapping by 25%.
SLICED = [
    *RANDOM_DEMO_MODEL,
    "DENTAL.CLASS_NAMES", str(CLASSES),
    "TEST.SLICED.ENABLED", "True",
    "TEST.SLICED.TILE_SIZE", "200",
    "TEST.SLICED.OVERLAP", "0.25",
    "TEST.IMS_PER_BATCH", "4",
]  # fmt: skip
CARIES, CAVITY, TOOTH = CLASSES.index("Caries"), CLASSES.index("Cavity"), CLASSES.index("Tooth")
# Pure BGR colours the square finder below reads as classes.
COLOURS = {CARIES: (0, 0, 255), CAVITY: (255, 0, 0), TOOTH: (0, 255, 0)}


class SquareFinder(Backend):
    """A test double of a model: finds each square of a class colour in its (resized) input,
    at least 4 input pixels wide, and returns it at the original size. Seen at a finer scale,
    a square scores higher (as small objects do for a detector), so a tile's detection outranks
    the whole photo's. Every `run` call's input sizes are recorded."""

    name = "squares"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.calls = []

    def run(self, inputs):
        self.calls.append([(record["height"], record["width"]) for record in inputs])
        return [self._find(record) for record in inputs]

    def _find(self, record):
        image = record["image"].permute(1, 2, 0).numpy()
        height, width = record["height"], record["width"]
        scale = width / image.shape[1]
        boxes, classes = [], []
        for class_id, colour in COLOURS.items():
            match = (np.abs(image - np.asarray(colour)).max(axis=2) < 100).astype(np.uint8)
            count, _, stats, _ = cv2.connectedComponentsWithStats(match)
            for x, y, w, h, _ in stats[1:count]:
                if min(w, h) >= 4:
                    boxes.append([x * scale, y * scale, (x + w) * scale, (y + h) * scale])
                    classes.append(class_id)
        instances = Instances((height, width))
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        instances.scores = torch.full((len(boxes),), 0.5 + 0.4 * min(1.0, 1 / scale))
        instances.pred_classes = torch.tensor(classes, dtype=torch.long)
        masks = torch.zeros((len(boxes), height, width), dtype=torch.bool)
        for row, (x0, y0, x1, y1) in enumerate(instances.pred_boxes.tensor.round().int().tolist()):
            masks[row, y0:y1, x0:x1] = True
        instances.pred_masks = masks
        return instances


def photo(squares, height=400, width=600):
    """A grey BGR photo with filled squares: (class id, x0, y0, x1, y1) each."""
    image = np.full((height, width, 3), 128, dtype=np.uint8)
    for class_id, x0, y0, x1, y1 in squares:
        image[y0:y1, x0:x1] = COLOURS[class_id]
    return image


@pytest.fixture
def sliced():
    cfg = build_config(CONFIG, SLICED)
    finder = SquareFinder(cfg)
    return SlicedBackend(finder, cfg, CLASSES), finder


@pytest.mark.parametrize("height, width", [(400, 600), (1365, 2048), (201, 200), (999, 1001)])
def test_tiles_cover_the_photo_and_overlap_by_the_share_asked(height, width):
    tile, overlap = 200, 0.25
    boxes = tile_boxes(height, width, tile, overlap)
    covered = np.zeros((height, width), dtype=int)
    for x0, y0, x1, y1 in boxes:
        assert x1 - x0 == min(tile, width) and y1 - y0 == min(tile, height)
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1
    xs, ys = sorted({b[0] for b in boxes}), sorted({b[1] for b in boxes})
    for starts, length in ((xs, width), (ys, height)):
        # Neighbours share at least a quarter of a tile...
        assert all(tile - gap >= overlap * tile for gap in np.diff(starts))
        # ... and one tile fewer could not: its neighbours would share less.
        if len(starts) > 2:
            assert (length - tile) / (len(starts) - 2) > tile * (1 - overlap)
    assert len(boxes) == len(xs) * len(ys)


def test_a_photo_no_larger_than_a_tile_runs_whole_only(sliced):
    backend, finder = sliced
    image = photo([(CARIES, 20, 20, 60, 60), (TOOTH, 100, 100, 180, 180)], 200, 190)
    (result,) = backend([image])
    assert finder.calls == [[(200, 190)]]
    expected = finder.run([finder.model_input(image)])[0]
    assert result.pred_boxes.tensor.tolist() == expected.pred_boxes.tensor.tolist()
    assert result.scores.tolist() == expected.scores.tolist()


def test_lesions_from_tiles_land_in_place_merged_and_teeth_come_from_the_whole_photo(sliced):
    backend, finder = sliced
    squares = [
        # 8 px: under 4 input pixels in the whole photo (x0.32), seen in 4 tiles (x0.64).
        (CARIES, 300, 150, 308, 158),
        # Cut by the side of the first tile (x 0-200), whole in the second (x 133-333).
        (CAVITY, 190, 30, 215, 55),
        (TOOTH, 20, 250, 100, 330),
        (TOOTH, 450, 250, 530, 330),
    ]
    (result,) = backend([photo(squares)])

    # The whole photo and 4 x 3 tiles of 200 px, 4 at a time (TEST.IMS_PER_BATCH).
    sizes = [size for call in finder.calls for size in call]
    assert [len(call) for call in finder.calls] == [4, 4, 4, 1]
    assert sizes == [(400, 600)] + [(200, 200)] * 12
    assert result.image_size == (400, 600)
    assert result.pred_masks.shape == (4, 400, 600)
    assert result.scores.tolist() == sorted(result.scores.tolist(), reverse=True)

    by_class = {c: [k for k in range(len(result)) if result.pred_classes[k] == c] for c in COLOURS}
    assert [len(by_class[c]) for c in (CARIES, CAVITY, TOOTH)] == [1, 1, 2]
    whole = finder.run([finder.model_input(photo(squares))])[0]
    for class_id, *box in squares:
        k = min(by_class[class_id], key=lambda k: abs(result.pred_boxes.tensor[k, 0] - box[0]))
        # Within 1.3 input pixels of the pass that found it (a tile's 0.64, the photo's 0.32).
        atol = 4.0 if class_id == TOOTH else 2.0
        expected_box = torch.tensor(box, dtype=torch.float32)
        torch.testing.assert_close(result.pred_boxes.tensor[k], expected_box, atol=atol, rtol=0)
        ys, xs = torch.nonzero(result.pred_masks[k], as_tuple=True)
        assert abs(xs.float().mean().item() - (box[0] + box[2]) / 2) < atol
        assert abs(ys.float().mean().item() - (box[1] + box[3]) / 2) < atol
        # Teeth keep the whole photo's score; lesions have the tiles' (a finer scale).
        expected = whole.scores[0] if class_id == TOOTH else 0.5 + 0.4 * 0.64
        assert result.scores[k].item() == pytest.approx(float(expected), abs=1e-6)


def test_detections_per_image_keeps_the_highest_scores():
    cfg = build_config(CONFIG, [*SLICED, "TEST.DETECTIONS_PER_IMAGE", "2"])
    finder = SquareFinder(cfg)
    squares = [(CARIES, 300, 150, 308, 158), (TOOTH, 20, 250, 100, 330), (CARIES, 40, 40, 48, 48)]
    (result,) = SlicedBackend(finder, cfg, CLASSES)([photo(squares)])
    # The two small caries, from tiles, outscore the tooth from the whole photo.
    assert result.pred_classes.tolist() == [CARIES, CARIES]


def test_a_bad_tile_config_is_named():
    cfg = build_config(CONFIG, [*SLICED, "TEST.SLICED.OVERLAP", "1.0"])
    with pytest.raises(DentalError, match="TEST.SLICED"):
        SlicedBackend(SquareFinder(cfg), cfg, CLASSES)


def test_predictor_runs_the_eager_model_on_tiles():
    torch.manual_seed(0)
    predictor = Predictor(
        CONFIG,
        opts=[*SLICED, "TEST.SLICED.TILE_SIZE", "160", "TEST.DETECTIONS_PER_IMAGE", "5"],
        confidence_threshold=0.0,
    )
    assert isinstance(predictor.backend, SlicedBackend)
    assert isinstance(predictor.backend.backend, TorchBackend)
    assert predictor.model is predictor.backend.backend.model
    wrapped, sizes = predictor.backend.backend, []
    real_run = wrapped.run

    def counting_run(inputs):
        sizes.extend(record["height"] for record in inputs)
        return real_run(inputs)

    wrapped.run = counting_run
    image = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    result = predictor.predict(image)
    # The whole photo and 3 x 3 tiles of 160 px (each seen at 128 px).
    assert sizes == [300] + [160] * 9
    assert result.image_size == (300, 400) and result.pred_masks.shape[1:] == (300, 400)
    assert 0 < len(result) <= 5
    small = image[:150, :160]
    torch.testing.assert_close(
        predictor.predict(small).pred_boxes.tensor, wrapped([small])[0].pred_boxes.tensor
    )


@pytest.mark.slow
def test_bench_sliced_scores_a_split_whole_and_sliced(tmp_path, load_tool, capsys):
    torch.manual_seed(0)
    model = build_model(build_config(CONFIG, RANDOM_DEMO_MODEL))
    weights = tmp_path / "model_final.pth"
    torch.save({"model": model.state_dict(), CLASS_NAMES_KEY: {"thing_classes": CLASSES}}, weights)
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(CLASSES)]
    images = [{"id": k, "file_name": f"{k}.jpg", "height": 300, "width": 400} for k in range(2)]
    box = [100, 100, 60, 50]
    annotations = [
        {"id": k + 1, "image_id": k, "category_id": 4, "bbox": box, "area": 3000.0,
         "segmentation": [[100, 100, 160, 100, 160, 150, 100, 150]], "iscrowd": 0}
        for k in range(2)
    ]  # fmt: skip
    coco = {"images": images, "annotations": annotations, "categories": categories}
    split = write_split(tmp_path, "test", coco).parent

    code = load_tool("bench_sliced", "benchmarks").main(
        ["--config-file", CONFIG, "--split", str(split), "--score-threshold", "0.0",
         *RANDOM_DEMO_MODEL[:2], *RANDOM_DEMO_MODEL[4:], "MODEL.WEIGHTS", str(weights),
         "TEST.SLICED.TILE_SIZE", "160"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == "2 photos; AP50 in percent"
    header = "| class | segm AP50 whole | segm AP50 sliced | bbox AP50 whole | bbox AP50 sliced |"
    assert lines[1] == header
    assert [line.split(" | ")[0] for line in lines[3:]] == [
        *(f"| {name}" for name in CLASSES),
        "| all",
        "| s per photo",
        "| passes per photo",
    ]
    # The whole photo and 3 x 3 tiles of 160 px.
    assert lines[-1] == "| passes per photo | 1.00 | 10.00 | 1.00 | 10.00 |"

    # --limit scores the first photos against their own ground truth only: the photo left out
    # must not count as missed.
    bench = load_tool("bench_sliced", "benchmarks")
    scored = []
    real_evaluate = bench.evaluate_task

    def recording_evaluate(coco_gt, results, iou_type):
        scored.append((sorted(coco_gt.getImgIds()), len(coco_gt.getAnnIds())))
        return real_evaluate(coco_gt, results, iou_type)

    bench.evaluate_task = recording_evaluate
    code = bench.main(
        ["--config-file", CONFIG, "--split", str(split), "--score-threshold", "0.0", "--limit",
         "1", *RANDOM_DEMO_MODEL[:2], *RANDOM_DEMO_MODEL[4:], "MODEL.WEIGHTS", str(weights)]
    )  # fmt: skip
    assert code == 0 and capsys.readouterr().out.startswith("1 photos;")
    assert scored == [([0], 1)] * 4  # segm and bbox, whole and sliced
