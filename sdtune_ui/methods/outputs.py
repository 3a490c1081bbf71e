"""The artifacts methods write: their kinds and standard file names (what generation and export look for)."""

LORA = "lora"              # a LoRA or variant file, applied by its adapter type (methods/adapters)
EMBEDDING = "embedding"    # textual-inversion vectors, loaded with pipe.load_textual_inversion
PIPELINE = "pipeline"      # a whole diffusers pipeline folder, loaded with from_pretrained
KINDS = (LORA, EMBEDDING, PIPELINE)

LORA_FILE = "pytorch_lora_weights.safetensors"     # diffusers' own name: load_lora_weights finds it by default
EMBEDDINGS_FILE = "learned_embeds.safetensors"     # diffusers' textual_inversion example's name
PIPELINE_MARKER = "model_index.json"
