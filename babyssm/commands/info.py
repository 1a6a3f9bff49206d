"""``babyssm info``: a preset's parameters (name, shape, count) per level."""

from __future__ import annotations

import argparse
import dataclasses
import json

from babyssm.models.hlru import HLRU, HLRU_PRESETS, get_hlru_preset
from babyssm.models.presets import DEFAULT_PRESET, PRESETS, format_parameter_table, get_preset, parameter_table


def _hlru_info(args: argparse.Namespace) -> int:
    """An hlru preset's parameters per part (map, encoder, word level, decoder, head)."""
    cfg = get_hlru_preset(args.preset)
    model = HLRU(cfg)
    rows = [{"part": n.split(".")[0], "name": n, "shape": list(p.shape), "count": p.numel()}
            for n, p in model.named_parameters()]
    totals = {part: sum(r["count"] for r in rows if r["part"] == part) for part in dict.fromkeys(r["part"] for r in rows)}
    if args.json:
        print(json.dumps({"preset": args.preset, "model_type": "hlru", "config": dataclasses.asdict(cfg),
                          "parameters": rows, "part_totals": totals, "total": model.num_parameters()}, indent=2))
        return 0
    print(f"preset {args.preset} (hlru): d_model {cfg.d_model}, d_word {cfg.d_word}, blocks {cfg.n_encoder} "
          f"character / {cfg.n_word} word / {cfg.n_decoder} character, head {cfg.head}, char_map {cfg.char_map}\n")
    for part, count in totals.items():
        print(f"{part:<24} {count:>12,}")
    print(f"{'total':<24} {model.num_parameters():>12,}")
    return 0


def _info(args: argparse.Namespace) -> int:
    if args.preset in HLRU_PRESETS:
        return _hlru_info(args)
    cfg = get_preset(args.preset)
    rows = parameter_table(cfg)
    if args.json:
        levels = sorted({r["level"] for r in rows})
        totals = {str(lv): sum(r["count"] for r in rows if r["level"] == lv) for lv in levels}
        print(json.dumps({"preset": args.preset, "config": dataclasses.asdict(cfg), "parameters": rows,
                          "level_totals": totals, "total": sum(r["count"] for r in rows)}, indent=2))
    else:
        print(f"preset {args.preset}: d_model {cfg.d_model}, d_state {cfg.d_state}, rank {cfg.rank}, "
              f"vocab {cfg.vocab_size}\n")
        print(format_parameter_table(rows))
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "info",
        help="print a preset's parameter table per level",
        description="Print the hierarchical model's parameters (name, shape, count) per level, "
        "with level totals and the grand total.",
    )
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted({**PRESETS, **HLRU_PRESETS}),
                   help=f"model preset (default: {DEFAULT_PRESET})")
    p.add_argument("--json", action="store_true", help="print the table and resolved config as JSON")
    p.set_defaults(func=_info)
