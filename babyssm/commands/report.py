"""``babyssm report``: render run folders' results into docs/RESULTS.md (``babyssm.evaluation.report``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from babyssm.errors import BabySSMError
from babyssm.evaluation.report import ABLATION, BEGIN, END, ablation, load_run, render, replace_section, results_table
from babyssm.io import atomic_write_bytes


def _cmd_report(args: argparse.Namespace) -> int:
    runs = [load_run(d) for d in args.runs]
    out = Path(args.out)
    old = out.read_text() if out.is_file() else "# babyssm results\n"
    section, markers = (ablation(runs), ABLATION) if args.ablation else (render(runs), (BEGIN, END))
    try:
        new = replace_section(old, section, markers)
    except BabySSMError as e:
        raise BabySSMError(f"{out}: {e}") from None
    atomic_write_bytes(out, new.encode())
    print(section if args.ablation else "\n".join(results_table(runs)))
    print(f"written to {out}")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("report", help="render run results into docs/RESULTS.md",
                              description="Render a results table from run folders into the marked section "
                                          "of a markdown file, keeping the text around it.")
    p.add_argument("--runs", nargs="+", required=True, metavar="RUN_DIR", help="run folders, in table order")
    p.add_argument("--out", default="docs/RESULTS.md", help="markdown file to update (default: docs/RESULTS.md)")
    p.add_argument("--ablation", action="store_true",
                   help="render the level-3 ablation table of hierarchical runs (its own marked section)")
    p.set_defaults(func=_cmd_report)
