"""Specification of caption formats (what training reads) and of automatic captioning (tiny-blip offline)."""

from __future__ import annotations

import json
import os
import threading

import pytest
from PIL import Image

from sdtune_ui.data.formats import (
    compose_caption,
    edit_caption,
    edit_captions,
    metadata_orphans,
    read_captions,
    read_dataset_info,
    write_captions,
    write_dataset_info,
)
from sdtune_ui.errors import Cancelled, DatasetError, ModelLoadError


def images(folder, *names, size=(40, 40)):
    for i, name in enumerate(names):
        Image.new("RGB", size, (40 * i % 255, 100, 200)).save(folder / name)


# ---- reading --------------------------------------------------------------------------------------


def test_read_captions_merges_formats_with_jsonl_over_csv_over_txt(tmp_path):
    images(tmp_path, "a.png", "b.png", "c.png", "d.png")
    (tmp_path / "a.txt").write_text("txt a\n")
    (tmp_path / "b.txt").write_text("txt b")
    (tmp_path / "c.txt").write_text("txt c")
    (tmp_path / "metadata.csv").write_text("file_name,text\nb.png,csv b\nc.png,csv c\n")
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "c.png", "text": "jsonl c"}\n')
    assert read_captions(tmp_path) == {"a.png": "txt a", "b.png": "csv b", "c.png": "jsonl c"}


@pytest.mark.parametrize("column", ["text", "caption", "prompt"])
def test_caption_column_is_auto_detected(tmp_path, column):
    images(tmp_path, "a.png")
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", column: "hello"}) + "\n")
    assert read_captions(tmp_path) == {"a.png": "hello"}


def test_given_caption_column_is_used_and_must_exist(tmp_path):
    images(tmp_path, "a.png")
    (tmp_path / "metadata.csv").write_text("file_name,text,long_text\na.png,short,a much longer one\n")
    assert read_captions(tmp_path, caption_column="long_text") == {"a.png": "a much longer one"}
    with pytest.raises(DatasetError, match="no caption column 'nope'"):
        read_captions(tmp_path, caption_column="nope")


def test_metadata_rows_without_a_caption_field_do_not_erase_sidecar_captions(tmp_path):
    images(tmp_path, "a.png")
    (tmp_path / "a.txt").write_text("from txt")
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png", "label": 3}\n')
    assert read_captions(tmp_path) == {"a.png": "from txt"}


def test_bad_jsonl_line_is_reported_with_its_number(tmp_path):
    images(tmp_path, "a.png")
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "ok"}\n{broken\n')
    with pytest.raises(DatasetError, match="line 2 is not valid JSON"):
        read_captions(tmp_path)


def test_csv_with_a_byte_order_mark_and_empty_captions(tmp_path):
    images(tmp_path, "a.png", "b.png")
    (tmp_path / "metadata.csv").write_bytes("\ufefffile_name,caption\na.png,hi\nb.png,\n".encode())
    assert read_captions(tmp_path) == {"a.png": "hi", "b.png": ""}


def test_metadata_orphans_lists_files_that_are_not_there(tmp_path):
    images(tmp_path, "a.png")
    rows = [{"file_name": "a.png", "text": "x"}, {"file_name": "gone.png", "text": "y"}]
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert metadata_orphans(tmp_path) == ["gone.png"]
    assert read_captions(tmp_path) == {"a.png": "x"}


# ---- writing and editing -----------------------------------------------------------------------------


def test_write_captions_writes_txt_and_jsonl_and_keeps_other_rows_and_columns(tmp_path):
    images(tmp_path, "a.png", "b.png")
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "b.png", "text": "old b", "score": 7}\n')
    write_captions(tmp_path, {"a.png": "new a", "b.png": "new b"})
    assert (tmp_path / "a.txt").read_text() == "new a\n"
    rows = [json.loads(line) for line in (tmp_path / "metadata.jsonl").read_text().splitlines()]
    assert rows == [{"file_name": "b.png", "text": "new b", "score": 7}, {"file_name": "a.png", "text": "new a"}]
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_write_captions_to_csv_keeps_its_caption_column(tmp_path):
    images(tmp_path, "a.png")
    (tmp_path / "metadata.csv").write_text("file_name,prompt\na.png,old\n")
    write_captions(tmp_path, {"a.png": "new, with comma"}, formats=("csv",))
    assert (tmp_path / "metadata.csv").read_text().splitlines() == ["file_name,prompt", 'a.png,"new, with comma"']
    assert read_captions(tmp_path) == {"a.png": "new, with comma"}


