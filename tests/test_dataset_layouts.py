"""Specification of the datasets other trainers make, read as those trainers read them: kohya's `N_name`
folders, OneTrainer's masks, Hugging Face imagefolder splits; our own concepts; and the epoch order."""

from __future__ import annotations

import itertools
import json
import zipfile
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from sdtune_ui.data.concepts import epoch_length, epoch_order, parse_kohya_folder
from sdtune_ui.data.datasets import load_class_examples, load_dataset
from sdtune_ui.data.doctor import diagnose
from sdtune_ui.data.formats import list_images
from sdtune_ui.data.ingest import ingest
from sdtune_ui.errors import DatasetError

_colours = itertools.count(1)


def picture(path: Path, size=(16, 16)) -> Path:
    """A picture no other test picture equals (ingest skips exact copies)."""
    n = next(_colours)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (n * 37 % 256, n * 91 % 256, n // 7 % 256)).save(path)
    return path


def mask(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (16, 16), 255).save(path)
    return path


def captions_of(loaded) -> dict[str, str]:
    return {ex.name: ex.caption for ex in loaded.examples}


@pytest.fixture
def kohya(tmp_path) -> Path:
    """kohya_ss's project layout: img/N_name, reg/N_class (plus log/ and model/ it creates)."""
    img = tmp_path / "project" / "img"
    dog = img / "10_sks dog"
    picture(dog / "a.png")
    (dog / "a.caption").write_text("sks dog on a sofa")  # kohya's default extension wins over .txt
    (dog / "a.txt").write_text("ignored: .caption is there")
    picture(dog / "b.jpg")
    (dog / "b.txt").write_text("sks dog running\nsecond line kohya never reads")
    picture(dog / "c.png")  # no caption file: the folder's tokens
    picture(img / "5_ohwx cat" / "d.png")
    picture(img / "5_ohwx cat" / "e.png")
    picture(img / "notes" / "f.png")  # not N_name: kohya ignores the folder
    picture(img / "loose.png")  # directly in img/: kohya ignores it
    picture(tmp_path / "project" / "reg" / "1_dog" / "r1.png")
    picture(tmp_path / "project" / "reg" / "1_dog" / "r2.png")
    (tmp_path / "project" / "log").mkdir()
    return tmp_path / "project"


def test_kohya_folders_are_concepts_with_repeats_captions_and_folder_prompts(kohya):
    loaded = load_dataset(str(kohya / "img"))
    assert loaded.layout == "kohya"
    assert loaded.description == "kohya (2 concepts, repeats 10 and 5), class images in 1 reg folder"
    assert captions_of(loaded) == {
        "10_sks dog/a.png": "sks dog on a sofa",
        "10_sks dog/b.jpg": "sks dog running",
        "10_sks dog/c.png": "sks dog",
        "5_ohwx cat/d.png": "ohwx cat",
        "5_ohwx cat/e.png": "ohwx cat",
    }
    assert [(ex.concept, ex.repeats) for ex in loaded.examples] == [("10_sks dog", 10)] * 3 + [("5_ohwx cat", 5)] * 2
    dog, cat = loaded.concepts
    assert (dog.name, dog.instance_prompt, dog.token, dog.class_prompt, dog.repeats, dog.images) == (
        "10_sks dog", "sks dog", "sks", "dog", 10, 3)
    assert (cat.token, cat.repeats, cat.images) == ("ohwx", 5, 2)
    assert Path(dog.class_data) == (kohya / "reg" / "1_dog").resolve()  # the reg folder named after its class
    assert loaded.epoch_length() == 10 * 3 + 5 * 2  # kohya's "images with repeats"
    assert loaded.sampling == "repeats"
    assert any("notes" in w and "not used" in w for w in loaded.warnings)
    assert any("1 image(s) directly in img" in w for w in loaded.warnings)
    class_images = load_class_examples(dog)
    assert [(ex.caption, ex.repeats) for ex in class_images] == [("dog", 1), ("dog", 1)]


def test_the_kohya_project_folder_and_its_img_folder_read_the_same(kohya):
    from_project = load_dataset(str(kohya))
    from_img = load_dataset(str(kohya / "img"))
    assert list(captions_of(from_project).values()) == list(captions_of(from_img).values())
    assert [c.name for c in from_project.class_sets] == ["reg/1_dog"]
    assert [c.images for c in from_img.class_sets] == [2]


def test_kohya_folder_names_are_parsed_as_kohya_parses_them():
    assert parse_kohya_folder("10_sks dog") == (10, "sks dog")
    assert parse_kohya_folder("3_sks_dog") == (3, "sks_dog")  # kohya joins the rest with "_" again
    assert parse_kohya_folder("1_") == (1, "")
    assert parse_kohya_folder("0_skip") is None and parse_kohya_folder("dogs") is None
    assert parse_kohya_folder("2024") is None  # no "_": a year folder stays a plain folder


def test_onetrainer_masks_belong_to_their_images_and_are_not_images(tmp_path):
    picture(tmp_path / "a.png")
    mask(tmp_path / "a-masklabel.png")
    picture(tmp_path / "b.jpg")
    (tmp_path / "b.txt").write_text("a photo of b")
    mask(tmp_path / "lonely-masklabel.png")
    picture(tmp_path / "a-condlabel.png")  # OneTrainer conditioning image: not trained on either
    assert list_images(tmp_path) == ["a.png", "b.jpg"]
    loaded = load_dataset(str(tmp_path))
    assert [(ex.name, ex.mask_path) for ex in loaded.examples] == [
        ("a.png", str((tmp_path / "a-masklabel.png").resolve())), ("b.jpg", None)]
    report = diagnose(tmp_path, method="lora", resolution=16)
    codes = {f.code: f.files for f in report.findings}
    assert codes["masks_without_image"] == ["lonely-masklabel.png"]
    assert codes["missing_masks"] == ["b.jpg"]
    assert report.images.count == 2


def _imagefolder(root: Path) -> Path:
    """Hugging Face imagefolder with split folders and file_name sub-paths."""
    train = root / "train"
    for name in ("a.png", "b.png", "unlisted.png"):
        picture(train / "images" / name)
    (train / "metadata.jsonl").write_text(
        '{"file_name": "images/a.png", "prompt": "a red thing", "alt": "first"}\n'
        '{"file_name": "images/b.png", "prompt": "a blue thing", "alt": "second"}\n')
    picture(root / "test" / "t.png")
    (root / "test" / "metadata.jsonl").write_text('{"file_name": "t.png", "prompt": "held out", "alt": "x"}\n')
    return root


def test_imagefolder_splits_read_like_datasets_load_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    root = _imagefolder(tmp_path / "hf")
    ours = load_dataset(str(root))
    assert ours.layout == "imagefolder"
    assert ours.description == "imagefolder split train (2 images; splits: train, test)"
    assert captions_of(ours) == {"train/images/a.png": "a red thing", "train/images/b.png": "a blue thing"}
    assert any("1 image(s) in train are not named in its metadata" in w for w in ours.warnings)
    for split, column in (("train", "prompt"), ("test", "prompt"), ("train", "alt")):
        theirs = datasets.load_dataset("imagefolder", data_dir=str(root), split=split,
                                       cache_dir=str(tmp_path / "cache"))
        mine = load_dataset(str(root), split=split, caption_column=column)
        assert [ex.caption for ex in mine.examples] == theirs[column]
        assert [ex.image.size for ex in mine.examples] == [im.size for im in theirs["image"]]


def test_imagefolder_without_the_asked_split_says_which_exist(tmp_path):
    root = _imagefolder(tmp_path / "hf")
    with pytest.raises(DatasetError, match="split.*train, test.*'validation'"):
        load_dataset(str(root), split="validation")


def test_root_metadata_may_name_images_in_sub_folders_and_csv_works_too(tmp_path):
    picture(tmp_path / "images" / "a.png")
    picture(tmp_path / "top.png")
    (tmp_path / "metadata.csv").write_text("file_name,caption\nimages/a.png,deep one\ntop.png,top one\n"
                                           "../outside.png,never\n")
    loaded = load_dataset(str(tmp_path))
    assert captions_of(loaded) == {"top.png": "top one", "images/a.png": "deep one"}
    report = diagnose(tmp_path, method="lora", resolution=16)
    assert [f.files for f in report.findings if f.code == "orphans"] == [["../outside.png"]]


def test_a_plain_folder_reads_exactly_as_before(toy_dataset):
    loaded = load_dataset(str(toy_dataset))
    assert loaded.layout == "folder" and len(loaded.concepts) == 1
    assert all(ex.concept == "" and ex.repeats == 1 and ex.mask_path is None for ex in loaded.examples)
    assert [ex.name for ex in loaded.examples] == list_images(toy_dataset)
    assert loaded.concepts[0].images == len(loaded.examples)


def _concepts(root: Path, dog_images: int = 3, cat_images: int = 12, repeats: dict | None = None) -> Path:
    for i in range(dog_images):
        picture(root / "dog" / f"d{i}.png")
    for i in range(cat_images):
        picture(root / "cat" / f"c{i}.png")
    (root / "cat" / "c0.txt").write_text("zwx cat asleep")
    picture(root / "class_dog" / "k.png")
    entries = [
        {"folder": "dog", "instance_prompt": "a photo of sks dog", "token": "sks",
         "class_prompt": "a photo of a dog", "class_data": "class_dog"},
        {"folder": "cat", "name": "the cat", "instance_prompt": "a photo of zwx cat", "token": "zwx"},
    ]
    for entry in entries:
        entry.update((repeats or {}).get(entry["folder"], {}))
    (root / "concepts.json").write_text(json.dumps({"concepts": entries}))
    return root


def test_concepts_json_gives_each_folder_its_prompt_token_and_class_images(tmp_path):
    loaded = load_dataset(str(_concepts(tmp_path / "ds")))
    assert loaded.layout == "concepts" and loaded.description == "concepts (2 concepts from concepts.json)"
    dog, cat = loaded.concepts
    assert (dog.name, dog.token, dog.images, dog.class_prompt) == ("dog", "sks", 3, "a photo of a dog")
    assert Path(dog.class_data) == (tmp_path / "ds" / "class_dog").resolve()
    assert (cat.name, cat.token, cat.images, cat.class_data) == ("the cat", "zwx", 12, "")
    captions = captions_of(loaded)
    assert captions["dog/d0.png"] == "a photo of sks dog"  # no caption: the concept's prompt
    assert captions["cat/c0.png"] == "zwx cat asleep"  # its own caption wins
    assert loaded.sampling == "balanced"  # nobody set repeats: 3 images are not drowned by 12
    assert not loaded.warnings  # class_dog is used, not reported as a stray folder


def test_a_dataset_info_json_per_folder_makes_concepts_too(tmp_path):
    for name in ("alice", "bob"):
        picture(tmp_path / name / "1.png")
        (tmp_path / name / "dataset_info.json").write_text(
            json.dumps({"instance_prompt": f"a photo of {name}", "repeats": 2}))
    loaded = load_dataset(str(tmp_path))
    assert [(c.name, c.instance_prompt, c.repeats) for c in loaded.concepts] == [
        ("alice", "a photo of alice", 2), ("bob", "a photo of bob", 2)]
    assert loaded.sampling == "repeats"  # repeats were given: honour them


def test_bad_concepts_json_is_a_readable_error(tmp_path):
    picture(tmp_path / "dog" / "a.png")
    (tmp_path / "concepts.json").write_text('[{"folder": "dog", "repeat": 3}]')
    with pytest.raises(DatasetError, match="unknown field.*repeat"):
        load_dataset(str(tmp_path))
    (tmp_path / "concepts.json").write_text('[{"folder": "../elsewhere"}]')
    with pytest.raises(DatasetError, match="not a folder inside"):
        load_dataset(str(tmp_path))


# ---- the epoch order ------------------------------------------------------------------------------------


def examples(spec: dict[str, tuple[int, int]]) -> list[SimpleNamespace]:
    """{concept: (images, repeats)} -> example stand-ins in dataset order."""
    return [SimpleNamespace(concept=name, repeats=repeats) for name, (count, repeats) in spec.items()
            for _ in range(count)]


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
    items = examples({"a": (3, 10), "b": (30, 1)})
    for mode in ("repeats", "balanced"):
        assert epoch_order(items, 7, 4, mode) == epoch_order(items, 7, 4, mode)
        assert epoch_order(items, 7, 4, mode) != epoch_order(items, 7, 5, mode)
        assert epoch_order(items, 7, 4, mode) != epoch_order(items, 8, 4, mode)


def test_repeats_mode_visits_each_image_exactly_its_repeats_per_epoch():
    items = examples({"a": (3, 10), "b": (5, 2)})
    order = epoch_order(items, 0, 3, "repeats")
    assert len(order) == epoch_length(items, "repeats") == 40
    assert Counter(order) == {i: items[i].repeats for i in range(len(items))}


def test_balanced_mode_gives_a_small_concept_the_same_share_as_a_big_one():
    items = examples({"few": (3, 1), "many": (30, 1)})
    order = epoch_order(items, 0, 0, "balanced")
    share = Counter(items[i].concept for i in order)
    assert share["few"] == share["many"] == 17 and len(order) == epoch_length(items, "balanced") == 34
    # In repeats mode the 3 images get 3 of 33 visits; balanced gives them half the epoch.
    assert Counter(items[i].concept for i in epoch_order(items, 0, 0, "repeats"))["few"] == 3
    # Over many epochs every image of a concept is visited equally often, give or take one.
    seen = Counter(i for epoch in range(7) for i in epoch_order(items, 0, epoch, "balanced"))
    many = [seen[i] for i in range(3, 33)]
    few = [seen[i] for i in range(3)]
    assert max(many) - min(many) <= 1 and max(few) - min(few) <= 1
    assert sum(few) == sum(many) == 7 * 17


def test_one_concept_keeps_the_order_the_trainer_drew_before_concepts():
    items = examples({"": (9, 1)})
    before = torch.Generator().manual_seed(5 * 100_003 + 2)
    expected = torch.randperm(9, generator=before).tolist()
    assert epoch_order(items, 5, 2, "repeats") == epoch_order(items, 5, 2, "balanced") == expected
    # Given the trainer's generator, it is advanced as the trainer's own randperm advanced it.
    mine = torch.Generator().manual_seed(5 * 100_003 + 2)
    assert epoch_order(items, 5, 2, "repeats", generator=mine) == expected
    assert torch.randperm(4, generator=mine).tolist() == torch.randperm(4, generator=before).tolist()


# ---- ingest keeps the structure -------------------------------------------------------------------------


def test_ingest_keeps_kohya_folders_masks_and_caption_files(kohya, tmp_path):
    mask(kohya / "img" / "5_ohwx cat" / "d-masklabel.png")
    archive = tmp_path / "kohya.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(kohya.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(kohya.parent).as_posix())
    out = tmp_path / "ds"
    report = ingest(archive, out)
    assert report.structure == "kohya"
    files = {k.file for k in report.kept}
    assert {"10_sks dog/a.png", "10_sks dog/b.jpg", "5_ohwx cat/d.png", "reg/1_dog/r1.png"} <= files
    assert (out / "10_sks dog" / "a.caption").read_text().strip() == "sks dog on a sofa"
    assert not (out / "10_sks dog" / "metadata.jsonl").exists()  # a kohya folder stays a kohya folder
    assert (out / "5_ohwx cat" / "d-masklabel.png").is_file()
    loaded = load_dataset(str(out))
    assert loaded.description == "kohya (2 concepts, repeats 10 and 5), class images in 1 reg folder"
    assert list(captions_of(loaded).values()) == list(captions_of(load_dataset(str(kohya))).values())
    assert loaded.examples[3].mask_path and loaded.examples[3].name == "5_ohwx cat/d.png"
    again = ingest(archive, out)
    assert again.kept == [] and len(again.skipped) == len(report.kept)


def test_ingest_keeps_a_concepts_dataset_and_takes_only_the_train_split(tmp_path):
    source = _concepts(tmp_path / "src", dog_images=2, cat_images=2)
    out = tmp_path / "ds"
    report = ingest(source, out)
    assert report.structure == "concepts"
    loaded = load_dataset(str(out))
    assert [(c.name, c.images, c.token) for c in loaded.concepts] == [("dog", 2, "sks"), ("the cat", 2, "zwx")]
    split_report = ingest(_imagefolder(tmp_path / "hf"), tmp_path / "flat")
    assert sorted(str(k.caption) for k in split_report.kept) == ["None", "a blue thing", "a red thing"]
    assert {r.reason for r in split_report.rejected} == {"in the test split; only the train split is ingested"}


def test_ingested_masks_follow_their_renamed_image(tmp_path):
    picture(tmp_path / "src" / "My Photo.png")
    mask(tmp_path / "src" / "My Photo-masklabel.png")
    mask(tmp_path / "src" / "orphan-masklabel.png")
    report = ingest(tmp_path / "src", tmp_path / "ds")
    assert [(k.file, k.mask) for k in report.kept] == [("My-Photo.png", "My-Photo-masklabel.png")]
    assert [r.reason for r in report.rejected] == ["a mask (-masklabel.png) without its image"]
    assert load_dataset(str(tmp_path / "ds")).examples[0].mask_path.endswith("My-Photo-masklabel.png")


# ---- the doctor -----------------------------------------------------------------------------------------


def test_doctor_names_the_layout_and_counts_per_concept(kohya):
    report = diagnose(kohya / "img", method="lora", resolution=16)
    assert report.layout == "kohya (2 concepts, repeats 10 and 5), class images in 1 reg folder"
    assert [(c.name, c.images, c.repeats, round(c.share, 2), c.class_images) for c in report.concepts] == [
        ("10_sks dog", 3, 10, 0.75, 2), ("5_ohwx cat", 2, 5, 0.25, 2)]
    text = report.to_text()
    assert "layout: kohya (2 concepts, repeats 10 and 5)" in text
    assert "concept 10_sks dog: 3 image(s) x 10 repeats, 75% of an epoch" in text
    codes = {f.code: f for f in report.findings}
    assert codes["concept_images"].files == ["10_sks dog (3)", "5_ohwx cat (2)"]
    assert codes["folder_prompts"].files == ["10_sks dog/c.png", "5_ohwx cat/d.png", "5_ohwx cat/e.png"]
    assert "missing_captions" not in codes  # kohya's folder tokens are captions
    assert "repeats_imbalance" not in codes  # 30 vs 10 visits: not drowned


def test_doctor_warns_when_repeats_let_one_concept_drown_another(tmp_path):
    for i in range(8):
        picture(tmp_path / "20_sks dog" / f"{i}.png")
    for i in range(4):
        picture(tmp_path / "1_zwx cat" / f"{i}.png")
    report = diagnose(tmp_path, method="lora", resolution=16)
    imbalance = next(f for f in report.findings if f.code == "repeats_imbalance")
    assert imbalance.message.startswith("20_sks dog takes 98% of each epoch (20 repeats x 8 images)")
    assert imbalance.message.endswith("e.g. repeats 2 for 1_zwx cat, 1 for 20_sks dog")


def test_doctor_caption_column_and_split_pass_through_the_cli(tmp_path, capsys):
    from sdtune_ui.cli.main import main

    root = _imagefolder(tmp_path / "hf")
    assert main(["dataset", "doctor", str(root), "--caption-column", "alt", "--resolution", "16", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layout"] == "imagefolder split train (2 images; splits: train, test)"
    assert report["captions"]["captioned"] == 2
    main(["dataset", "doctor", str(root), "--caption-column", "nope", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert any("no caption column 'nope'" in f["message"] for f in report["findings"] if f["code"] == "metadata")
    assert main(["dataset", "doctor", str(root), "--split", "test", "--resolution", "16", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"]["count"] == 1


def test_doctor_on_concepts_for_dreambooth_uses_each_concepts_prompt(tmp_path):
    report = diagnose(_concepts(tmp_path / "ds"), method="dreambooth", resolution=16)
    unused = next(f for f in report.findings if f.code == "captions_unused")
    assert unused.message == "dreambooth trains with each concept's instance prompt; per-image captions are not used"
    assert report.sampling == "balanced"
    assert [(c.name, c.images, round(c.share, 2)) for c in report.concepts] == [("dog", 3, 0.5), ("the cat", 12, 0.5)]
    assert [f.files for f in report.findings if f.code == "concept_images"] == [["dog (3)"]]
