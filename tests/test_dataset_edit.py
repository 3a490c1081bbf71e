"""What the Dataset tab shows and edits, in every layout (no gradio): the images of every concept with their
masks, captions saved where the reader looks, auto-captioning of concept folders, deleting an image with its
caption files, mask and metadata row, centre crops and painted masks."""

from __future__ import annotations

import json

from PIL import Image
from test_dataset_layouts import mask, picture

from sdtune_ui.app.datasets import dataset_images
from sdtune_ui.caption.folder import caption_folder
from sdtune_ui.data.datasets import load_dataset
from sdtune_ui.data.edit import crop_square, delete_images, save_captions, save_mask
from sdtune_ui.data.formats import read_captions


def kohya_dataset(root):
    dog = root / "img" / "10_sks dog"
    picture(dog / "a.png")
    (dog / "a.caption").write_text("sks dog on a sofa")
    picture(dog / "b.png")  # no caption: trains on the folder's tokens
    mask(dog / "b-masklabel.png")
    picture(root / "img" / "5_ohwx cat" / "c.png")
    return root


def test_every_concept_is_listed_with_its_caption_and_mask(tmp_path):
    root = kohya_dataset(tmp_path / "kohya")
    images, layout = dataset_images(root)
    assert layout.startswith("kohya")
    by_name = {image.name: image for image in images}
    assert set(by_name) == {"img/10_sks dog/a.png", "img/10_sks dog/b.png", "img/5_ohwx cat/c.png"}
    captioned, folder_prompt = by_name["img/10_sks dog/a.png"], by_name["img/10_sks dog/b.png"]
    assert captioned.caption == "sks dog on a sofa" and captioned.own_caption
    assert folder_prompt.caption == "sks dog" and not folder_prompt.own_caption
    assert folder_prompt.mask_name == "b-masklabel.png"


def test_captions_are_saved_where_the_reader_looks(tmp_path, toy_dataset):
    root = kohya_dataset(tmp_path / "kohya")
    save_captions(root, {"img/10_sks dog/b.png": "sks dog asleep", "img/5_ohwx cat/c.png": "ohwx cat"}, layout="kohya")
    assert (root / "img" / "10_sks dog" / "b.caption").read_text().strip() == "sks dog asleep"  # kohya's extension
    assert not (root / "metadata.jsonl").exists() and not (root / "img" / "10_sks dog" / "metadata.jsonl").exists()
    captions = {ex.name: ex.caption for ex in load_dataset(str(root)).examples}
    assert captions["img/10_sks dog/b.png"] == "sks dog asleep" and captions["img/5_ohwx cat/c.png"] == "ohwx cat"
    # A plain folder keeps every format it uses in step (its metadata.jsonl wins when read).
    save_captions(toy_dataset, {"robot_00.png": "a photo of sks robot asleep"})
    assert read_captions(toy_dataset)["robot_00.png"] == "a photo of sks robot asleep"
    assert (toy_dataset / "robot_00.txt").read_text().strip() == "a photo of sks robot asleep"


class EchoCaptioner:
    name = "echo"
    default_batch_size = 2

    def caption(self, images, max_length=None, batch_size=None, cancel=None):
        return [f"a picture {image.size[0]}px wide" for image in images]


def test_auto_captioning_reaches_images_in_concept_folders(tmp_path):
    root = kohya_dataset(tmp_path / "kohya")
    report = caption_folder(root, captioner=EchoCaptioner(), trigger="sks")
    assert sorted(report.captioned) == ["img/10_sks dog/b.png", "img/5_ohwx cat/c.png"]
    assert report.kept == ["img/10_sks dog/a.png"]
    captions = {ex.name: ex.caption for ex in load_dataset(str(root)).examples}
    assert captions["img/5_ohwx cat/c.png"] == "sks, a picture 16px wide"


def test_deleting_an_image_takes_its_captions_mask_and_metadata_row(tmp_path, toy_dataset):
    root = kohya_dataset(tmp_path / "kohya")
    assert delete_images(root, ["img/10_sks dog/b.png"]) == ["img/10_sks dog/b.png"]
    assert sorted(p.name for p in (root / "img" / "10_sks dog").iterdir()) == ["a.caption", "a.png"]
    delete_images(toy_dataset, ["robot_03.png"])
    rows = [json.loads(line) for line in (toy_dataset / "metadata.jsonl").read_text().splitlines()]
    assert "robot_03.png" not in {row["file_name"] for row in rows} and len(rows) == 7
    assert not (toy_dataset / "robot_03.txt").exists()
    assert len(load_dataset(str(toy_dataset)).examples) == 7
    try:
        delete_images(toy_dataset, ["../outside.png"])
    except Exception as err:  # noqa: BLE001
        assert "not a file of this dataset" in str(err)
    else:
        raise AssertionError("a path outside the dataset was accepted")


def test_crop_and_paint_a_mask(tmp_path):
    root = tmp_path / "d"
    picture(root / "wide.png", size=(32, 16))
    mask(root / "wide-masklabel.png")
    assert crop_square(root, "wide.png") == (16, 16)
    assert Image.open(root / "wide-masklabel.png").size == (16, 16)  # the mask follows its image
    strokes = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    strokes.paste((255, 255, 255, 255), (0, 0, 32, 64))  # the left half painted
    target = save_mask(root, "wide.png", strokes)
    painted = Image.open(target)
    assert painted.size == (16, 16) and painted.getpixel((2, 8)) == 255 and painted.getpixel((13, 8)) == 0


def test_a_hub_import_offline_says_it_needs_the_network(tmp_path, monkeypatch):
    import pytest

    from sdtune_ui.app.datasets import import_hub_dataset
    from sdtune_ui.errors import DatasetError, SdtuneError

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(DatasetError, match="needs the network"):
        import_hub_dataset(tmp_path / "d", "lambdalabs/pokemon-blip-captions")
    with pytest.raises(SdtuneError, match="not a Hub repo id"):
        import_hub_dataset(tmp_path / "d", "../../etc")
    assert not (tmp_path / "d").exists()
