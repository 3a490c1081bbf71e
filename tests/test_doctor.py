"""Specification of the dataset doctor and of the aspect buckets it shares with the training dataset."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from sdtune_ui.data.advice import recommend
from sdtune_ui.data.buckets import assign_buckets, make_buckets, nearest_bucket, upscale_factor
from sdtune_ui.data.doctor import count_tokens, dhash, diagnose, diagnose_config, estimate_tokens
from sdtune_ui.errors import DatasetError


def blob(seed: int, size=(128, 128)) -> Image.Image:
    """A smooth, photo-like random picture; different seeds give visually different images."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8))
    return small.resize(size, Image.Resampling.BILINEAR)


def add(folder, name, image, caption=None):
    image.save(folder / name)
    if caption is not None:
        (folder / name).with_suffix(".txt").write_text(caption)


@pytest.fixture
def planted(tmp_path):
    """A dataset with one of each problem the doctor must find."""
    for i in range(4):
        add(tmp_path, f"good{i}.png", blob(i), f"a photo of sks toy, angle {i}")
    shutil.copy(tmp_path / "good0.png", tmp_path / "copy_of_good0.png")
    (tmp_path / "copy_of_good0.txt").write_text("sks toy")
    add(tmp_path, "near_good1.jpg", blob(1).resize((120, 120)), "sks toy again")  # resized + JPEG re-encoded
    add(tmp_path, "tiny.png", blob(7, (40, 40)), "sks toy small")
    add(tmp_path, "uncaptioned.png", blob(8))
    add(tmp_path, "blank.png", blob(9), "   ")
    add(tmp_path, "no_trigger.png", blob(10), "a photo of a toy")
    add(tmp_path, "wordy.png", blob(11), "sks " + " ".join(["photograph"] * 60))
    add(tmp_path, "red.png", Image.new("RGB", (128, 128), (255, 0, 0)), "sks red")
    add(tmp_path, "blue.png", Image.new("RGB", (128, 128), (0, 0, 255)), "sks blue")
    (tmp_path / "broken.png").write_text("not an image")
    return tmp_path


def finding(report, code):
    matches = [f for f in report.findings if f.code == code]
    assert matches, f"no {code} finding in {[f.code for f in report.findings]}"
    return matches[0]


def test_doctor_finds_planted_exact_and_near_duplicates(planted):
    report = diagnose(planted, method="lora", trigger="sks", resolution=128)
    assert report.duplicates == [["copy_of_good0.png", "good0.png"]]
    assert [(a, b) for a, b, _ in report.near_duplicates] == [("good1.png", "near_good1.jpg")]
    assert finding(report, "duplicates").severity == "warning"
    # Two solid images of different colours share a dHash of 0 but are not near-duplicates.
    assert not any("red.png" in pair for pair in report.near_duplicates)


def test_doctor_finds_small_images_missing_empty_captions_and_missing_trigger(planted):
    report = diagnose(planted, method="lora", trigger="sks", resolution=128)
    assert finding(report, "small_images").files == ["near_good1.jpg (120x120)", "tiny.png (40x40)"]
    assert finding(report, "missing_captions").files == ["uncaptioned.png"]
    assert finding(report, "empty_captions").files == ["blank.png"]
    assert finding(report, "missing_trigger").files == ["no_trigger.png"]
    assert finding(report, "long_captions").files[0].startswith("wordy.png")
    assert finding(report, "unreadable").files == ["broken.png (not an image (the file contains text))"]
    assert report.images.count == 13 and report.captions.missing == 1 and report.captions.empty == 1
    assert report.captions.without_trigger == 1


def test_report_is_json_for_the_ui_and_text_for_the_cli(planted):
    report = diagnose(planted, method="dreambooth", trigger="sks", resolution=128)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is True and data["counts"]["warning"] >= 6
    assert data["recommendation"]["method"] == "dreambooth"
    text = report.to_text()
    assert "WARNING: 1 exact duplicate" in text and "Recommended for dreambooth" in text
    severities = [f.severity for f in report.findings]
    assert severities == sorted(severities, key=["error", "warning", "info"].index)  # worst first


def test_no_captions_at_all_is_an_error_for_caption_driven_methods(tmp_path):
    add(tmp_path, "a.png", blob(1))
    add(tmp_path, "b.png", blob(2))
    report = diagnose(tmp_path, method="lora", resolution=128)
    assert not report.ok and finding(report, "missing_captions").severity == "error"
    assert "Fix the errors" in report.to_text()


def test_dreambooth_instance_prompt_makes_captions_optional(tmp_path):
    add(tmp_path, "a.png", blob(1))
    (tmp_path / "dataset_info.json").write_text('{"instance_prompt": "a photo of zwx dog"}')
    report = diagnose(tmp_path, method="dreambooth", trigger="sks", resolution=128)
    assert report.ok
    assert finding(report, "captions_unused").severity == "info"
    assert "zwx" in finding(report, "missing_trigger").message  # the prompt lacks the trigger 'sks'


def test_empty_folder_is_an_error_and_missing_folder_raises(tmp_path):
    report = diagnose(tmp_path, method="lora")
    assert not report.ok and finding(report, "no_images").severity == "error"
    with pytest.raises(DatasetError, match="does not exist"):
        diagnose(tmp_path / "nope")
    with pytest.raises(DatasetError, match="Unknown method"):
        diagnose(tmp_path, method="magic")


def test_image_count_advice_per_method(tmp_path):
    for i in range(2):
        add(tmp_path, f"{i}.png", blob(i), "sks")
    dreambooth = diagnose(tmp_path, method="dreambooth", resolution=128)
    assert "4-20 images" in finding(dreambooth, "image_count").message
    full = diagnose(tmp_path, method="full", resolution=128)
    assert "hundreds of images" in finding(full, "image_count").message


