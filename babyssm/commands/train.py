"""``babyssm train``: the command line of the training loop (``babyssm.training.loop``).

Builds the model (a preset, or the config of an ``--init`` run, with ``--set KEY=VALUE``
changes), the stage plan (``--stage``: all, one, or several such as ``1,2``) and the
``TrainConfig`` from the flags, or everything from RUN_DIR with ``--resume``, and
records the command line in the run's config.json (``commands``: every invocation
that trained it, those of an ``--init`` run first).

    babyssm train --preset seed --stage all --data work/prepared --out work/run --max-minutes 30
    babyssm train --init work/run --stage 3 --data work/prepared --out work/run3 --max-chars 20e6
    babyssm train --init work/l12 --stage 3 --set level3_rate=word --data work/prepared --out work/w --max-chars 2e6
    torchrun --nproc_per_node 4 -m babyssm train --device cuda ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch

from babyssm.commands.args import add_config_flags, config_values
from babyssm.errors import BabySSMError
from babyssm.models.lm import CharLM, config_of, model_class
from babyssm.training import checkpoint as ckpt
from babyssm.training import runfolder
from babyssm.training.loop import train
from babyssm.training.plan import StageConfig, TrainConfig, default_stages, resumed_train_config, select_stages

TRAIN_FLAGS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.init)  # every setting has a flag


def _check_same(flag: str, given: Any, saved: Any, where: str) -> None:
    if given is not None and given != saved:
        raise BabySSMError(f"{flag} conflicts with {where}; drop {flag} to use the saved value")


def config_overrides(pairs: list[str], config_class: type) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs as config fields; a VALUE is read as JSON where it parses
    (numbers, true, lists), else kept as a string.

    >>> from babyssm.models.config import ModelConfig
    >>> config_overrides(["level3_rate=word", "finetune_fraction=0.2"], ModelConfig)
    {'level3_rate': 'word', 'finetune_fraction': 0.2}
    """
    fields = {f.name: f.type for f in dataclasses.fields(config_class) if f.init}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or key not in fields:
            raise BabySSMError(f"--set {pair!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(fields))}")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
        if fields[key] in ("float", float) and isinstance(out[key], int) and not isinstance(out[key], bool):
            out[key] = float(out[key])  # -2 for a float field means -2.0
    return out


def _configured(model_type: str, config: dict[str, Any], overrides: dict[str, Any]) -> CharLM:
    return ckpt.build_from_config({"model_type": model_type, "config": {**config, **overrides}}, "--set")


def _cmd_train(args: argparse.Namespace) -> int:
    from babyssm.models.presets import DEFAULT_PRESET, model_preset

    given = config_values(args, TRAIN_FLAGS)
    if args.resume and args.set:
        raise BabySSMError(f"--set conflicts with --resume: {args.out} keeps the config it was started with")
    if args.init:  # --set changes the config of the --init run's model family
        config_class = model_class(ckpt.read_config(args.init)["model_type"]).config_class
    elif not args.resume:
        model_type, preset = model_preset(args.preset or DEFAULT_PRESET)
        config_class = type(preset)
    overrides = config_overrides(args.set, config_class) if args.set else {}
    if args.resume:
        saved = ckpt.read_config(runfolder.run_folder(args.out), flag="--out")
        model = ckpt.build_from_config(saved, Path(args.out) / ckpt.CONFIG_FILE)
        if args.preset is not None:
            _check_same("--preset", ckpt.config_dict(model_preset(args.preset)[1]), ckpt.config_dict(model.config),
                        args.out)
        stages = [StageConfig(**s) for s in saved["stages"]]
        _check_same("--stage", args.stage and select_stages(default_stages(model), args.stage), stages, args.out)
        config = resumed_train_config(saved["train_config"], given)
    else:
        runfolder.run_folder(args.out)
        torch.manual_seed(given.get("seed", 0))  # the model's initial weights
        if args.init:
            prior = ckpt.read_config(args.init)
            if args.preset is not None:
                _check_same("--preset", ckpt.config_dict(model_preset(args.preset)[1]),
                            ckpt.config_dict(config_of(prior["model_type"], prior["config"])), args.init)
            model = _configured(prior["model_type"], prior["config"], overrides)  # weights: train(init_from=...)
        else:
            model = _configured(model_type, dataclasses.asdict(preset), overrides)
        stages = select_stages(default_stages(model), args.stage or "all")
        config = TrainConfig(**given)
    summary = train(model, args.data, args.out, config, stages, resume=args.resume, init_from=args.init,
                    command=args.invocation)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2))
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train a model's stages on a prepared corpus",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train the hierarchical model stage by stage (1: character encoder, 2: tinySSM, "
        "3: mainSSM) on PREPARED_DIR/train.bin, evaluating on dev.bin, checkpointing to RUN_DIR.",
        epilog="examples:\n"
        "  babyssm train --preset tiny --data work/prepared --out work/run --max-minutes 5\n"
        "  babyssm train --data work/prepared --out work/run --resume\n"
        "  babyssm train --init work/run --stage 3 --data work/prepared --out work/run3 --max-chars 20e6\n"
        "  torchrun --nproc_per_node 2 -m babyssm train --data work/prepared --out work/ddp --max-chars 1e7",
    )
    p.add_argument("--preset", help="model preset: hlru (default: character blocks around a word level, "
                   "docs/DESIGN.md), hlru-attn (its word level mixing by attention over words), hlru-flat (no word "
                   "level), deep (the seed's sizes with the level-3 recipe), seed (the original recipe), tiny; "
                   "`babyssm info --preset NAME`; a resumed or --init run keeps its own")
    p.add_argument("--stage", metavar="S",
                   help="stages to train: all (default), one (1, 2, 3, 4: end-to-end fine-tuning) or several "
                   "(1,2); the chosen stages share the whole budget in their planned proportions")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="change a model config field of the preset or --init run, e.g. level3_rate=word "
                   "(repeatable; fields: babyssm info --json)")
    p.add_argument("--data", required=True, metavar="PREPARED_DIR", help="output folder of `babyssm prepare`")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder: checkpoints, metrics, plots")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR exactly where it stopped")
    p.add_argument("--init", metavar="RUN_DIR", help="start from this run's weights (e.g. stage 3 on a stage-2 run)")
    add_config_flags(p, TrainConfig, TRAIN_FLAGS)
    p.set_defaults(func=_cmd_train)