def test_write_captions_refuses_names_outside_the_folder(tmp_path):
    with pytest.raises(DatasetError, match="not a plain file name"):
        write_captions(tmp_path, {"../evil.png": "x"})


def test_compose_caption_adds_trigger_prefix_and_suffix_once():
    assert compose_caption("a dog on a beach", "sks") == "sks, a dog on a beach"
    assert compose_caption("a dog", "sks", prefix="a photo of") == "sks, a photo of a dog"
    assert compose_caption("a dog", "sks", prefix="a photo of sks,") == "a photo of sks, a dog"
    assert compose_caption("a dog", None, suffix=", oil painting") == "a dog, oil painting"
    assert compose_caption("SKS dog", "sks") == "SKS dog"  # already there (whole word, any case)
    assert compose_caption("asks a question", "sks") == "sks, asks a question"  # not a whole word
    assert compose_caption("", "sks") == "sks"


def test_edit_caption_find_replace_plain_and_regex():
    assert edit_caption("a cat, a cat", find="cat", replace="dog") == "a dog, a dog"
    assert edit_caption("photo of 3 cats", find=r"\d+ ", replace="", regex=True) == "photo of cats"
    assert edit_caption("a  blurry , photo", find="blurry", replace="") == "a, photo"
    with pytest.raises(DatasetError, match="not a valid regular expression"):
        edit_caption("x", find="(", regex=True)


def test_edit_captions_rewrites_every_format_the_folder_uses(tmp_path):
    images(tmp_path, "a.png", "b.png", "c.png")
    write_captions(tmp_path, {"a.png": "a cat", "b.png": "a cat and sks"}, formats=("txt", "jsonl", "csv"))
    changed = edit_captions(tmp_path, find="cat", replace="dog", trigger="sks")
    assert changed == {"a.png": "sks, a dog", "b.png": "a dog and sks"}
    assert read_captions(tmp_path) == changed
    assert (tmp_path / "a.txt").read_text().strip() == "sks, a dog"
    assert "sks, a dog" in (tmp_path / "metadata.csv").read_text()
    assert edit_captions(tmp_path, trigger="sks") == {}  # idempotent
    assert edit_captions(tmp_path, trigger="sks", include_uncaptioned=True) == {"c.png": "sks"}


def test_dreambooth_dataset_info_round_trip(tmp_path):
    assert read_dataset_info(tmp_path) == {}
    write_dataset_info(tmp_path, "a photo of sks dog", "a photo of dog")
    assert read_dataset_info(tmp_path) == {"instance_prompt": "a photo of sks dog", "class_prompt": "a photo of dog"}
    with pytest.raises(DatasetError, match="instance prompt is empty"):
        write_dataset_info(tmp_path, "  ")


# ---- captioning with tiny-blip --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        root = tmp_path_factory.mktemp("home")
        patch.setenv("SDTUNE_HOME", str(root))
        yield root
    from sdtune_ui.caption import unload_captioners

    unload_captioners()


def test_tiny_blip_is_saved_once_and_loads_through_from_pretrained(home):
    from sdtune_ui.caption import get_captioner
    from sdtune_ui.caption.tiny import ensure_tiny_blip

    path = ensure_tiny_blip()
    assert path.parent == home / "models"
    assert {"config.json", "model.safetensors"} <= set(os.listdir(path))
    assert ensure_tiny_blip() == path  # second call reuses it
    by_name = get_captioner("tiny-blip", device="cpu")
    by_folder = get_captioner(str(path), device="cpu")  # the path any real local checkpoint takes
    assert by_name.family == by_folder.family == "blip"
    assert type(by_name.model).__name__ == "BlipForConditionalGeneration"
    captions = by_folder.caption([Image.new("RGB", (50, 30), (255, 0, 0)), Image.new("L", (20, 20))])
    assert len(captions) == 2 and all(isinstance(c, str) and c.strip() for c in captions)


