"""`tiny-blip`: a BLIP-shaped captioner with random weights, built from configs in code, for offline demos/tests.

It is saved once with `save_pretrained` and loaded back through the same `from_pretrained` path as the
real BLIP checkpoints, so the demo exercises the real code. Its captions are random words (it never
saw an image); its generation config forces a few real words so a caption is never empty.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from sdtune_ui.paths import cache_dir

TINY_BLIP = "tiny-blip"
_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
_WORDS = (
    "a an the of on in with and at near photo picture painting drawing close up view small large red blue "
    "green yellow white black brown dog cat bird toy car house tree flower person man woman child face hat "
    "table chair cup book lamp window door street beach forest mountain sky water grass snow field room "
    "wooden metal plastic soft bright dark old new sitting standing lying looking front side top sunny"
).split()
# Bump when the architecture or vocabulary changes, so an old cached copy is rebuilt.
_VERSION = "1"
_DONE = ".complete"  # written last: a folder without it is a half-built copy


def tiny_blip_path() -> Path:
    return cache_dir("models") / f"{TINY_BLIP}-v{_VERSION}"


def ensure_tiny_blip() -> Path:
    """Build and save tiny-blip once (about 1 MB); returns the folder `from_pretrained` loads."""
    target = tiny_blip_path()
    if (target / _DONE).is_file():
        return target
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
        GenerationConfig,
    )

    vocab = _SPECIALS + _WORDS
    ids = {token: index for index, token in enumerate(vocab)}
    # Built in a temporary sibling folder and renamed: two processes building at once never see half a model.
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{TINY_BLIP}-"))
    try:
        vocab_file = staging / "vocab.txt"
        vocab_file.write_text("\n".join(vocab) + "\n")
        tokenizer = BertTokenizer(str(vocab_file), do_lower_case=True, bos_token="[DEC]", model_max_length=32)
        image_processor = BlipImageProcessor(size={"height": 32, "width": 32})
        processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
        config = BlipConfig(
            text_config={
                "vocab_size": len(vocab), "hidden_size": 32, "encoder_hidden_size": 32, "intermediate_size": 64,
                "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 32,
                "bos_token_id": ids["[DEC]"], "eos_token_id": ids["[SEP]"], "sep_token_id": ids["[SEP]"],
                "pad_token_id": ids["[PAD]"],
            },
            vision_config={
                "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                "image_size": 32, "patch_size": 8, "projection_dim": 32,
            },
            projection_dim=32,
        )
        torch.manual_seed(0)
        model = BlipForConditionalGeneration(config).eval()
        special_ids = [ids[t] for t in _SPECIALS if t != "[SEP]"]
        model.generation_config = GenerationConfig(
            bos_token_id=ids["[DEC]"], eos_token_id=ids["[SEP]"], pad_token_id=ids["[PAD]"],
            max_new_tokens=12, min_new_tokens=3, suppress_tokens=special_ids,
        )
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        (staging / _DONE).write_text(_VERSION)
        if target.exists() and not (target / _DONE).is_file():
            shutil.rmtree(target)  # a half-built copy from an interrupted run
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / _DONE).is_file():  # not a lost race with another process: a real error
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def build_tiny_florence2(target: Path) -> Path:
    """A Florence-2-shaped model (DaViT vision + BART text, random weights) saved to `target`, for tests.

    Its tokenizer is byte-level BPE over printable ASCII without merges, so captions are random letters.
    """
    import json

    import torch
    from transformers import (
        BartConfig,
        BartTokenizer,
        CLIPImageProcessor,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
        Florence2VisionConfig,
        GenerationConfig,
    )

    target.mkdir(parents=True, exist_ok=True)
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>", "<image>"]
    # Byte-level BPE spells a space as "Ġ"; printable ASCII maps to itself.
    vocab = {token: index for index, token in enumerate(specials + [chr(c) for c in range(33, 127)] + ["Ġ"])}
    (target / "vocab.json").write_text(json.dumps(vocab))
    (target / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = BartTokenizer(str(target / "vocab.json"), str(target / "merges.txt"),
                              extra_special_tokens={"image_token": "<image>"})
    vision = Florence2VisionConfig(depths=(1, 1, 1, 1), embed_dim=(8, 16, 16, 32), num_heads=(1, 1, 1, 2),
                                   num_groups=(1, 1, 1, 2), window_size=2, projection_dim=32,
                                   max_position_embeddings=8, max_temporal_embeddings=2)
    text = BartConfig(vocab_size=len(vocab), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                      decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128,
                      pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
    config = Florence2Config(vision_config=vision, text_config=text, image_token_id=vocab["<image>"])
    torch.manual_seed(0)
    model = Florence2ForConditionalGeneration(config).eval()
    image_processor = CLIPImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False)
    with torch.no_grad():  # the processor must insert as many <image> tokens as the vision tower yields
        features = model.get_image_features(torch.zeros(1, 3, 32, 32)).pooler_output
    image_processor.image_seq_length = features.shape[1]
    processor = Florence2Processor(image_processor=image_processor, tokenizer=tokenizer)
    model.generation_config = GenerationConfig(
        bos_token_id=0, eos_token_id=2, pad_token_id=1, decoder_start_token_id=2, max_new_tokens=12,
        min_new_tokens=3, suppress_tokens=[vocab[t] for t in specials if t != "</s>"],
    )
    model.save_pretrained(target)
    processor.save_pretrained(target)
    return target
