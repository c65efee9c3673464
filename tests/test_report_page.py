"""report.html as a reader meets it: dashes where a rate means nothing, and pictures that open at
full size when clicked (in headless Chromium, `support.chromium`)."""

import json
import re

import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def report(load_tool, tmp_path):
    """tools/evaluate.py's report of 2 photos: Tooth found, Caries missed, Crack neither in the
    ground truth nor predicted."""
    names = {1: "Caries", 2: "Crack", 3: "Tooth"}
    images, annotations, results = [], [], []
    for image_id in range(2):
        Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(tmp_path / f"{image_id}.jpg")
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "height": 64, "width": 64})
        for category_id, (x, y) in ((1, (4, 4)), (3, (30, 30))):
            box = [x, y, 20, 20]
            polygon = [[x, y, x + 20, y, x + 20, y + 20, x, y + 20]]
            annotations.append({"id": len(annotations), "image_id": image_id, "iscrowd": 0,
                                "category_id": category_id, "bbox": box, "area": 400.0,
                                "segmentation": polygon})  # fmt: skip
            if category_id == 3:
                results.append({"image_id": image_id, "category_id": 3, "bbox": box,
                                "segmentation": polygon, "score": 0.9})  # fmt: skip
    categories = [{"id": i, "name": n, "supercategory": "none"} for i, n in names.items()]
    gt = {"images": images, "annotations": annotations, "categories": categories}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "results.json").write_text(json.dumps(results))
    argv = ["--gt", str(tmp_path / "gt.json"), "--predictions", str(tmp_path / "results.json"),
            "--images", str(tmp_path), "--output", str(tmp_path / "out")]  # fmt: skip
    assert load_tool("evaluate").main(argv) == 0
    return tmp_path / "out" / "report.html"


def _rows(page: str, task_title: str) -> dict[str, list[str]]:
    """Class -> the cells of its row in the task's table."""
    section = page[page.index(f"<h2>{task_title}</h2>") :]
    table = section[: section.index("</table>")]
    rows = re.findall(r"<tr><td>(.*?)</td></tr>", table)
    return {row.split("</td><td>")[0]: row.split("</td><td>")[1:] for row in rows}


def test_a_class_with_nothing_to_find_and_nothing_found_shows_dashes(report):
    page = report.read_text(encoding="utf-8")
    for title in ("Masks (segm)", "Boxes (bbox)"):
        rows = _rows(page, title)
        # ground truth, TP, FP, FN, precision, recall, F1, AP, AP50, best-F1 threshold
        assert rows["Crack"] == ["0", "0", "0", "0", "–", "–", "–", "–", "–", "–"]
        assert rows["Caries"][:7] == ["2", "0", "0", "2", "0.000", "0.000", "0.000"]
        assert rows["Tooth"][:7] == ["2", "2", "0", "0", "1.000", "1.000", "1.000"]


@pytest.mark.slow
def test_report_pictures_open_at_full_size_when_clicked(report, browser):
    page = browser.new_page(viewport={"width": 900, "height": 700})
    try:
        page.goto(report.as_uri())
        full = page.locator("#full-size")
        assert full.is_hidden()
        plot = page.locator(".plots img").first
        shown = plot.evaluate("img => [img.clientWidth, img.naturalWidth]")
        assert shown[0] < shown[1], shown  # the page shows the plot smaller than it is
        plot.click()
        assert full.is_visible()
        opened = full.locator("img").evaluate(
            "img => [img.src === document.querySelector('.plots img').src, img.clientWidth,"
            " img.naturalWidth]"
        )
        assert opened == [True, shown[1], shown[1]]
        full.click()
        assert full.is_hidden()
        # the drawn photos open the same way
        page.locator(".pair img").first.click()
        assert full.is_visible()
        page.keyboard.press("Escape")
        assert full.is_hidden()
    finally:
        page.close()
