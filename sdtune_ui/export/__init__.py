"""Files that travel: export formats (formats), kohya/A1111 keys (kohya), single-file checkpoints
(single_file), the model card (model_card). Uploads go through sdtune_ui.hub."""
