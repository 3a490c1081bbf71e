"""The upload folder is cleaned after each use, on a schedule and under a cap; wrong passwords are braked."""

from __future__ import annotations

import os
import time

import httpx
import pytest
from apphelpers import running_app

from sdtune_ui.app.logins import LoginThrottle, TooManyAttempts, password_checker
from sdtune_ui.app.uploads import UploadFolder, parse_size

gradio_client = pytest.importorskip("gradio_client")
MB = 1024 * 1024


def upload(root, name: str, size: int, age_s: float = 0.0):
    """A file as Gradio leaves an upload: in a folder of its own, `age_s` seconds old."""
    path = root / f"hash-{name}" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def test_sweep_removes_old_uploads_then_the_oldest_over_the_cap(tmp_path):
    folder = UploadFolder(tmp_path / "uploads", max_age_s=3600, max_bytes=10 * MB)
    stale = upload(folder.root, "never-used.zip", 3 * MB, age_s=7200)
    old, newer, newest = (upload(folder.root, f"{n}.zip", 4 * MB, age_s=age) for n, age in
                          (("old", 300), ("newer", 200), ("newest", 100)))
    assert folder.sweep() == 2  # the stale one, then the oldest until 8 MB of 12 MB fit under 10 MB
    assert not stale.exists() and not old.exists() and newer.exists() and newest.exists()
    assert not stale.parent.exists()  # Gradio's per-upload folder goes with it
    assert folder.total_bytes() == 8 * MB
    assert folder.sweep(incoming=4 * MB) == 1 and not newer.exists() and newest.exists()  # room for the next upload
    assert parse_size("500mb") == 500 * MB and parse_size("2GB") == 2048 * MB and parse_size("1000") == 1000


def test_discard_removes_handled_uploads_only_inside_the_folder(tmp_path):
    folder = UploadFolder(tmp_path / "uploads")
    handled = upload(folder.root, "photos.zip", 100)
    outside = tmp_path / "precious.txt"
    outside.write_text("not an upload")
    assert folder.discard([str(handled), str(outside), None, str(folder.root)]) == 1
    assert not handled.exists() and not handled.parent.exists() and outside.exists() and folder.root.is_dir()


def test_the_app_deletes_an_upload_once_added_and_sweeps_before_each_upload(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "uploads"))  # a 3 MB cap must not sweep other tests' files
    with running_app(tmp_path / "data", "--upload-cap", "3mb") as (ctx, url):
        root = ctx.uploads.root
        assert root == tmp_path / "uploads"
        from sdtune_ui.app.uploads import app_upload_folder

        assert not app_upload_folder(ctx.data_dir).is_relative_to(ctx.data_dir)  # never served as the data folder
        client = gradio_client.Client(url, verbose=False)
        import zipfile

        from PIL import Image

        picture = tmp_path / "robot.png"
        Image.new("RGB", (64, 64), (200, 30, 30)).save(picture)
        archive = tmp_path / "photos.zip"
        with zipfile.ZipFile(archive, "w") as zipped:
            zipped.write(picture, "robot.png")
        _, report, *_ = client.predict(name="mine", files=[gradio_client.handle_file(str(archive))], local="",
                                       api_name="/add_images")
        assert "Added 1 image(s)" in report and len(list((ctx.datasets_dir / "mine").glob("*.png"))) == 1
        assert not list(root.rglob("photos.zip"))  # the uploaded zip went once it was added
        # Never used uploads: the folder keeps under its cap (3 MB) as more arrive.
        for index in range(3):
            big = tmp_path / f"big{index}.bin"
            big.write_bytes(os.urandom(2 * MB))
            httpx.post(f"{url}gradio_api/upload", files={"files": (big.name, big.read_bytes())}, timeout=30)
        assert ctx.uploads.total_bytes() <= 3 * MB + 2 * MB  # the cap, plus the one just written
        assert len(list(root.rglob("big*.bin"))) <= 2


def test_throttle_waits_longer_after_each_failure_and_forgets_a_good_login():
    now = [0.0]
    throttle = LoginThrottle(clock=lambda: now[0])
    for _ in range(5):
        assert throttle.wait_s("ann", "1.2.3.4") == 0
        throttle.record("ann", "1.2.3.4", ok=False)
    assert throttle.wait_s("ann", "1.2.3.4") == pytest.approx(30)
    assert throttle.wait_s("ann", "5.6.7.8") == 0  # another address is not braked by this one's failures
    now[0] = 31.0
    throttle.record("ann", "1.2.3.4", ok=False)
    assert throttle.wait_s("ann", "1.2.3.4") == pytest.approx(60)  # doubled
    now[0] = 200.0
    throttle.record("ann", "1.2.3.4", ok=True)
    assert throttle.wait_s("ann", "1.2.3.4") == 0
    for index in range(20):  # many addresses, one user: the user waits
        throttle.record("ann", f"10.0.0.{index}", ok=False)
    assert throttle.wait_s("ann", "10.0.0.99") > 0


def test_password_check_refuses_without_looking_while_braked():
    throttle = LoginThrottle()
    check = password_checker([("ann", "right")], throttle, lambda: "1.2.3.4")
    assert check("ann", "right") and not check("ann", "wrong") and not check("nobody", "right")
    for _ in range(4):  # the fifth wrong password
        assert not check("ann", "wrong")
    with pytest.raises(TooManyAttempts, match="try again in"):
        check("ann", "right")


def test_fifty_rapid_wrong_passwords_are_braked(tmp_path):
    with running_app(tmp_path / "data", "--auth", "ann:right-password") as (ctx, url):
        codes = []
        started = time.monotonic()
        for index in range(50):
            response = httpx.post(f"{url}login", data={"username": "ann", "password": f"guess-{index}"}, timeout=10)
            codes.append(response.status_code)
        assert time.monotonic() - started < 30
        assert codes.count(400) == 5 and codes.count(429) == 45, codes  # only 5 guesses were ever checked
        braked = httpx.post(f"{url}login", data={"username": "ann", "password": "right-password"}, timeout=10)
        assert braked.status_code == 429 and "try again in" in braked.text
        # Someone else (another address) still gets in: the brake is per user and address first.
        other = httpx.post(f"{url}login", data={"username": "ann", "password": "right-password"},
                           headers={"X-Forwarded-For": "203.0.113.9"}, timeout=10)
        assert other.status_code == 200
