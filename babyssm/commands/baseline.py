"""``babyssm baseline``: count a character n-gram or train a GRU / transformer baseline.

    babyssm baseline ngram --data work/prepared --out work/ngram5 --order 5
    babyssm baseline gru --data work/prepared --out work/gru --max-minutes 30
    babyssm baseline transformer --data work/prepared --out work/tf --max-chars 20e6 --device cuda
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import torch

from babyssm.commands.args import add_config_flags, config_values, positive_count
from babyssm.data.prepared import load_meta, load_split
from babyssm.errors import BabySSMError
from babyssm.models.gru import gru_config_for_params
from babyssm.models.lm import build_model
from babyssm.models.ngram import NGramConfig, NGramLM
from babyssm.models.presets import seed_parameter_count
from babyssm.models.transformer import transformer_config_for_params
from babyssm.models.transformerpp import transformerpp_config_for_params
from babyssm.training.checkpoint import CONFIG_FILE, build_from_config, read_config, run_info
from babyssm.training.loop import train
from babyssm.training.plan import TrainConfig, resumed_train_config


def _cmd_ngram(args: argparse.Namespace) -> int:
    if args.max_minutes is not None:
        raise BabySSMError("--max-minutes applies to gru and transformer; n-gram counting takes seconds "
                           "(limit it with --max-chars)")
    try:
        config = NGramConfig(order=args.order or 5, seq_len=args.seq_len or 256,
                             **({"windows": args.windows} if args.windows else {}))
    except ValueError as e:
        raise BabySSMError(f"--order {args.order}: {e}") from None
    train = load_split(args.data, "train")
    train = train[: args.max_chars] if args.max_chars else train
    start = time.perf_counter()
    lm = NGramLM.fit(train, config)
    seconds = time.perf_counter() - start
    record = {"chars_seen": len(train), "train_seconds": round(seconds, 2), "data": str(args.data),
              "commands": [args.invocation]}
    if "dev" in load_meta(args.data)["splits"]:
        dev = load_split(args.data, "dev")
        record["dev_bpc"] = float(-lm.stream_logprobs(dev).mean() / math.log(2))
    lm.save(args.out, {**record, "run_info": run_info(args.seed or 0)})
    print(json.dumps({"n_grams": lm.num_ngrams, **record}, indent=2))
    return 0


def _cmd_neural(args: argparse.Namespace) -> int:
    flags = config_values(args, list(BASELINE_FLAGS))
    for name, (flag, _, _) in _OPTIMIZER_FLAGS.items():
        if args.resume and getattr(args, name) is not None:
            raise BabySSMError(f"{flag} conflicts with --resume: {args.out} keeps the value it was started with")
    if args.resume:
        saved = read_config(args.out, flag="--out")
        if saved["model_type"] != args.kind:
            raise BabySSMError(f"{args.out} holds a {saved['model_type']} run, not {args.kind}")
        model = build_from_config(saved, Path(args.out) / CONFIG_FILE)
        config = resumed_train_config(saved["train_config"], flags)
    else:
        config = TrainConfig(**flags)
        n = args.params or seed_parameter_count()
        if args.kind == "gru":
            cfg = gru_config_for_params(n, n_layers=args.layers or 1)
        elif args.kind == "transformerpp":
            cfg = transformerpp_config_for_params(n, n_layers=args.layers or 4, seq_len=config.seq_len)
        else:
            cfg = transformer_config_for_params(n, n_layers=args.layers or 4, seq_len=config.seq_len)
        given = {name: getattr(args, name) for name in _OPTIMIZER_FLAGS if getattr(args, name) is not None}
        for name, value in given.items():
            flag, ok, bounds = _OPTIMIZER_FLAGS[name]
            if not ok(value):
                raise BabySSMError(f"{flag} must be in {bounds}, got {value}")
        cfg = dataclasses.replace(cfg, **given)
        torch.manual_seed(config.seed)  # the initial weights
        model = build_model(args.kind, dataclasses.asdict(cfg))
        print(f"{args.kind}: {model.num_parameters():,} parameters (target {n:,}), config {dataclasses.asdict(cfg)}")
    summary = train(model, args.data, args.out, config, resume=args.resume, command=args.invocation)
    print(json.dumps(summary, indent=2))
    return 0


# The model-config fields a baseline's flags set: (flag, range check, the range in words). The
# configs check them too (babyssm.models.config.check_rates); these messages name the flag typed.
_OPTIMIZER_FLAGS = {
    "lr": ("--lr", lambda v: 0 < v < 1, "(0, 1)"),
    "weight_decay": ("--weight-decay", lambda v: 0 <= v < 1, "[0, 1)"),
    "min_lr_frac": ("--min-lr-frac", lambda v: 0 <= v <= 1, "[0, 1]"),
}

# The training settings a baseline takes (babyssm.training.plan.TrainConfig).
BASELINE_FLAGS = ("max_chars", "max_minutes", "seq_len", "batch_size", "eval_every", "eval_chars", "device", "seed",
                  "windows", "compile", "precision")
_NEURAL_ONLY = ("params", "layers", "batch_size", "eval_every", "eval_chars", "device", "resume", "lr",
                "weight_decay", "min_lr_frac", "compile", "precision")


def _cmd_baseline(args: argparse.Namespace) -> int:
    if args.kind == "ngram":
        # Identity, not equality: a flag given as 0 (--weight-decay 0) equals False but was given.
        given = [f"--{k.replace('_', '-')}" for k in _NEURAL_ONLY
                 if getattr(args, k) is not None and getattr(args, k) is not False]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise BabySSMError(f"{', '.join(given)} {verb} to gru and transformer, not the ngram baseline")
        return _cmd_ngram(args)
    if args.order is not None:
        raise BabySSMError(f"--order applies to the ngram baseline, not {args.kind}")
    return _cmd_neural(args)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "baseline", help="count an n-gram or train a GRU / transformer baseline",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Baselines on PREPARED_DIR: a character n-gram with interpolated Kneser-Ney "
        "(counted from train.bin in seconds), or a GRU / small transformer with the seed model's "
        "parameter count, trained by the `babyssm train` loop.",
        epilog="examples:\n"
        "  babyssm baseline ngram --data work/prepared --out work/ngram5 --order 5\n"
        "  babyssm baseline gru --data work/prepared --out work/gru --max-minutes 30\n"
        "  babyssm baseline transformer --data work/prepared --out work/tf --max-chars 20e6",
    )
    p.add_argument("kind", choices=["ngram", "gru", "transformer", "transformerpp"],
                   help="which baseline (transformerpp: RoPE, RMSNorm, SwiGLU; babyssm.models.transformerpp)")
    p.add_argument("--data", required=True, metavar="PREPARED_DIR", help="output folder of `babyssm prepare`")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder for the model and its record")
    p.add_argument("--order", type=int, metavar="N", help="ngram: order, 1..9 (default 5)")
    p.add_argument("--params", type=positive_count, metavar="N",
                   help="gru/transformer size (default: the seed model's)")
    p.add_argument("--layers", type=positive_count, metavar="L",
                   help="gru (default 1) / transformer (default 4) layers")
    p.add_argument("--resume", action="store_true", help="gru/transformer: continue the run in RUN_DIR")
    p.add_argument("--lr", type=float, metavar="LR",
                   help="gru/transformer: peak learning rate (the model config's lr; default 2e-3)")
    p.add_argument("--weight-decay", type=float, metavar="WD",
                   help="gru/transformer: AdamW decay of the matrices (the model config's weight_decay; default 0.1)")
    p.add_argument("--min-lr-frac", type=float, metavar="F",
                   help="gru/transformer: the cosine schedule ends at lr * F (the model config's min_lr_frac; "
                   "default 0.1; 0 decays to zero)")
    neural = "gru/transformer: "
    add_config_flags(p, TrainConfig, BASELINE_FLAGS, notes={
        "max_chars": "ngram: count the first N training characters; gru/transformer: ",
        "max_minutes": neural, "batch_size": neural, "eval_every": neural, "eval_chars": neural, "device": neural,
        "compile": neural, "precision": neural,
        "seq_len": "also the transformer's attention window and the ngram's counting window; ",
        "windows": "(for the ngram: its counting windows, default offset, which scores BLiMP better) "})
    p.set_defaults(func=_cmd_baseline)
