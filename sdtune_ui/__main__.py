"""`python -m sdtune_ui ...` (also under `accelerate launch -m sdtune_ui ...`)."""

import sys

from sdtune_ui.cli.main import main

sys.exit(main())
