"""sdtune_ui: fine-tune Stable Diffusion on your own images, from a Gradio app or a headless CLI."""

__version__ = "0.1.0"
