"""Using a trained result: the generation engine (engine), what can be applied on a base model (artifacts),
labelled grids (grid) and the prompts x checkpoints overfitting study (overfitting)."""
