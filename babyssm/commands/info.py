"""``babyssm info``: a preset's parameters (name, shape, count) per level."""

from __future__ import annotations

import argparse
import dataclasses
import json

from babyssm.models.presets import DEFAULT_PRESET, PRESETS, format_parameter_table, get_preset, parameter_table


def _info(args: argparse.Namespace) -> int:
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
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS),
                   help=f"model preset (default: {DEFAULT_PRESET})")
    p.add_argument("--json", action="store_true", help="print the table and resolved config as JSON")
    p.set_defaults(func=_info)
