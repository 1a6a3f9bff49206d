"""What the command modules share: argument types, flags generated from config dataclasses,
and the old spellings of renamed flags.

Flags from a config (``add_config_flags``): every field of a settings dataclass such as
``babyssm.training.plan.TrainConfig`` carries its help text in ``field(metadata=...)``;
the flag is ``--`` + the field name with dashes (a ``bool`` field: ``--name`` / ``--no-name``),
parsed by the field's type (``int``, ``float``, ``str``) or by ``metadata["parse"]``: "count"
(a positive count, ``positive_count``) or "milestones" (``parse_milestones``). ``flag``, ``metavar``,
``choices``, ``nargs``/``const`` and ``group`` (flags of one group exclude each other)
override the defaults. Flags default to None, so ``config_values`` returns only what
was given: the overrides of a resumed run.

Renamed flags (``add_renamed``): the new spelling is the flag; the old one still works
for one release, hidden from ``--help``, and prints a one-line deprecation notice.

>>> parser = argparse.ArgumentParser(prog="demo")
>>> add_renamed(parser, "--run", "--ckpt", metavar="RUN_DIR", required=True)
>>> parser.parse_args(["--run", "a"]).run
'a'
>>> positive_count("20e6"), positive_count("1_000")
(20000000, 1000)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from typing import Any

from babyssm.errors import BabySSMError
from babyssm.training.plan import parse_milestones


def positive_count(text: str) -> int:
    """argparse type: a positive whole number, also written as 20e6 or 20_000_000."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 1 or value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive whole number")
    return int(value)


def count_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: a whole number >= ``minimum``."""
    def parse(text: str) -> int:
        value = positive_count(text) if minimum >= 1 else int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text}")
        return value

    return parse


def _milestones(text: str) -> tuple[int, ...]:
    try:
        return parse_milestones(text)
    except BabySSMError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


_PARSERS: dict[str, Callable[[str], Any]] = {"count": positive_count, "milestones": _milestones}
_TYPES: dict[str, Callable[[str], Any]] = {"int": int, "float": float, "str": str}


def add_config_flags(parser: argparse.ArgumentParser, config_class: type, names: tuple[str, ...],
                     notes: dict[str, str] | None = None) -> list[str]:
    """Add a flag for each field ``names`` of ``config_class`` (see the module docstring);
    ``notes`` prefixes a field's help (e.g. which command variants it applies to).
    Returns the flags' destinations, for ``config_values``."""
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    groups: dict[str, Any] = {}
    for name in names:
        f, meta = fields[name], dict(fields[name].metadata)
        if "help" not in meta:
            raise TypeError(f"{config_class.__name__}.{name} has no help text (field metadata)")
        default = f.default if f.default is not dataclasses.MISSING else None
        shown = "" if default in (None, ()) else f" (default {default})"
        kwargs: dict[str, Any] = {"dest": name, "default": None,
                                  "help": (notes or {}).get(name, "") + meta["help"] + shown}
        kind = str(f.type).split("|")[0].strip()
        if kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction  # --x / --no-x: a resumed run can turn it off
        else:
            kwargs["type"] = _PARSERS[meta["parse"]] if "parse" in meta else _TYPES.get(kind, str)
            if "metavar" in meta or "choices" not in meta:  # choices show themselves: {cpu,cuda}
                kwargs["metavar"] = meta.get("metavar", name.upper())
            for key in ("choices", "nargs", "const"):
                if key in meta:
                    kwargs[key] = meta[key]
        target = parser
        if "group" in meta:
            if meta["group"] not in groups:
                groups[meta["group"]] = parser.add_mutually_exclusive_group()
            target = groups[meta["group"]]
        target.add_argument(meta.get("flag", "--" + name.replace("_", "-")), **kwargs)
    return list(names)


def config_values(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    """The config fields given on the command line (flags left out are None)."""
    return {k: getattr(args, k) for k in names if getattr(args, k) is not None}


class _OldSpelling(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str, new: str = "", **kwargs: Any):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"babyssm: warning: {option_string} is deprecated here and goes in the next release; "
              f"use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_renamed(parser: Any, new: str, old: str, required: bool = False, **kwargs: Any) -> None:
    """Add flag ``new`` and, hidden, its old spelling ``old`` (same destination, a deprecation
    notice when used); with ``required``, one of the two must be given."""
    dest = kwargs.pop("dest", new.lstrip("-").replace("-", "_"))
    target = parser.add_mutually_exclusive_group(required=True) if required else parser
    target.add_argument(new, dest=dest, **kwargs)
    old_kwargs = {k: v for k, v in kwargs.items() if k in ("type", "nargs", "choices", "metavar")}
    target.add_argument(old, dest=dest, action=_OldSpelling, new=new, help=argparse.SUPPRESS, **old_kwargs)
