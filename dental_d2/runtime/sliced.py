"""Sliced inference: a photo larger than a tile is predicted whole and in overlapping tiles, and
the lesions of both are merged; teeth come from the whole photo (`TEST.SLICED.*`).

Wraps any `Backend` (eager, ONNX Runtime, TorchScript): tiles are cut from the photo and prepared
by the wrapped backend's own `model_input`, so each tile is resized like a photo
(`INPUT.MIN_SIZE_TEST`/`MAX_SIZE_TEST`) and a small lesion is seen nearer its own resolution.

Written here rather than taken from SAHI (checked): SAHI wraps its own model classes, not a
detectron2 model prepared by this project's `model_input`, and merges by greedy box merging;
the tiling and merging below are a few lines over torchvision's `batched_nms`.
"""

import math

import numpy as np
import torch
from detectron2.structures import Boxes, Instances
from torchvision.ops import batched_nms

from ..data.categories import is_tooth_class
from ..errors import DentalError
from .base import Backend

# A tile's detection whose box comes this close (a share of the tile's side) to a side of the
# tile inside the photo is taken as cut by that side and dropped: the lesion lies whole in the
# neighbouring tile (when no larger than the overlap) or is left to the whole-photo pass.
EDGE_MARGIN = 0.01


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Where tiles start along one side: as few as give neighbours at least `overlap * tile`
    pixels in common, spread evenly so that the first starts at 0 and the last ends at `length`.

    Args:
        length (int): the photo's side, in pixels.
        tile (int): the tile's side.
        overlap (float): the least share of `tile` that neighbouring tiles share, in [0, 1).
    """
    if length <= tile:
        return [0]
    count = math.ceil((length - tile) / (tile * (1 - overlap))) + 1
    return [round(k * (length - tile) / (count - 1)) for k in range(count)]


def tile_boxes(height: int, width: int, tile: int, overlap: float) -> list[tuple[int, ...]]:
    """The tiles of a photo, (x0, y0, x1, y1) in pixels, row by row; one tile (the whole photo)
    when it is no larger than a tile.

    Args:
        height (int): the photo's height.
        width (int): the photo's width.
        tile (int): a tile's side (clipped to the photo's).
        overlap (float): see `tile_starts`.
    """
    return [
        (x0, y0, min(x0 + tile, width), min(y0 + tile, height))
        for y0 in tile_starts(height, tile, overlap)
        for x0 in tile_starts(width, tile, overlap)
    ]


def _cut_by_tile(boxes: torch.Tensor, tile: tuple[int, ...], height: int, width: int):
    """Which boxes (in photo pixels) touch a side of `tile` that lies inside the photo."""
    x0, y0, x1, y1 = tile
    margin = EDGE_MARGIN * max(x1 - x0, y1 - y0)
    cut = torch.zeros(len(boxes), dtype=torch.bool)
    if x0 > 0:
        cut |= boxes[:, 0] <= x0 + margin
    if y0 > 0:
        cut |= boxes[:, 1] <= y0 + margin
    if x1 < width:
        cut |= boxes[:, 2] >= x1 - margin
    if y1 < height:
        cut |= boxes[:, 3] >= y1 - margin
    return cut


def merge_tiles(
    whole: Instances,
    tiles: list[tuple[tuple[int, ...], Instances]],
    tooth_ids: list[int],
    nms_thresh: float,
    max_detections: int,
) -> Instances:
    """Merges the whole photo's predictions with its tiles'.

    Teeth are the whole photo's. Lesions are the whole photo's and the tiles' (less those cut
    by a tile's inner side), moved to photo pixels; of lesions of one class whose boxes overlap
    by more than `nms_thresh` IoU, the highest-scoring is kept (`batched_nms`, the box head's
    own rule). Box IoU, not mask IoU: it is what each pass already de-duplicated by, and it
    needs no full-photo mask for the many candidates that NMS drops. The `max_detections`
    highest-scoring detections are kept, their masks pasted into the photo.

    Args:
        whole (Instances): the whole photo's predictions, at its size.
        tiles (list[tuple[tuple[int, ...], Instances]]): each tile's (x0, y0, x1, y1) in the
            photo and its predictions at the tile's size.
        tooth_ids (list[int]): the classes that are teeth.
        nms_thresh (float): see above.
        max_detections (int): the most detections kept.

    Returns:
        Instances: at the photo's size, highest score first.
    """
    height, width = whole.image_size
    has_masks = whole.has("pred_masks")
    tooth_ids = torch.as_tensor(tooth_ids, dtype=torch.long)
    boxes, scores, classes = [whole.pred_boxes.tensor], [whole.scores], [whole.pred_classes]
    # Per candidate: its source (-1 the whole photo, else the tile's index) and index there.
    sources = [(-1, k) for k in range(len(whole))]
    for t, (box, found) in enumerate(tiles):
        moved = found.pred_boxes.tensor + torch.tensor([box[0], box[1], box[0], box[1]])
        lesion = ~torch.isin(found.pred_classes, tooth_ids)
        keep = torch.nonzero(lesion & ~_cut_by_tile(moved, box, height, width)).flatten()
        boxes.append(moved[keep])
        scores.append(found.scores[keep])
        classes.append(found.pred_classes[keep])
        sources += [(t, int(k)) for k in keep]
    boxes, scores, classes = torch.cat(boxes), torch.cat(scores), torch.cat(classes)
    is_lesion = torch.ones(len(boxes), dtype=torch.bool)
    is_lesion[: len(whole)] = ~torch.isin(whole.pred_classes, tooth_ids)
    lesions = torch.nonzero(is_lesion).flatten()
    kept = lesions[batched_nms(boxes[lesions], scores[lesions], classes[lesions], nms_thresh)]
    kept = torch.cat([torch.nonzero(~is_lesion).flatten(), kept])
    kept = kept[torch.argsort(scores[kept], descending=True, stable=True)][:max_detections]

    merged = Instances((height, width))
    merged.pred_boxes = Boxes(boxes[kept])
    merged.scores = scores[kept]
    merged.pred_classes = classes[kept]
    if has_masks:
        merged.pred_masks = _paste_masks(whole, tiles, [sources[k] for k in kept.tolist()])
    return merged


def _paste_masks(whole: Instances, tiles: list, picked: list[tuple[int, int]]) -> torch.Tensor:
    """The masks of the picked candidates, (source, index), at the photo's size."""
    masks = torch.zeros((len(picked), *whole.image_size), dtype=torch.bool)
    for row, (source, index) in enumerate(picked):
        if source < 0:
            masks[row] = whole.pred_masks[index]
        else:
            (x0, y0, x1, y1), found = tiles[source]
            masks[row, y0:y1, x0:x1] = found.pred_masks[index]
    return masks


