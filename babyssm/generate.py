"""The inference probe: stream text from a trained model, one character at a time.

Symbols: V vocabulary (128), c a symbol id, k top-k, tau temperature.

``babyssm generate --ckpt RUN_DIR --prompt TEXT`` cleans the prompt exactly as the
training text was cleaned (``babyssm.clean.clean_text``: ASCII folding, whitespace
normalisation), encodes it, feeds BOS + prompt through the model's recurrent ``step``
and then samples: p(c) = softmax(logits / tau) restricted to the k likeliest symbols
(tau 0 is greedy decoding). Each sampled character is written to stdout and flushed
at once. Decoding costs the same for every character (a recurrent state, no
attention over the past), so long outputs do not slow down.

The model is the run's own: ``levels`` defaults to 3 once stage 3 has completed,
else 2 (``info["default_levels"]``). Only symbols that cleaned text can hold are
sampled (``CharLM.generate`` masks BOS and the unused control codes), so exactly
``--max-chars`` characters follow the prompt.

Example (a run trained by ``babyssm train``; prints the cleaned prompt, then 40
sampled characters, the same ones for the same seed)::

    $ babyssm generate --ckpt work/run --prompt "Once upon a time" --max-chars 40 --seed 0

>>> import torch
>>> from babyssm.config import get_preset
>>> from babyssm.model import HierarchicalSSM
>>> _ = torch.manual_seed(0)
>>> model = HierarchicalSSM(get_preset("tiny"))
>>> len("".join(generate_text(model, "Hi", max_chars=5, temperature=0)))
5
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

import torch

from babyssm.checkpoint import load_model
from babyssm.errors import BabySSMError
from babyssm.lm import CharLM
from babyssm.vocab import encode

def clean_prompt(prompt: str) -> list[int]:
    """Clean ``prompt`` the way the corpus was cleaned and encode it to symbol ids."""
    from babyssm.clean import clean_text

    return encode(clean_text(prompt))


def generate_text(
    model: CharLM,
    prompt: str,
    max_chars: int,
    temperature: float = 0.8,
    top_k: int | None = 20,
    seed: int = 0,
    levels: int | None = None,
) -> Iterator[str]:
    """Yield ``max_chars`` sampled characters continuing the cleaned ``prompt``."""
    if max_chars < 0:
        raise BabySSMError(f"--max-chars must be >= 0, got {max_chars}")
    if not temperature >= 0:
        raise BabySSMError(f"--temperature must be >= 0 (0 is greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise BabySSMError(f"--top-k must be at least 1, got {top_k}")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    model.eval()
    ids = clean_prompt(prompt)
    # A plain function returning a generator: bad arguments fail here, before any output.
    return (chr(i) for i in model.generate(ids, max_chars, temperature=temperature, top_k=top_k,
                                              generator=generator, levels=levels))


def _cmd_generate(args: argparse.Namespace) -> int:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise BabySSMError(f"--device cuda: CUDA is not available (torch {torch.__version__}); use --device cpu")
    model, info = load_model(args.ckpt, device=args.device)
    levels = args.levels or info["default_levels"]
    if args.levels == 3 and 3 not in info["stages_completed"]:
        print(f"babyssm: warning: {args.ckpt} has not completed stage 3; level 3 is untrained",
              file=sys.stderr)
    from babyssm.clean import clean_text

    chars = generate_text(model, args.prompt, args.max_chars, args.temperature, args.top_k, args.seed, levels)
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
    p.add_argument("--ckpt", required=True, metavar="RUN_DIR", help="run folder written by `babyssm train`")
    p.add_argument("--prompt", default="", help="text to continue (default: start of text)")
    p.add_argument("--max-chars", type=int, default=300, help="characters to generate (default 300)")
    p.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0 is greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=20, help="sample among the k likeliest symbols (default 20)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0): same seed, same text")
    p.add_argument("--levels", type=int, choices=[2, 3],
                   help="hierarchical model levels (default: 3 once stage 3 is trained, else 2)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cpu (default) or cuda")
    p.set_defaults(func=_cmd_generate)
