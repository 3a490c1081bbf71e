"""Package data: the example dataset the demo, the app's "Load the example" and the tests use.

`make_examples.py` beside it draws the dataset in code (run it to regenerate).
"""

from pathlib import Path

EXAMPLE_DATASET = Path(__file__).resolve().parent / "toy_robot"