def test_caption_folder_with_tiny_blip_writes_a_trigger_prefixed_caption_for_every_image(home, tmp_path):
    from sdtune_ui.caption import caption_folder

    images(tmp_path, "a.png", "b.jpg", "c.webp", "d.png", "e.png")
    seen = []
    report = caption_folder(tmp_path, "tiny-blip", trigger="sks", prefix="a photo of", device="cpu", batch_size=2,
                            progress=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 5) for i in range(1, 6)]
    captions = read_captions(tmp_path)
    assert set(captions) == {"a.png", "b.jpg", "c.webp", "d.png", "e.png"} == set(report.captioned)
    for name, caption in captions.items():
        assert caption.startswith("sks, a photo of ") and len(caption) > len("sks, a photo of ")
        assert (tmp_path / name).with_suffix(".txt").read_text().strip() == caption
    jsonl = [json.loads(line) for line in (tmp_path / "metadata.jsonl").read_text().splitlines()]
    assert {row["file_name"]: row["text"] for row in jsonl} == captions


def test_caption_folder_keeps_existing_captions_unless_overwrite(home, tmp_path):
    from sdtune_ui.caption import caption_folder

    images(tmp_path, "a.png", "b.png")
    (tmp_path / "a.txt").write_text("my own words")
    report = caption_folder(tmp_path, "tiny-blip", trigger="sks", device="cpu")
    assert report.kept == ["a.png"] and list(report.captioned) == ["b.png"]
    assert read_captions(tmp_path)["a.png"] == "sks, my own words"  # only the trigger is added
    again = caption_folder(tmp_path, "tiny-blip", trigger="sks", device="cpu", overwrite=True, max_length=4)
    assert set(again.captioned) == {"a.png", "b.png"}
    assert read_captions(tmp_path)["a.png"] != "sks, my own words"
    assert len(read_captions(tmp_path)["a.png"].split()) <= 1 + 4


def test_caption_folder_cancel_keeps_finished_batches(home, tmp_path):
    from sdtune_ui.caption import caption_folder

    images(tmp_path, "a.png", "b.png", "c.png", "d.png")
    stop = threading.Event()
    report = caption_folder(tmp_path, "tiny-blip", device="cpu", batch_size=2, cancel=stop,
                            progress=lambda done, total: stop.set() if done == 2 else None)
    assert report.cancelled and sorted(report.captioned) == ["a.png", "b.png"]
    assert sorted(read_captions(tmp_path)) == ["a.png", "b.png"]
    assert "cancelled" in report.to_text()


def test_unreadable_images_are_skipped_not_fatal(home, tmp_path):
    from sdtune_ui.caption import caption_folder

    images(tmp_path, "a.png")
    (tmp_path / "b.png").write_text("no image here")
    report = caption_folder(tmp_path, "tiny-blip", device="cpu")
    assert list(report.captioned) == ["a.png"] and report.skipped[0][0] == "b.png"


def test_captioner_raises_cancelled_between_batches(home):
    from sdtune_ui.caption import get_captioner

    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        get_captioner("tiny-blip", device="cpu").caption([Image.new("RGB", (8, 8))], cancel=stop)


def test_unknown_captioner_and_misused_task_are_clear_errors(home, tmp_path):
    from sdtune_ui.caption import CAPTIONERS, get_captioner

    assert {"blip-base", "blip-large", "blip2", "florence2-base", "florence2-large", "git-base",
            "tiny-blip"} <= set(CAPTIONERS)
    with pytest.raises(ModelLoadError, match="Unknown captioner"):
        get_captioner(str(tmp_path / "nothing-here"))
    with pytest.raises(ModelLoadError, match="Florence-2"):
        get_captioner("tiny-blip", task="<DETAILED_CAPTION>")


def test_caption_folder_on_missing_or_empty_folder_says_what_to_do(home, tmp_path):
    from sdtune_ui.caption import caption_folder

    with pytest.raises(DatasetError, match="does not exist"):
        caption_folder(tmp_path / "nope")
    with pytest.raises(DatasetError, match="No images to caption"):
        caption_folder(tmp_path)


