"""One results table from run folders, written into docs/RESULTS.md by ``babyssm report``.

Symbols: a run folder RUN holds config.json (written by training or the n-gram
baseline) and RUN/eval/*.json (written by ``babyssm eval``); acc_f is a run's
accuracy (%) on BLiMP file f, ties counting 1/2.

The table (one row per run): model, parameters, training characters, training time,
dev bits per character, BLiMP filtered (micro, macro), original BLiMP, the BLiMP
supplement and EWoK (macro accuracies: the BabyLM pipeline's averages). A value an
evaluation has not produced yet shows as "-"; one from a partial evaluation
(``--limit-per-file`` or ``--chars-per-file``) carries a dagger. Below it, the commands
that made each row: training (recorded in config.json by ``babyssm train`` and
``babyssm baseline``), then evaluation (recorded by ``babyssm eval`` in its JSON).

Easier and harder halves (the view of the post that started the project): the 67
filtered-BLiMP files are ranked by the n-gram baseline's acc_f (the run whose
model_type is "ngram"; ties by file name); the top ceil(67/2) = 34 files are the
"easier" half -- what local character statistics already get right -- and the rest
"harder". Each model's macro accuracy on each half shows whether it learned more
than an n-gram knows.

Only the text between ``<!-- babyssm:report:begin -->`` and
``<!-- babyssm:report:end -->`` is replaced; hand-written text around it stays. A file
without the markers gets the section appended.

    babyssm report --runs work/ngram work/gru work/run --out docs/RESULTS.md

``--ablation`` renders the level-3 ablation table instead (issue: make the hierarchy
pay), between ``<!-- babyssm:ablation:begin -->`` and ``<!-- babyssm:ablation:end -->``:
one row per hierarchical run with what it changes from the seed preset, the stages it
trained, its seed and characters, dev bits per character of level 2 alone and of the
whole model, the gain over the first run without level 3 with the same seed and
characters (levels 1+2 alone at the same budget) and BLiMP filtered; below it, each
run's training commands.

>>> doc = replace_section("# Results\\nhand-written\\n", "table\\n")
>>> doc
'# Results\\nhand-written\\n\\n<!-- babyssm:report:begin -->\\ntable\\n<!-- babyssm:report:end -->\\n'
>>> replace_section(doc + "more text\\n", "new table\\n").split("\\n")[3:]
['<!-- babyssm:report:begin -->', 'new table', '<!-- babyssm:report:end -->', 'more text', '']
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from babyssm.errors import BabySSMError
from babyssm.models.lm import model_class

BEGIN = "<!-- babyssm:report:begin -->"
END = "<!-- babyssm:report:end -->"
ABLATION = ("<!-- babyssm:ablation:begin -->", "<!-- babyssm:ablation:end -->")
DASH = "-"
PARTIAL = "\u2020"  # dagger: from a partial evaluation


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BabySSMError(f"{path} is not valid JSON ({e}); rerun the evaluation that wrote it") from None


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """What the report needs from one run folder: identity, training record, eval results."""
    from babyssm.training.checkpoint import read_config

    run_dir = Path(run_dir)
    config = read_config(run_dir)
    ngram = config["model_type"] == "ngram"
    stages = config.get("stages_completed", [])
    evals = {p.stem: _read_json(p) for p in sorted((run_dir / "eval").glob("*.json"))}
    name = f"{run_dir.name} ({config['model_type']}"
    name += f", order {config['config'].get('order')})" if ngram else ")"
    return {
        "dir": str(run_dir), "name": name, "model_type": config["model_type"],
        "size": (f"{config['num_ngrams']:,} n-grams" if ngram and "num_ngrams" in config
                 else f"{config['num_parameters']:,}" if "num_parameters" in config else DASH),
        "chars": config.get("chars_seen"), "seconds": config.get("train_seconds"), "evals": evals,
        "config": config.get("config", {}), "stages_completed": stages,
        "default_levels": None if ngram else model_class(config["model_type"]).default_levels(stages),
        "commands": config.get("commands", []), "seed": config.get("run_info", {}).get("seed"),
    }


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return DASH
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def _chars(n: int | None) -> str:
    return DASH if n is None else f"{n / 1e6:.1f}M"


def _value(res: dict[str, Any] | None, key: str, digits: int = 2) -> str:
    if res is None or res.get(key) is None or (isinstance(res[key], float) and math.isnan(res[key])):
        return DASH
    # "max_chars": what chars_per_file was called in results written before babyssm 0.2
    partial = any(res.get(k) is not None for k in ("limit_per_file", "chars_per_file", "max_chars"))
    return f"{res[key]:.{digits}f}" + (PARTIAL if partial else "")


def results_table(runs: list[dict[str, Any]]) -> list[str]:
    lines = ["| model | parameters | training chars | training time | dev bpc | BLiMP filtered micro | "
             "BLiMP filtered macro | BLiMP original | supplement | EWoK |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        e = r["evals"]
        cells = [r["name"], r["size"], _chars(r["chars"]), _duration(r["seconds"]), _value(e.get("bpc_dev"), "bpc", 3),
                 _value(e.get("blimp_filtered"), "micro"), _value(e.get("blimp_filtered"), "macro"),
                 _value(e.get("blimp"), "macro"), _value(e.get("supplement_filtered"), "macro"),
                 _value(e.get("ewok_filtered"), "macro")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def halves(runs: list[dict[str, Any]]) -> list[str]:
    """The easier/harder split of filtered BLiMP by the n-gram's per-file accuracy."""
    ngram = next((r for r in runs if r["model_type"] == "ngram" and r["evals"].get("blimp_filtered")), None)
    if ngram is None:
        return ["No n-gram run with a filtered-BLiMP evaluation was given, so there is no easier/harder split: "
                "add one to --runs (`babyssm baseline ngram`, then `babyssm eval blimp`)."]
    acc = {f["file"]: f["accuracy"] for f in ngram["evals"]["blimp_filtered"]["files"]}
    ranked = sorted(acc, key=lambda f: (-acc[f], f))
    cut = math.ceil(len(ranked) / 2)
    easier, harder = ranked[:cut], ranked[cut:]
    lines = [f"Filtered-BLiMP files ranked by the n-gram's accuracy ({ngram['name']}): the {len(easier)} "
             f"files it does best on are \"easier\", the other {len(harder)} \"harder\" (macro accuracy, %).", "",
             f"| model | easier ({len(easier)} files) | harder ({len(harder)} files) |", "|---|---:|---:|"]
    for r in runs:
        res = r["evals"].get("blimp_filtered")
        if res is None:
            continue
        mine = {f["file"]: f["accuracy"] for f in res["files"]}
        cells = []
        for half in (easier, harder):
            got = [mine[f] for f in half if f in mine]
            cells.append(f"{sum(got) / len(got):.2f}" if got else DASH)
        lines.append(f"| {r['name']} | {cells[0]} | {cells[1]} |")
    lines += ["", "Harder files: " + ", ".join(harder) + "."]
    return lines


