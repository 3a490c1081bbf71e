"""Inpainting in the real page (Debian's chromium, Playwright), issue 14: in the Generate tab, upload a picture into
the editor, paint over its middle with the mouse, generate with the tiny inpainting model, and get back a picture
whose unpainted corners are the input's pixels exactly and whose painted middle was repainted. Screenshots of the
editor with the painted stroke and of the result go to test-artifacts/."""

from __future__ import annotations

import io

import numpy as np
import pytest
from apphelpers import running_app
from PIL import Image
from test_browser import ARTIFACTS, CHROMIUM, LAUNCH_ARGS

from sdtune_ui.examples import EXAMPLE_DATASET

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]


def test_paint_a_mask_and_inpaint(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(exist_ok=True)
    picture = tmp_path / "picture.png"
    Image.open(EXAMPLE_DATASET / "robot_00.png").convert("RGB").resize((64, 64)).save(picture)
    with running_app(tmp_path / "data") as (ctx, url), sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.set_default_timeout(60_000)
        page.goto(url)
        page.wait_for_timeout(1500)   # let the page-load events fill the widgets first
        page.get_by_role("tab", name="Generate").click()
        model = page.locator("#gen-model input")
        model.fill("tiny-sd1-inpaint")
        model.press("Enter")
        page.locator("#gen-prompt textarea").fill("a photo of sks robot")
        steps = page.locator("#gen-steps input[type=number]")
        steps.fill("3")
        steps.press("Tab")

        page.locator("#gen-mode").get_by_text("Inpaint: paint over a picture").click()
        page.wait_for_timeout(1000)
        page.locator("#gen-editor input[type=file]").set_input_files(str(picture))
        page.locator("#gen-editor").get_by_text("Upload an image").wait_for(state="hidden")
        page.wait_for_timeout(1000)
        box = page.locator("#gen-editor canvas").first.bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(x - 20, y)           # the brush is selected: one short stroke over the robot
        page.mouse.down()
        page.mouse.move(x + 20, y, steps=8)
        page.mouse.up()
        page.wait_for_timeout(500)
        page.locator("#gen-editor").screenshot(path=str(ARTIFACTS / "generate-inpaint-mask.png"))

        page.locator("#gen-generate").click()
        page.locator("#gen-gallery img").first.wait_for(timeout=180_000)
        assert "1 image(s)" in page.locator("#gen-status").inner_text()
        data = page.request.get(page.locator("#gen-gallery img").first.get_attribute("src")).body()
        page.screenshot(path=str(ARTIFACTS / "generate-inpaint.png"), full_page=True)
        browser.close()

    out = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.int16)
    original = np.asarray(Image.open(picture), np.int16)
    assert out.shape == original.shape
    difference = np.abs(out - original).max(axis=2)
    for corner in (difference[:6, :6], difference[:6, -6:], difference[-6:, :6], difference[-6:, -6:]):
        assert corner.max() == 0                   # unpainted: the input's pixels, exactly
    assert difference[28:36, 28:36].mean() > 20     # painted: repainted by the model
    assert 0.02 < (difference > 0).mean() < 0.9     # only where the brush went
