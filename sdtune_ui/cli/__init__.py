"""The headless command line (`python -m sdtune_ui ...`), one module per group of commands."""