def _commands(runs: list[dict[str, Any]]) -> list[str]:
    """One line per run: its training commands as recorded, then the distinct evaluation commands, sorted."""
    lines = []
    for r in runs:
        evals = sorted({res["command"] for res in r["evals"].values() if res and res.get("command")})
        cmds = [*r["commands"], *evals]
        lines.append(f"- {r['name']}: " + ("; ".join(code_span(c) for c in cmds) if cmds else "not recorded"))
    return lines


def code_span(text: str) -> str:
    r"""``text`` as one inline Markdown code span: a line break written as backslash-n (a
    newline would end the list item), and a fence longer than any run of backticks inside.

    >>> print(code_span("a\nb"), code_span("x `y`"))
    `a\nb` `` x `y` ``
    """
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    if "`" not in text:
        return f"`{text}`"
    fence = "`" * (max(len(run) for run in re.findall("`+", text)) + 1)
    return f"{fence} {text} {fence}"


def render(runs: list[dict[str, Any]]) -> str:
    lines = ["## Results", "", "Generated by `babyssm report` from each run's config.json and eval/*.json; "
             f"{PARTIAL} marks a partial evaluation (--limit-per-file / --chars-per-file). Accuracies in %, ties "
             "count 1/2; macro = the BabyLM pipeline's average over files (UIDs).", ""]
    lines += results_table(runs)
    lines += ["", "### Easier and harder BLiMP files", ""] + halves(runs)
    lines += ["", "### Commands", ""] + _commands(runs)
    return "\n".join(lines) + "\n"


