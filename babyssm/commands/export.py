"""``babyssm export``: a run folder (or its word milestones) -> Hugging Face folders (``babyssm.hf.export``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from babyssm.commands.args import add_renamed
from babyssm.errors import BabySSMError
from babyssm.hf.export import MILESTONE_DIR, check_out, export_run, milestone_runs
from babyssm.training.checkpoint import read_config


def _cmd_export(args: argparse.Namespace) -> int:
    out = Path(args.out)
    read_config(args.run)  # a missing or broken run folder, before anything else
    check_out(args.run, out)
    if not args.milestones:
        export_run(args.run, out, args.levels, args.force)
        print(f"exported {args.run} to {out}")
        return 0
    runs = milestone_runs(args.run)
    if not runs:
        raise BabySSMError(f"{args.run}/{MILESTONE_DIR} holds no milestone checkpoints; "
                           "train with --save-word-milestones")
    for name, folder in [*runs, ("main", Path(args.run))]:
        export_run(folder, out / name, args.levels, args.force)
        print(f"exported {folder} to {out / name}")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="write a Hugging Face model folder (the BabyLM pipeline's input)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export a trained hierarchical model as a Hugging Face folder that "
        "AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True) and AutoTokenizer load "
        "(transformers 4.51.3 or 5.x; babyssm is not needed to load it). See docs/BABYLM.md.",
        epilog="examples:\n"
        "  babyssm export --run work/run --out work/hf\n"
        "  babyssm export --run work/run --out work/hf-revisions --milestones   # chck_1M/ ... main/",
    )
    add_renamed(p, "--run", "--ckpt", required=True, metavar="RUN_DIR", help="run folder written by `babyssm train`")
    p.add_argument("--out", required=True, metavar="HF_DIR", help="folder to write (must be new or empty)")
    p.add_argument("--levels", type=int, choices=[2, 3],
                   help="levels the exported model uses (default: 3 once stage 3 is trained, else 2)")
    p.add_argument("--milestones", action="store_true",
                   help="export every RUN_DIR/milestones/words_* checkpoint to HF_DIR/chck_*/ and the run to "
                   "HF_DIR/main/")
    p.add_argument("--force", action="store_true",
                   help="replace output folders that an earlier `babyssm export` wrote (nothing else)")
    p.set_defaults(func=_cmd_export)
