"""Headless command line: `python -m sdtune_ui train|dataset|caption|generate|grid|export|push|evaluate|sweep ...`.

Each group of commands lives in its own module (train.py, dataset.py, generate.py, evaluate.py) and registers
itself here.
"""

from __future__ import annotations

import argparse
import logging
import sys

from sdtune_ui.cli.dataset import add_dataset_commands
from sdtune_ui.cli.evaluate import add_evaluate_commands
from sdtune_ui.cli.generate import add_generate_commands
from sdtune_ui.cli.train import add_train_commands
from sdtune_ui.errors import SdtuneError, is_disk_full, is_unreadable_file_error

COMMAND_GROUPS = (add_train_commands, add_dataset_commands, add_generate_commands, add_evaluate_commands)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command; with `command`, groups are added only up to the one that has it.

    The groups' choices come from the captioners, exporters and metrics modules, which `train` does not need
    before its first step (a few hundred milliseconds of imports).
    """
    parser = argparse.ArgumentParser(prog="python -m sdtune_ui", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="Show library logs.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add_commands in COMMAND_GROUPS:
        add_commands(subparsers)
        if command in subparsers.choices:
            break
    return parser


def command_in(argv: list[str]) -> str | None:
    """The command word of a command line (the first argument that is not an option), if any."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(command_in(argv)).parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not args.verbose:
        from sdtune_ui import quiet

        quiet.install()  # library notices nobody can act on
    try:
        return args.handler(args)
    except SdtuneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        # Problems the user can fix, from code that did not wrap them: one line, no traceback.
        if is_disk_full(err):
            print(f"error: the disk is full ({err}). Free some space, then run the command again.", file=sys.stderr)
            return 2
        if is_unreadable_file_error(err):
            print(f"error: a file could not be read: it is damaged or not a weights file ({err}). Download or "
                  "copy it again, or choose another file.", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