def _level_bpc(run: dict[str, Any], levels: int) -> float | None:
    res = run["evals"].get("bpc_dev")
    return next((r["bpc"] for r in (res or {}).get("runs", []) if r.get("levels") == levels), None)


def recipe(config: dict[str, Any]) -> str:
    """What a hierarchical config changes from the seed preset, e.g. "level3_rate=word"."""
    from babyssm.training.checkpoint import config_dict
    from babyssm.models.presets import get_preset

    seed = config_dict(get_preset("seed"))
    changed = [f"{k}={v}" for k, v in config.items() if k in seed and seed[k] != v and k != "level3_weights"]
    return ", ".join(changed) or "seed"


def ablation(runs: list[dict[str, Any]]) -> str:
    """The level-3 ablation table (see the module docstring)."""
    def budget(r: dict[str, Any]) -> tuple[Any, str]:
        return r["seed"], _chars(r["chars"])  # same seed, same characters to 0.1M

    bases: dict[tuple[Any, str], dict[str, Any]] = {}  # per budget: the first run without level 3
    for r in runs:
        if r["default_levels"] != 3:
            bases.setdefault(budget(r), r)
    lines = ["## Level-3 ablation", "", "Generated by `babyssm report --ablation`. Dev bits per character from "
             "`babyssm eval bpc` (its --chars-per-file), level 2 alone and the whole model; gain = bits "
             "saved against the first run without level 3 with the same seed and characters ("
             + (", ".join(b["name"] for b in bases.values()) or "none given") + ": levels 1+2 alone, same budget); "
             "BLiMP filtered accuracy in %, ties count 1/2.", "",
             "| run | changes from seed | stages | seed | training chars | dev bpc, level 2 | dev bpc, model | gain | "
             "BLiMP filtered micro | BLiMP filtered macro |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        top = r["default_levels"] or 2
        two, model = _level_bpc(r, 2), _level_bpc(r, top)
        base = bases.get(budget(r))
        base_bpc = _level_bpc(base, 2) if base else None
        gain = DASH if model is None or base_bpc is None else f"{base_bpc - model:+.3f}"
        blimp = r["evals"].get("blimp_filtered")  # at the run's own top level (eval's default)
        cells = [r["name"], recipe(r["config"]), ",".join(map(str, r["stages_completed"])),
                 DASH if r["seed"] is None else str(r["seed"]), _chars(r["chars"]),
                 DASH if two is None else f"{two:.3f}", DASH if model is None else f"{model:.3f}", gain,
                 _value(blimp, "micro"), _value(blimp, "macro")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "### Commands", ""] + _commands(runs)
    return "\n".join(lines) + "\n"


def replace_section(text: str, section: str, markers: tuple[str, str] = (BEGIN, END)) -> str:
    """``text`` with the marked section replaced by ``section`` (appended when unmarked)."""
    first, last = markers
    begin, end = text.find(first), text.find(last)
    block = f"{first}\n{section}{last}\n"
    if begin == -1 and end == -1:
        return text + ("\n" if text and not text.endswith("\n\n") else "") + block
    if begin == -1 or end == -1 or end < begin or text.count(first) > 1 or text.count(last) > 1:
        raise BabySSMError(f"the report markers are broken: keep exactly one {first} followed by one {last}")
    rest = text[end + len(last) :]
    return text[:begin] + block + (rest[1:] if rest.startswith("\n") else rest)
