"""Gradio front end: one module per tab, each with `build(ctx: AppContext) -> None`. Only here imports gradio."""
