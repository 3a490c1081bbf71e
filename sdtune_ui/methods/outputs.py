"""The artifacts methods write: their kinds and standard file names (what generation and export look for)."""

import re
from collections.abc import Sequence

LORA = "lora"              # a LoRA or variant file, applied by its adapter type (methods/adapters)
EMBEDDING = "embedding"    # textual-inversion vectors, loaded with pipe.load_textual_inversion
PIPELINE = "pipeline"      # a whole diffusers pipeline folder, loaded with from_pretrained
CONTROLNET = "controlnet"  # a ControlNet folder (ControlNetModel.from_pretrained), used beside its base model
KINDS = (LORA, EMBEDDING, PIPELINE, CONTROLNET)

LORA_FILE = "pytorch_lora_weights.safetensors"     # diffusers' own name: load_lora_weights finds it by default
EMBEDDINGS_FILE = "learned_embeds.safetensors"     # diffusers' textual_inversion example's name
EMBEDDINGS_GLOB = "learned_embeds*.safetensors"     # the first token's file and learned_embeds-<token>.safetensors
PIPELINE_MARKER = "model_index.json"
CONTROLNET_CLASS = "ControlNetModel"   # the `_class_name` in a ControlNet folder's config.json


def embeddings_file(token: str, *, first: bool, taken: Sequence[str] = ()) -> str:
    """File name of one token's embedding: the first (or only) token's is EMBEDDINGS_FILE, so older loaders
    find it; the others learned_embeds-<token>.safetensors (the token in file-name-safe letters)."""
    if first:
        return EMBEDDINGS_FILE
    stem = "learned_embeds-" + (re.sub(r"[^A-Za-z0-9_.-]+", "", token).strip(".") or "token")
    name, number = f"{stem}.safetensors", 2
    while name in taken or name == EMBEDDINGS_FILE:
        name, number = f"{stem}-{number}.safetensors", number + 1
    return name
