"""Specification of ingest: untrusted uploads, zips, folders and Hub datasets into a folder we control."""

from __future__ import annotations

import io
import json
import os
import stat
import struct
import threading
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from sdtune_ui.data.formats import read_captions
from sdtune_ui.data.hub import ingest_hub_dataset, push_dataset_to_hub, scrub
from sdtune_ui.data.ingest import IngestLimits, ingest, new_dataset_dir
from sdtune_ui.errors import SdtuneError

RED, BLUE = (255, 0, 0), (0, 0, 255)


def png(colour=RED, size=(64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def jpeg(colour=BLUE, size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def make_zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def all_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("SDTUNE_HOME", str(tmp_path / "home"))


def test_loose_files_keep_a_readable_name_and_are_paired_with_their_txt_captions(tmp_path):
    src = tmp_path / "upload"
    src.mkdir()
    (src / "cat photo.png").write_bytes(png(RED))
    (src / "cat photo.txt").write_text("a red cat\n")
    (src / "dog.jpg").write_bytes(jpeg(BLUE))
    out = tmp_path / "ds"
    report = ingest([src / "cat photo.png", src / "cat photo.txt", src / "dog.jpg"], out)
    assert report.ok and not report.rejected
    assert [(k.file, k.caption) for k in report.kept] == [("cat-photo.png", "a red cat"), ("dog.jpg", None)]
    assert all_files(out) == {"cat-photo.png", "cat-photo.txt", "dog.jpg", "metadata.jsonl", ".sdtune-pixels.json"}
    assert Image.open(out / "cat-photo.png").getpixel((3, 3)) == RED
    assert read_captions(out) == {"cat-photo.png": "a red cat"}
    assert json.loads((out / "metadata.jsonl").read_text()) == {"file_name": "cat-photo.png", "text": "a red cat"}


def test_bad_files_are_refused_with_reasons_and_good_ones_kept(tmp_path):
    src = tmp_path / "mixed"
    src.mkdir()
    (src / "good.png").write_bytes(png())
    (src / "empty.png").write_bytes(b"")
    (src / "notes.png").write_text("not a picture at all")
    (src / "half.jpg").write_bytes(jpeg()[:200])
    (src / "drawing.eps").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n")
    report = ingest(src, tmp_path / "ds")
    assert [k.source for k in report.kept] == ["mixed/good.png"]
    reasons = {r.source: r.reason for r in report.rejected}
    assert reasons["mixed/empty.png"] == "empty file (0 bytes)"
    assert "not an image" in reasons["mixed/notes.png"]
    assert "truncated" in reasons["mixed/half.jpg"] or "corrupt" in reasons["mixed/half.jpg"]
    assert "not a supported image type .eps" in reasons["mixed/drawing.eps"]
    json.dumps(report.to_dict())  # the UI gets it as JSON
    text = report.to_text()
    assert "Added 1 image(s)" in text and "empty file (0 bytes)" in text


def test_zip_with_metadata_jsonl_in_a_subfolder_pairs_captions(tmp_path):
    archive = make_zip(tmp_path / "set.zip", {
        "photos/a.png": png(RED),
        "photos/b.png": png(BLUE),
        "photos/metadata.jsonl": b'{"file_name": "a.png", "text": "red square"}\n'
                                 b'{"file_name": "b.png", "caption": "blue square"}\n',
        "__MACOSX/photos/._a.png": b"junk",
        ".DS_Store": b"junk",
    })
    report = ingest(archive, tmp_path / "ds")
    assert [k.caption for k in report.kept] == ["red square", "blue square"]
    assert not report.rejected
    assert read_captions(tmp_path / "ds") == {"a.png": "red square", "b.png": "blue square"}


def test_zip_entry_with_dotdot_absolute_path_or_symlink_writes_nothing_outside_target(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    archive = work / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../evil.txt", b"escaped")
        zf.writestr("../../evil.png", png())
        zf.writestr("/tmp/abs_evil.png", png())
        zf.writestr("C:/Windows/evil.png", png())
        link = zipfile.ZipInfo("link.png")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
        zf.writestr("fine.png", png())
    before = all_files(tmp_path)
    out = work / "ds"
    report = ingest(archive, out)
    assert [k.source for k in report.kept] == ["evil.zip:fine.png"]
    reasons = {r.source: r.reason for r in report.rejected}
    assert "outside the dataset folder" in reasons["evil.zip:../evil.txt"]
    assert "outside the dataset folder" in reasons["evil.zip:../../evil.png"]
    assert "absolute path" in reasons["evil.zip:/tmp/abs_evil.png"]
    assert "absolute path" in reasons["evil.zip:C:/Windows/evil.png"]
    assert "symbolic link" in reasons["evil.zip:link.png"]
    assert all_files(tmp_path) - before == {"work/ds/fine.png", "work/ds/.sdtune-pixels.json"}
    assert not Path("/tmp/abs_evil.png").exists()


def test_zip_bomb_is_refused_quickly_without_filling_the_disk(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("zeros.png", "w") as entry:
        chunk = b"\0" * (1 << 20)
        for _ in range(200):  # 200 MB of zeros, about 200 KB compressed; streamed, never in memory
            entry.write(chunk)
    assert archive.stat().st_size < 1_000_000
    start = time.monotonic()
    report = ingest(archive, tmp_path / "ds")
    assert time.monotonic() - start < 2
    assert not report.ok
    assert "zip bomb" in report.rejected[0].reason
    assert sum(p.stat().st_size for p in (tmp_path / "ds").rglob("*")) == 0


def test_zip_with_ten_thousand_entries_is_refused_by_the_entry_cap(tmp_path):
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(10_000):
            zf.writestr(f"{i}.png", b"")
    start = time.monotonic()
    report = ingest(archive, tmp_path / "ds")
    assert time.monotonic() - start < 2
    assert not report.ok and "10000 entries" in report.rejected[0].reason
    assert all_files(tmp_path / "ds") == set()


def test_total_uncompressed_size_cap_refuses_the_archive(tmp_path):
    archive = make_zip(tmp_path / "big.zip", {f"{i}.png": png() for i in range(5)})
    report = ingest(archive, tmp_path / "ds", limits=IngestLimits(max_total_bytes=300))
    assert not report.ok and "would expand to" in report.rejected[0].reason


def test_zip_entry_whose_header_understates_its_size_is_not_trusted(tmp_path):
    archive = make_zip(tmp_path / "liar.zip", {"big.png": b"\0" * 3_000_000, "ok.png": png()})
    data = bytearray(archive.read_bytes())
    # Rewrite the uncompressed size of big.png to 1000 bytes, in the local header and central directory.
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        pos = data.find(signature)
        while pos >= 0:
            name_len_at = 26 if signature == b"PK\x03\x04" else 28
            name_start = pos + (30 if signature == b"PK\x03\x04" else 46)
            (name_len,) = struct.unpack("<H", data[pos + name_len_at : pos + name_len_at + 2])
            if data[name_start : name_start + name_len] == b"big.png":
                data[pos + offset : pos + offset + 4] = struct.pack("<I", 1000)
            pos = data.find(signature, pos + 4)
    archive.write_bytes(bytes(data))
    assert zipfile.ZipFile(archive).getinfo("big.png").file_size == 1000
    report = ingest(archive, tmp_path / "ds")
    assert [k.source for k in report.kept] == ["liar.zip:ok.png"]
    assert "damaged archive entry" in {r.source: r.reason for r in report.rejected}["liar.zip:big.png"]


def test_zip_inside_a_folder_and_unusual_compression_are_refused(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    make_zip(src / "inner.zip", {"a.png": png()})
    with zipfile.ZipFile(tmp_path / "bz.zip", "w", zipfile.ZIP_BZIP2) as zf:
        zf.writestr("a.png", png())
    report = ingest([src, tmp_path / "bz.zip"], tmp_path / "ds")
    reasons = {r.source: r.reason for r in report.rejected}
    assert "not opened" in reasons["src/inner.zip"]
    assert "compression method" in reasons["bz.zip:a.png"]
    assert not report.ok


def test_folder_symlinks_are_not_followed(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (tmp_path / "secret.png").write_bytes(png())
    os.symlink(tmp_path / "secret.png", src / "link.png")
    (src / "real.png").write_bytes(png())
    report = ingest(src, tmp_path / "ds")
    assert [k.source for k in report.kept] == ["src/real.png"]
    assert "symbolic links" in report.rejected[0].reason


def test_adding_the_same_folder_twice_skips_the_pictures_already_there(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(png(RED))
    (src / "b.jpg").write_bytes(jpeg(BLUE))  # JPEG is re-encoded on the way in: matched by its source pixels
    out = tmp_path / "ds"
    first = ingest(src, out)
    second = ingest(src, out)
    assert [k.file for k in first.kept] == ["a.png", "b.jpg"]
    assert second.kept == [] and second.ok
    assert [(s.source, s.file) for s in second.skipped] == [("src/a.png", "a.png"), ("src/b.jpg", "b.jpg")]
    assert "skipped 2 already in the dataset" in second.to_text()
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["a.png", "b.jpg"]


def test_same_picture_under_another_name_or_format_is_skipped_and_a_new_one_with_a_taken_name_is_numbered(tmp_path):
    out = tmp_path / "ds"
    (tmp_path / "a.png").write_bytes(png(RED))
    ingest(tmp_path / "a.png", out)
    (out / "by-hand.png").write_bytes(png(BLUE))  # put there without ingest: hashed from disk
    other = tmp_path / "other"
    other.mkdir()
    (other / "copy.bmp").write_bytes(_encode(Image.new("RGB", (64, 64), RED), "BMP"))
    (other / "blue.png").write_bytes(png(BLUE))
    (other / "a.png").write_bytes(png((0, 255, 0)))  # a different picture with a name already taken
    report = ingest(other, out)
    assert sorted((s.source, s.file) for s in report.skipped) == [("other/blue.png", "by-hand.png"),
                                                                  ("other/copy.bmp", "a.png")]
    assert [k.file for k in report.kept] == ["a-2.png"]


def test_uploaded_names_are_made_safe_but_stay_readable(tmp_path):
    from sdtune_ui.data.placement import readable_stem

    assert readable_stem("My Cat (2).JPG") == "My-Cat-2"
    assert readable_stem("../../.hidden.png") == "hidden"
    assert readable_stem("CON.png") == "CON-image"
    assert readable_stem("katze_über.png") == "katze_über"
    assert readable_stem("photo-masklabel.png") == "photo-image"  # never renamed into a mask
    assert readable_stem("\x00\x1b[31m.png") == "31m"
    assert len(readable_stem("x" * 500 + ".png")) == 60
    assert readable_stem("%%%.png") == "image"


def _encode(image, fmt):
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def test_dreambooth_dataset_info_is_carried_over(tmp_path):
    archive = make_zip(tmp_path / "db.zip", {
        "a.png": png(),
        "dataset_info.json": b'{"instance_prompt": "a photo of sks dog", "class_prompt": "a photo of dog"}',
    })
    report = ingest(archive, tmp_path / "ds")
    assert report.ok and not report.rejected
    info = json.loads((tmp_path / "ds" / "dataset_info.json").read_text())
    assert info == {"instance_prompt": "a photo of sks dog", "class_prompt": "a photo of dog"}


def test_progress_is_reported_per_image_and_cancel_stops_early(tmp_path):
    for i in range(4):
        (tmp_path / f"{i}.png").write_bytes(png((60 * i, 0, 0)))  # different pictures: copies would be skipped
    stop = threading.Event()
    seen = []

    def progress(done, total):
        seen.append((done, total))
        if done == 2:
            stop.set()

    report = ingest(sorted(tmp_path.glob("*.png")), tmp_path / "ds", progress=progress, cancel=stop)
    assert seen == [(1, 4), (2, 4)]
    assert report.cancelled and len(report.kept) == 2 and "cancelled" in report.to_text()


def test_small_images_are_kept_with_a_warning(tmp_path):
    (tmp_path / "tiny.png").write_bytes(png(size=(40, 40)))
    report = ingest(tmp_path / "tiny.png", tmp_path / "ds", resolution=512)
    assert report.ok and "smaller than training resolution" in report.kept[0].warnings[0]


def test_new_dataset_dir_is_under_the_project_home_with_a_safe_unique_name(tmp_path):
    first = new_dataset_dir("../../my set")
    second = new_dataset_dir("../../my set")
    home = tmp_path / "home" / "datasets"
    assert first.parent == home and second.parent == home and first != second
    assert first.name == "my-set"


# ---- Hub datasets ---------------------------------------------------------------------------------


def _local_hub_dataset():
    import datasets

    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    return datasets.Dataset.from_dict(
        {"image": [Image.new("RGB", (32, 32), RED), Image.new("RGBA", (32, 32), (0, 0, 255, 0))],
         "caption": ["red", "clear"]},
        features=features,
    )


def test_hub_dataset_rows_are_checked_and_written_with_captions(tmp_path):
    report = ingest_hub_dataset(_local_hub_dataset(), tmp_path / "ds")
    assert [(k.file, k.caption) for k in report.kept] == [("0001.png", "red"), ("0002.png", "clear")]
    assert Image.open(tmp_path / "ds" / "0002.png").getpixel((1, 1)) == (255, 255, 255)  # alpha on white
    assert read_captions(tmp_path / "ds") == {"0001.png": "red", "0002.png": "clear"}


def test_hub_dataset_by_name_is_streamed_and_only_the_rows_ingested_are_read(tmp_path, monkeypatch):
    """A big split is not downloaded whole: the import reads the rows it keeps (and one more, to say there are more)."""
    import datasets

    calls, pulled = [], []

    def rows():
        for index in range(1000):
            pulled.append(index)
            colour = (index % 256, index // 256, 0)   # each row its own: identical images are kept once
            yield {"image": Image.new("RGB", (32, 32), colour), "caption": f"row {index}"}

    def fake_load(name, config=None, split=None, token=None, streaming=False):
        calls.append((name, config, split, token, streaming))
        return datasets.IterableDataset.from_generator(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    report = ingest_hub_dataset("someone/pets", tmp_path / "ds", token="hf_abcdefghijklmnop", max_images=2)
    assert calls == [("someone/pets", None, "train", "hf_abcdefghijklmnop", True)]
    assert [(k.source, k.caption) for k in report.kept] == [("someone/pets[0]", "row 0"), ("someone/pets[1]", "row 1")]
    assert len(pulled) <= 3   # the columns come from the first row when the stream does not describe them

    pulled.clear()
    limited = ingest_hub_dataset("someone/pets", tmp_path / "ds2", limits=IngestLimits(max_files=3))
    assert len(limited.kept) == 3 and len(pulled) <= 5
    assert any("more rows; only the first 3 were ingested" in w for w in limited.warnings)


def test_hub_load_error_never_shows_the_token(tmp_path, monkeypatch):
    import datasets

    token = "hf_secretSECRETsecret123"

    def failing_load(*args, **kwargs):
        raise ConnectionError(f"401 Unauthorized for token {token}")

    monkeypatch.setattr(datasets, "load_dataset", failing_load)
    with pytest.raises(SdtuneError) as caught:
        ingest_hub_dataset("someone/private", tmp_path / "ds", token=token)
    assert token not in str(caught.value) and "401" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_a_stream_that_fails_midway_keeps_the_rows_imported_and_says_why(tmp_path, monkeypatch):
    import datasets

    token = "hf_secretSECRETsecret123"

    def rows():
        for index in range(2):
            yield {"image": Image.new("RGB", (32, 32), (index * 100, 0, 0)), "caption": f"row {index}"}
        raise ConnectionError(f"connection reset while reading shard 2 with {token}")

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.IterableDataset.from_generator(rows))
    report = ingest_hub_dataset("someone/pets", tmp_path / "ds", token=token, max_images=10)
    assert [k.caption for k in report.kept] == ["row 0", "row 1"]
    assert read_captions(tmp_path / "ds") == {"0001.png": "row 0", "0002.png": "row 1"}
    assert any("stopped after 2 rows" in w and "import again" in w for w in report.warnings)
    assert not any(token in w for w in report.warnings)


class FakeApi:
    def __init__(self, token, fail=None):
        self.token, self.fail, self.calls = token, fail, []

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))

    def upload_folder(self, **kwargs):
        if self.fail:
            raise self.fail
        self.calls.append(("upload_folder", kwargs))


def test_push_dataset_uploads_an_imagefolder_and_never_writes_the_token(tmp_path):
    (tmp_path / "src.png").write_bytes(png())
    (tmp_path / "src.txt").write_text("a red square")
    folder = tmp_path / "ds"
    ingest([tmp_path / "src.png", tmp_path / "src.txt"], folder)
    (folder / "metadata.jsonl").unlink()  # only sidecars: push must add metadata.jsonl for imagefolder
    apis = []
    token = "hf_pushTOKENpushTOKEN"
    url = push_dataset_to_hub(folder, "me/squares", token=token,
                              api_factory=lambda t: apis.append(FakeApi(t)) or apis[-1])
    assert url.endswith("datasets/me/squares")
    assert apis[0].token == token
    (_, create), (_, upload) = apis[0].calls
    assert create == {"repo_id": "me/squares", "repo_type": "dataset", "private": True, "exist_ok": True}
    assert sorted(upload["allow_patterns"]) == ["metadata.jsonl", "src.png"]
    assert read_captions(folder) == {"src.png": "a red square"}
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes()


def test_push_errors_are_scrubbed_of_the_token(tmp_path):
    (tmp_path / "a.png").write_bytes(png())
    token = "hf_pushTOKENpushTOKEN"
    api = FakeApi(token, fail=RuntimeError(f"403 Forbidden: bad token {token}"))
    with pytest.raises(SdtuneError) as caught:
        push_dataset_to_hub(tmp_path, "me/x", token=token, api_factory=lambda t: api)
    assert token not in str(caught.value) and "403 Forbidden" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_push_refuses_bad_repo_ids_and_missing_tokens(tmp_path):
    (tmp_path / "a.png").write_bytes(png())
    with pytest.raises(SdtuneError, match="repo id"):
        push_dataset_to_hub(tmp_path, "../../x", token="hf_x")
    with pytest.raises(SdtuneError, match="token"):
        push_dataset_to_hub(tmp_path, "me/x", token="")


def test_scrub_hides_anything_shaped_like_a_token():
    assert scrub("token hf_abcdefghijk and mine", None) == "token hf_*** and mine"
    assert scrub("x=SECRET", "SECRET") == "x=***"
