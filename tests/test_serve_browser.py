"""The web page in headless Chromium: upload a real photo, re-filter, download the COCO JSON.

Chromium is Debian's (see support.chromium). Set DENTAL_D2_SCREENSHOT=docs/serve.png to
keep the page's screenshot (that is how the README's picture is made).
"""

import io
import os

import httpx
import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from serve_support import (
    CLASSES,
    CONFIG,
    ROOT,
    build_predictor,
    serve_in_thread,
)
from support import demo_photos

from dental_d2.file_io import write_bytes
from dental_d2.serving import PredictionService, create_app

SCREENSHOT_ENV = "DENTAL_D2_SCREENSHOT"
# The config as a user types it (the page shows it).
SHOWN_CONFIG = os.path.relpath(CONFIG, ROOT)


@pytest.fixture(scope="module")
def server_url():
    service = PredictionService(build_predictor(), config_file=SHOWN_CONFIG, score_threshold=0.5)
    with serve_in_thread(create_app(service)) as url:
        yield url


def table_text(page, selector: str) -> list[str]:
    return page.locator(f"{selector} tbody tr").all_inner_texts()


def save_screenshot(page, path: str):
    """Writes a full-page screenshot as a 128-colour PNG (small enough for the README)."""
    image = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
    buffer = io.BytesIO()
    image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(buffer, "PNG", optimize=True)
    write_bytes(path, buffer.getvalue())


@pytest.mark.slow
def test_page_predicts_refilters_and_downloads(server_url, browser, tmp_path):
    photo = demo_photos()[0]
    with open(photo, "rb") as f:
        scores = httpx.post(
            f"{server_url}/predict", files={"file": f}, params={"score_threshold": 0}, timeout=60
        ).json()["instances"]
    # A slider stop above the page's first threshold (0.5) that keeps some detections and drops
    # others.
    scores = sorted(score for score in {round(a["score"], 2) for a in scores} if score > 0.5)
    assert len(scores) >= 2, scores
    higher = scores[len(scores) // 2]

    page = browser.new_page(viewport={"width": 1200, "height": 760})
    page.goto(server_url)
    page.wait_for_selector("#model-info[data-loaded]")
    info = page.inner_text("#model-info")
    assert ", ".join(CLASSES) in info and SHOWN_CONFIG in info and "random weights" in info

    page.set_input_files("#file", photo)
    page.wait_for_selector('body[data-state="ready"][data-threshold="0.50"]', timeout=60_000)
    assert page.evaluate("document.getElementById('overlay').naturalWidth") == 1024
    findings, counts = table_text(page, "#findings"), table_text(page, "#counts")
    assert len(counts) == len(CLASSES) and findings and "no findings" not in findings[0]
    # Teeth are T-numbers, and the page says they are not FDI numbers.
    assert all(row.startswith(("T", "not on a detected tooth")) for row in findings), findings
    assert "not FDI" in page.inner_text("#tooth-numbers")

    page.fill("#threshold", str(higher))
    page.wait_for_selector(f'body[data-state="ready"][data-threshold="{higher:.2f}"]')
    assert table_text(page, "#counts") != counts
    assert table_text(page, "#findings") != findings
    kept = sum(int(row.split()[-1]) for row in table_text(page, "#counts"))

    with page.expect_download() as download:
        page.click("#download")
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    coco = COCO(str(saved))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == CLASSES
    assert len(coco.getAnnIds()) == kept and kept > 0
    assert all(a["score"] > higher for a in coco.loadAnns(coco.getAnnIds()))
    assert coco.imgs[1]["file_name"] == os.path.basename(photo)

    screenshot = os.environ.get(SCREENSHOT_ENV) or str(tmp_path / "serve.png")
    save_screenshot(page, screenshot)
    with Image.open(screenshot) as shot:
        assert shot.format == "PNG" and shot.width == 1200
        assert np.asarray(shot.convert("L")).std() > 10  # a page, not a blank
    page.close()