@pytest.fixture(scope="module")
def tiny_florence(home):
    from sdtune_ui.caption.tiny import build_tiny_florence2

    return build_tiny_florence2(home / "tiny-florence2")


def test_florence2_shaped_model_captions_through_the_native_classes(tiny_florence, tmp_path):
    from sdtune_ui.caption import caption_folder, get_captioner

    captioner = get_captioner(str(tiny_florence), device="cpu", task="<DETAILED_CAPTION>")
    assert captioner.family == "florence2" and captioner.task == "<DETAILED_CAPTION>"
    assert type(captioner.model).__name__ == "Florence2ForConditionalGeneration"
    short = captioner.caption([Image.new("RGB", (40, 30), (255, 0, 0))], max_length=5)
    assert len(short) == 1 and 3 <= len(short[0]) <= 5  # one ASCII character per token
    images(tmp_path, "a.png", "b.png")
    report = caption_folder(tmp_path, captioner=captioner, trigger="zwx", max_length=6)
    assert set(report.captioned) == {"a.png", "b.png"}
    assert all(c.startswith("zwx") for c in read_captions(tmp_path).values())


def _ascii_bpe_files(folder, specials):
    """vocab.json/merges.txt of a byte-level BPE over printable ASCII, no merges (one token per character)."""
    vocab = {token: index for index, token in enumerate(specials + [chr(c) for c in range(33, 127)] + ["Ġ"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return vocab


def test_git_shaped_model_captions(home, tmp_path):
    import torch
    from transformers import BertTokenizer, CLIPImageProcessor, GitConfig, GitForCausalLM, GitProcessor

    from sdtune_ui.caption import get_captioner

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "dog", "on", "grass"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    processor = GitProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                crop_size={"height": 32, "width": 32}),
                             tokenizer=BertTokenizer(str(tmp_path / "vocab.txt")))
    config = GitConfig(vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                      "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
                       vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, max_position_embeddings=64, bos_token_id=2, eos_token_id=3,
                       pad_token_id=0)
    torch.manual_seed(0)
    GitForCausalLM(config).save_pretrained(tmp_path / "git")
    processor.save_pretrained(tmp_path / "git")
    captioner = get_captioner(str(tmp_path / "git"), device="cpu")
    assert captioner.family == "git"
    captions = captioner.caption([Image.new("RGB", (40, 40), (255, 0, 0))] * 2, max_length=5)
    assert len(captions) == 2 and all(set(c.split()) <= set(words) for c in captions)


def test_blip2_shaped_model_captions(home, tmp_path):
    import torch
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
        GenerationConfig,
        GPT2Tokenizer,
    )

    from sdtune_ui.caption import get_captioner

    vocab = _ascii_bpe_files(tmp_path, ["</s>", "<pad>", "<unk>", "<image>"])
    tokenizer = GPT2Tokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), bos_token="</s>",
                              eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                              extra_special_tokens={"image_token": "<image>"})
    processor = Blip2Processor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                               tokenizer=tokenizer, num_query_tokens=4)
    config = Blip2Config(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        qformer_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
                        "encoder_hidden_size": 32, "vocab_size": 100, "max_position_embeddings": 32},
        text_config={"model_type": "opt", "vocab_size": len(vocab), "hidden_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "ffn_dim": 64, "word_embed_proj_dim": 32,
                     "max_position_embeddings": 64, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 1},
        num_query_tokens=4, image_token_index=vocab["<image>"],
    )
    torch.manual_seed(0)
    model = Blip2ForConditionalGeneration(config)
    # A random model would end at once; make it say a few (non-special) tokens like tiny-blip does.
    model.generation_config = GenerationConfig(bos_token_id=0, eos_token_id=0, pad_token_id=1, min_new_tokens=3,
                                               suppress_tokens=[1, 2, 3])
    model.save_pretrained(tmp_path / "blip2")
    processor.save_pretrained(tmp_path / "blip2")
    captioner = get_captioner(str(tmp_path / "blip2"), device="cpu")
    assert captioner.family == "blip2"
    captions = captioner.caption([Image.new("RGB", (40, 40), (0, 0, 255))], max_length=5)
    assert len(captions) == 1 and 3 <= len(captions[0]) <= 5
