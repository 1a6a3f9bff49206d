"""The ``babyssm`` command: one entry point, a subcommand per task.

Each module of ``babyssm.commands`` defines ``add_commands(subparsers)``, which adds its
parsers and sets ``func`` (called with the parsed args, returns an exit status). They are
listed here in the order their commands appear in ``--help``. Only this package uses
argparse; the library modules it calls never import it.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys

from babyssm import __version__
from babyssm.errors import BabySSMError

COMMAND_MODULES = [
    "babyssm.commands.data",
    "babyssm.commands.info",
    "babyssm.commands.train",
    "babyssm.commands.generate",
    "babyssm.commands.evaluate",
    "babyssm.commands.baseline",
    "babyssm.commands.report",
    "babyssm.commands.export",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="babyssm",
        description="Build, train and evaluate a hierarchical character-level SSM for BabyLM.",
        epilog="Data folders: pass --data or set BABYSSM_DATA. `babyssm COMMAND --help` for details.",
    )
    parser.add_argument("--version", action="version", version=f"babyssm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.invocation = shlex.join(["babyssm", *argv])  # for commands that record how their output was made
    try:
        return int(args.func(args) or 0)
    except BabySSMError as e:
        print(f"babyssm: error: {' '.join(str(e).splitlines())}", file=sys.stderr)  # always one line
        return 2
    except KeyboardInterrupt:
        print("babyssm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`babyssm stats X | head`): not an error of ours.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
