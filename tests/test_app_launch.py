"""Launch safety: --share needs a password; the file route serves the app's data folder and nothing else."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from apphelpers import get, running_app

from sdtune_ui.ui.launcher import LaunchError, build_parser, check_args

REPO = Path(__file__).resolve().parent.parent


def test_share_without_auth_exits_with_a_message(tmp_path):
    result = subprocess.run([sys.executable, "app.py", "--share", "--data-dir", str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--share makes the app public" in result.stderr and "--auth" in result.stderr
    assert not list(tmp_path.iterdir())  # refused before anything was created


def test_auth_flags(tmp_path):
    parse = build_parser().parse_args
    assert check_args(parse(["--share", "--auth", "ann:secret"])) == [("ann", "secret")]
    assert check_args(parse(["--share", "--share-without-auth"])) is None
    assert check_args(parse([])) is None
    users = tmp_path / "users.txt"
    users.write_text("# team\nann:one\nbob:two:with-colon\n")
    assert check_args(parse(["--share", "--auth-file", str(users)])) == [("ann", "one"), ("bob", "two:with-colon")]
    for bad in (["--auth", "nopassword"], ["--share", "--auth-file", str(tmp_path / "missing.txt")]):
        with pytest.raises(LaunchError):
            check_args(parse(bad))


def test_file_route_serves_only_the_data_folder(tmp_path):
    data = tmp_path / "data"
    with running_app(data) as (ctx, url):
        inside = ctx.runs_dir / "r1" / "samples" / "s.txt"
        inside.parent.mkdir(parents=True)
        inside.write_text("a sample")
        assert get(f"{url}gradio_api/file={inside}").text == "a sample"  # the app's own files are served
        refused = ["/etc/passwd", str(REPO / "app.py"), f"{data}/../../../../etc/passwd", str(tmp_path / "x.txt")]
        (tmp_path / "x.txt").write_text("next to the data folder, not in it")
        for path in refused:
            response = get(f"{url}gradio_api/file={path}")
            assert response.status_code in (403, 404), path
            assert "root:" not in response.text and "next to the data" not in response.text


def _components(demo) -> list[dict]:
    return demo.config["components"]


def test_space_mode_hides_host_paths_and_offers_duplicate(tmp_path, monkeypatch):
    from sdtune_ui.app.jobs import JobQueue
    from sdtune_ui.app.ops import GpuInfo
    from sdtune_ui.ui.app import build_app, options_for, space_notices
    from sdtune_ui.ui.context import AppContext

    monkeypatch.setenv("SPACE_ID", "someone/sdtune")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    jobs = JobQueue()
    try:
        ctx = AppContext(tmp_path / "data", jobs, is_space=True)
        options = options_for(ctx, gpu=GpuInfo(None, 0.0))
        assert options.public and not options.allow_local_paths and options.show_duplicate
        notes = " ".join(space_notices(options))
        assert "no GPU" in notes and "HF_TOKEN" in notes
        components = _components(build_app(ctx, options))
        assert any(c["props"].get("elem_id") == "duplicate" for c in components)
        folder_box = [c for c in components if c["props"].get("label") == "...or a folder on this computer"]
        assert folder_box and folder_box[0]["props"]["visible"] is False
        data = next(c for c in components if c["props"].get("elem_id") == "cfg-data")
        assert data["props"]["allow_custom_value"] is False  # only the app's own datasets can be picked
        on_gpu = options_for(ctx, gpu=GpuInfo("NVIDIA A10G", 22.5))
        assert not on_gpu.show_duplicate and on_gpu.gpu.vram_preset == "24 GB+"
    finally:
        jobs.close()