class SlicedBackend(Backend):
    """Runs a backend on each photo and on its overlapping tiles, and merges their predictions
    with `merge_tiles`; a photo no larger than `TEST.SLICED.TILE_SIZE` runs whole only.

    Whole photos and tiles go to the wrapped backend's `run` `TEST.IMS_PER_BATCH` at a time.

    Args:
        backend (Backend): the runtime wrapped; its `model_input` prepares photos and tiles.
        cfg (CfgNode): the predictor's config (`TEST.SLICED.*`, `TEST.DETECTIONS_PER_IMAGE`,
            `DENTAL.FINDINGS.TOOTH_CLASSES`).
        class_names (list[str]): the model's classes, to tell teeth from lesions.
    """

    def __init__(self, backend: Backend, cfg, class_names: list[str]):
        super().__init__(cfg)
        sliced = cfg.TEST.SLICED
        if not 0 <= sliced.OVERLAP < 1 or sliced.TILE_SIZE < 1:
            raise DentalError(
                f"TEST.SLICED.TILE_SIZE {sliced.TILE_SIZE}, OVERLAP {sliced.OVERLAP}: a tile "
                "needs a side of at least 1 pixel and an overlap in [0, 1); fix the config"
            )
        self.backend = backend
        self.name = f"{backend.name}, sliced"
        self.model = getattr(backend, "model", None)
        self.tile_size = sliced.TILE_SIZE
        self.overlap = sliced.OVERLAP
        self.nms_thresh = sliced.NMS_THRESH
        self.max_detections = cfg.TEST.DETECTIONS_PER_IMAGE
        self.batch_size = max(1, cfg.TEST.IMS_PER_BATCH)
        tooth_classes = cfg.DENTAL.FINDINGS.TOOTH_CLASSES
        self.tooth_ids = [
            k for k, name in enumerate(class_names) if is_tooth_class(name, tooth_classes)
        ]

    def model_input(self, image_bgr: np.ndarray) -> dict:
        """The wrapped backend's input for the whole photo, with `tiles`: each tile's
        (x0, y0, x1, y1) and input (none when the photo is no larger than a tile)."""
        record = self.backend.model_input(image_bgr)
        height, width = image_bgr.shape[:2]
        boxes = tile_boxes(height, width, self.tile_size, self.overlap)
        record["tiles"] = [
            (box, self.backend.model_input(image_bgr[box[1] : box[3], box[0] : box[2]]))
            for box in boxes
            if len(boxes) > 1
        ]
        return record

    def run(self, inputs: list[dict]) -> list[Instances]:
        flat = []
        for record in inputs:
            flat.append({key: value for key, value in record.items() if key != "tiles"})
            flat.extend(tile_input for _, tile_input in record.get("tiles", ()))
        outputs = []
        for start in range(0, len(flat), self.batch_size):
            outputs.extend(self.backend.run(flat[start : start + self.batch_size]))
        results, position = [], 0
        for record in inputs:
            tiles = record.get("tiles", ())
            whole, found = outputs[position], outputs[position + 1 : position + 1 + len(tiles)]
            position += 1 + len(tiles)
            if not tiles:
                results.append(whole)
                continue
            pairs = [(box, instances) for (box, _), instances in zip(tiles, found)]
            results.append(
                merge_tiles(whole, pairs, self.tooth_ids, self.nms_thresh, self.max_detections)
            )
        return results
