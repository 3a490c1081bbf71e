"""The real page in Debian's chromium (Playwright): upload images, start a run, watch the loss plot and a
sample appear, reload mid-run and find the same run progressing, cancel it. Screenshots of every tab go
to test-artifacts/."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import pytest
from apphelpers import running_app, wait_for
from PIL import Image

from sdtune_ui.examples import EXAMPLE_DATASET
from sdtune_ui.runs import RunDir

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
EXAMPLE = EXAMPLE_DATASET
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                       "(apt-get install -y chromium); `playwright install` cannot download here"),
]


def drawn_pixels(png: bytes, colour: tuple[int, int, int] = (0xF5, 0x85, 0x18)) -> int:
    """How many pixels of a screenshot have the smoothed-loss colour (i.e. the curve is really drawn)."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    return sum(1 for pixel in image.getdata() if all(abs(a - b) < 40 for a, b in zip(pixel, colour, strict=True)))


def step_of(text: str) -> int:
    found = re.search(r"step (\d+)/", text)
    return int(found.group(1)) if found else -1


def test_upload_train_reload_cancel(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(exist_ok=True)
    with running_app(tmp_path / "data") as (ctx, url), sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.set_default_timeout(30_000)
        page.goto(url)
        page.wait_for_timeout(1500)  # let the page-load events fill the form before typing into it

        # Dataset: a new dataset from uploaded images and their caption files.
        name = page.locator("#dataset-name input")
        name.fill("robots")
        name.press("Enter")
        files = sorted(str(f) for f in EXAMPLE.iterdir() if f.suffix in (".png", ".txt"))
        page.locator("#dataset-upload input[type=file]").set_input_files(files)
        page.wait_for_timeout(1000)
        page.locator("#add-images").click()
        page.wait_for_function("document.querySelector('#dataset-report textarea').value.includes('Added 8')")
        page.locator("#dataset-gallery img").first.wait_for()
        assert len(list((ctx.datasets_dir / "robots").glob("*.png"))) == 8
        page.screenshot(path=str(ARTIFACTS / "tab-dataset.png"), full_page=True)

        # Train: the form follows the new dataset; a long run so there is time to reload in the middle.
        page.get_by_role("tab", name="Train").click()
        assert "robots" in page.locator("#cfg-data input").input_value()
        for field, value in (("max_train_steps", "400"), ("validation_steps", "6")):
            box = page.locator(f"#cfg-{field} input")
            box.fill(value)
            box.press("Tab")
        page.locator("#start-training").click()
        status = page.locator("#live-status")
        page.wait_for_function("/step ([2-9]|\\d\\d+)\\//.test(document.querySelector('#live-status').innerText)",
                               timeout=90_000)
        run_id = re.search(r"(lora-[\w-]+)", status.inner_text()).group(1)
        wait_for(lambda: drawn_pixels(page.locator("#live-loss").screenshot()) > 50, 30,
                 what="the loss curve drawn in the plot")
        page.locator("#live-samples img").first.wait_for(timeout=90_000)
        page.screenshot(path=str(ARTIFACTS / "tab-train-live.png"), full_page=True)
        before = step_of(status.inner_text())

        # Reload mid-run: the page re-attaches to the same run, which kept going.
        page.reload()
        page.get_by_role("tab", name="Train").click()
        page.wait_for_function(
            f"(t => t.includes('{run_id}') && /step (\\d+)\\//.exec(t) && +/step (\\d+)\\//.exec(t)[1] > {before})"
            "(document.querySelector('#live-status').innerText)", timeout=60_000)
        assert "running" in status.inner_text()

        page.locator("#cancel-training").click()
        page.wait_for_function("document.querySelector('#live-status').innerText.includes('cancelled')",
                               timeout=60_000)
        run = ctx.runs_dir / run_id
        wait_for(lambda: (run / "checkpoints").is_dir() and any((run / "checkpoints").iterdir()), 10,
                 what="the checkpoint kept for resuming")
        page.screenshot(path=str(ARTIFACTS / "tab-train-cancelled.png"), full_page=True)
        stopped = step_of(status.inner_text())

        # Resume continues from the kept checkpoint (not from step 0); then stop it again.
        page.locator("#resume-training").click()
        page.wait_for_function(
            f"(t => t.includes('running') && /step (\\d+)\\//.exec(t) && +/step (\\d+)\\//.exec(t)[1] > {stopped})"
            "(document.querySelector('#live-status').innerText)", timeout=90_000)
        events = RunDir(run).read_events()
        cut = next(i for i, e in enumerate(events) if e.get("status") == "cancelled")
        resumed = [e["step"] for e in events[cut:] if e["kind"] == "step"]
        assert resumed and min(resumed) == stopped + 1
        page.locator("#cancel-training").click()
        page.wait_for_function("document.querySelector('#live-status').innerText.includes('cancelled')",
                               timeout=60_000)

        page.get_by_role("tab", name="Runs").click()
        page.locator("#runs-table [role=gridcell]", has_text=run_id).first.click()
        page.wait_for_function(f"document.querySelector('#runs-status').innerText.includes('{run_id}')")
        page.locator("#runs-samples img").first.wait_for()
        page.wait_for_timeout(1000)  # let the plots finish drawing for the screenshot
        page.screenshot(path=str(ARTIFACTS / "tab-runs.png"), full_page=True)
        generate = page.get_by_role("tab", name="Generate")
        if generate.count():  # the Generate tab comes with the generation package
            generate.click()
            page.wait_for_timeout(1000)
            page.screenshot(path=str(ARTIFACTS / "tab-generate.png"), full_page=True)
        browser.close()
    shutil.rmtree(tmp_path / "data", ignore_errors=True)
