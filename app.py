"""Entry point of the sdtune_ui app, locally and as a Hugging Face Space: `python app.py --help`."""

import sys

from sdtune_ui.ui.launcher import main

if __name__ == "__main__":
    sys.exit(main())
