"""``babyssm generate``: stream text sampled from a run folder (``babyssm.evaluation.generate``)."""

from __future__ import annotations

import argparse
import sys

import torch

from babyssm.data.clean import clean_text
from babyssm.commands.args import add_renamed
from babyssm.errors import check_device
from babyssm.evaluation.generate import generate_text
from babyssm.training.checkpoint import load_model


def _cmd_generate(args: argparse.Namespace) -> int:
    model, info = load_model(args.run, device=check_device(args.device))
    levels = args.levels or info["default_levels"]
    if args.levels == 3 and 3 not in info["trained_levels"]:
        print(f"babyssm: warning: {args.run} has not completed stage 3; level 3 is untrained",
              file=sys.stderr)
    chars = generate_text(model, args.prompt, args.new_chars, args.temperature, args.top_k, args.seed, levels)
    sys.stdout.write(clean_text(args.prompt))
    sys.stdout.flush()
    with torch.inference_mode():
        for ch in chars:
            sys.stdout.write(ch)
            sys.stdout.flush()  # stream: show each character as soon as it is sampled
    sys.stdout.write("\n")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate", help="sample text from a trained model (the inference probe)",
        description="Continue a prompt with characters sampled from a checkpoint, streamed to stdout. "
        "The prompt is cleaned like the training text and echoed first.",
    )
    add_renamed(p, "--run", "--ckpt", required=True, metavar="RUN_DIR", help="run folder written by `babyssm train`")
    p.add_argument("--prompt", default="", help="text to continue (default: start of text)")
    add_renamed(p, "--new-chars", "--max-chars", type=int, default=300, metavar="N",
                help="characters to generate after the prompt (default 300)")
    p.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0 is greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=20, help="sample among the k likeliest symbols (default 20)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0): same seed, same text")
    p.add_argument("--levels", type=int, choices=[2, 3],
                   help="hierarchical model levels (default: 3 once stage 3 is trained, else 2)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cpu (default) or cuda")
    p.set_defaults(func=_cmd_generate)