def test_face_dreambooth_without_prior_preservation_is_warned(tmp_path):
    for i in range(5):
        add(tmp_path, f"{i}.png", blob(i), "sks person")
    report = diagnose(tmp_path, method="dreambooth", subject="face", resolution=128)
    assert finding(report, "prior_preservation").severity == "warning"
    assert report.recommendation.steps_range == (800, 1200)
    ok = diagnose(tmp_path, method="dreambooth", subject="face", resolution=128, with_prior_preservation=True)
    assert not [f for f in ok.findings if f.code == "prior_preservation"]


def test_buckets_reported_with_and_without_bucketing(tmp_path):
    add(tmp_path, "wide.png", blob(1, (256, 128)), "sks")
    add(tmp_path, "tall.png", blob(2, (128, 256)), "sks")
    add(tmp_path, "square.png", blob(3, (200, 200)), "sks")
    bucketed = diagnose(tmp_path, resolution=128, bucketing=True)
    assert bucketed.buckets == {"96x160": 1, "128x128": 1, "160x96": 1}
    cropped = diagnose(tmp_path, resolution=128, bucketing=False)
    assert cropped.buckets == {"128x128": 3}
    assert sorted(finding(cropped, "cropping").files) == ["tall.png", "wide.png"]


def test_caption_length_uses_the_tokenizer_when_given(tmp_path):
    add(tmp_path, "a.png", blob(1), "one two three")

    def tokenizer(text, truncation=False):
        return {"input_ids": [0] * 100}  # pretends every caption is 100 tokens

    report = diagnose(tmp_path, resolution=128, tokenizer=tokenizer)
    assert report.captions.tokens_exact and report.captions.max_tokens == 100
    assert "(estimated)" not in finding(report, "long_captions").message


def test_token_estimate_is_conservative():
    assert estimate_tokens("") == 2  # start + end
    assert estimate_tokens("a photo of sks dog") == 7
    assert estimate_tokens("photograph, 1024") == 2 + 2 + 1 + 4  # long word = 2, comma, 4 digits
    assert count_tokens("a b c") == estimate_tokens("a b c")


def test_dhash_is_stable_under_resizing_and_differs_between_images():
    base = blob(5, (256, 256))
    assert bin(dhash(base) ^ dhash(base.resize((200, 150)))).count("1") <= 4
    assert bin(dhash(base) ^ dhash(blob(6, (256, 256)))).count("1") > 12


def test_doctor_from_a_train_config(tmp_path):
    from sdtune_ui.config import TrainConfig

    add(tmp_path, "a.png", blob(1))
    config = TrainConfig(method="dreambooth", data=str(tmp_path), instance_prompt="a photo of sks dog",
                         resolution=64, train_batch_size=2)
    report = diagnose_config(config)
    assert report.method == "dreambooth" and report.resolution == 64 and report.ok
    assert report.recommendation.batch_size == 2


# ---- recommendations --------------------------------------------------------------------------------


def test_recommended_steps_follow_the_method_guides():
    assert recommend("dreambooth", 5).steps == 400  # objects: 200-400
    assert recommend("dreambooth", 2).steps == 200
    assert recommend("dreambooth", 5, subject="face").steps_range == (800, 1200)
    assert any("prior preservation" in n for n in recommend("dreambooth", 5, subject="face").notes)
    assert recommend("textual_inversion", 5).steps == 2000
    assert recommend("lora", 20).steps == 2000
    assert recommend("full", 1000, batch_size=4).steps == 2500


def test_time_estimate_scales_with_resolution_and_accepts_a_measured_speed():
    base = recommend("lora", 20)
    assert recommend("lora", 20, resolution=1024).estimated_seconds == pytest.approx(base.estimated_seconds * 4)
    measured = recommend("lora", 20, seconds_per_step=0.1)
    assert measured.estimated_seconds == pytest.approx(200) and not measured.seconds_per_step_assumed
    assert "as given" in measured.to_text()


# ---- aspect buckets (shared with training) ------------------------------------------------------------


@pytest.mark.parametrize("resolution", [64, 512, 768, 1024])
def test_buckets_are_multiples_of_8_within_area_and_ratio_and_include_the_square(resolution):
    buckets = make_buckets(resolution)
    assert (resolution, resolution) in buckets
    for width, height in buckets:
        assert width % 8 == 0 and height % 8 == 0
        assert width * height <= resolution * resolution
        assert max(width / height, height / width) <= 2.0
    assert buckets == sorted(buckets, key=lambda wh: wh[0] / wh[1])


def test_nearest_bucket_matches_aspect_ratio():
    buckets = make_buckets(512)
    assert nearest_bucket(1000, 1000, buckets) == (512, 512)
    assert nearest_bucket(1920, 1080, buckets) == (640, 384)
    assert nearest_bucket(3000, 4000, buckets) == (448, 576)
    assert upscale_factor(320, 320, (512, 512)) == pytest.approx(1.6)
    assert assign_buckets([(100, 100), (90, 90), (200, 100)], 64) == {(64, 64): 2, (80, 48): 1}
    with pytest.raises(ValueError):
        make_buckets(500)


def test_adapter_types_add_their_hints_for_methods_that_train_adapters():
    assert any("LoKr" in note for note in recommend("lora", 20, adapter="lokr").notes)
    assert any("LoHa" in note for note in recommend("pivotal", 10, adapter="loha").notes)
    assert recommend("full", 200, adapter="lokr").notes == recommend("full", 200).notes   # no adapters there
    assert recommend("lora", 20, adapter="lora").notes == recommend("lora", 20).notes
