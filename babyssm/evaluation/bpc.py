"""Bits per character of a prepared split, and the files ``babyssm eval`` writes into the run folder.

Symbols: T seq_len (characters per window), B streams (rows of a batch), n characters scored.

``babyssm eval bpc --run RUN --data PREPARED --split dev [--chars-per-file N]``
    Bits per character -log2 p(text) / n, overall and per source file (from
    meta.json's offsets into the split's .bin), for each level the checkpoint has
    (level 2 alone, then levels 2+3). ``--chars-per-file N`` takes the first N characters
    of each source file. Two ways to read long text (``babyssm.evaluation.scoring``):
    ``--context overlap`` (default, every model): windows of T = 256 chars from BOS
    with stride T/2, each scoring only its second half, so every character has T/2..T
    chars of context -- the range training showed the models (BOS + a T-char window,
    no carried state). ``--context carry`` (models with ``forward_from``): state
    carried across windows, the exact streaming likelihood, with contexts longer than
    any training window. Writes RUN/eval/bpc_<split>.json.
``babyssm eval blimp --run RUN --pairs blimp_filtered|blimp|supplement_filtered|DIR``
    Minimal pairs scored by ``babyssm.evaluation.zeroshot``: per file (67 rows for BLiMP), per
    phenomenon and overall micro/macro accuracy; RUN/eval/<set>.json, .md (tables)
    and .png (bar chart per file); a summary on stdout.
``babyssm eval zero-shot --run RUN --suite babylm``
    BLiMP filtered, supplement, EWoK, entity tracking and wug adjective
    nominalization, each scored as the BabyLM 2025 pipeline scores it, plus one
    summary table: RUN/eval/zero_shot.json and .md.

Outputs for non-default ``--levels`` get a ``_levels<L>`` suffix, so the default
evaluation (what ``babyssm report`` reads) is never overwritten by a probe.

    babyssm eval bpc --run work/run --data work/prepared --split dev --chars-per-file 200000
    babyssm eval blimp --run work/run --pairs blimp_filtered --limit-per-file 50
    babyssm eval zero-shot --run work/run --suite babylm
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from babyssm.errors import BabySSMError
from babyssm.evaluation import scoring
from babyssm.io import atomic_write_bytes, atomic_write_json
from babyssm.plots import blimp_plot

LN2 = math.log(2.0)


def load_scorer(run_dir: str | Path, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """A run folder's scorer (a CharLM, or the n-gram) and its info (config.json + default_levels)."""
    from babyssm.training.checkpoint import load_model, read_config

    config = read_config(run_dir)
    if config["model_type"] == "ngram":
        from babyssm.models.ngram import load_ngram

        return load_ngram(run_dir), {**config, "default_levels": None, "run_dir": str(run_dir)}
    return load_model(run_dir, device)


def blimp_markdown(res: dict[str, Any], title: str) -> str:
    lines = [f"# {title}", "",
             f"{res['n']} pairs; accuracy (ties count 1/2): micro {res['micro']:.2f}, macro over files "
             f"{res['macro']:.2f}; pipelines' figure (ties right, macro): {res['macro_ties_right']:.2f}; "
             f"ties: {res['ties']}.", "", "## Per phenomenon", "",
             "| phenomenon | files | pairs | micro | macro |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {p['linguistics_term']} | {p['files']} | {p['n']} | {p['micro']:.2f} | {p['macro']:.2f} |"
              for p in res["phenomena"]]
    lines += ["", "## Per file", "", "| file | field | phenomenon | pairs | accuracy | ties right | ties |",
              "|---|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['file']} | {r['field']} | {r['linguistics_term']} | {r['n']} | {r['accuracy']:.2f} | "
              f"{r['accuracy_ties_right']:.2f} | {r['ties']} |" for r in res["files"]]
    return "\n".join(lines) + "\n"


def write_result(res: dict[str, Any], eval_dir: Path, stem: str, title: str) -> None:
    """EVAL_DIR/<stem>.json, and for minimal pairs also the .md tables and the .png chart."""
    atomic_write_json(eval_dir / f"{stem}.json", res)
    if res["task"] == "blimp":
        atomic_write_bytes(eval_dir / f"{stem}.md", blimp_markdown(res, title).encode())
        blimp_plot(res, eval_dir / f"{stem}.png", title)


def levels_to_evaluate(info: dict[str, Any]) -> list[int | None]:
    """Level 2 alone up to the checkpoint's default (2..default_levels); [None] for baselines."""
    top = info.get("default_levels")
    return [None] if top is None else list(range(2, top + 1))


def evaluate_bpc(scorer: Any, prepared_dir: str | Path, split: str = "dev", levels: list[int | None] | None = None,
                 chars_per_file: int | None = None, seq_len: int = 256, context: str = "overlap",
                 batch_size: int = scoring.DEFAULT_BATCH_SIZE, streams: int = 16) -> dict[str, Any]:
    """Bits per character of a prepared split, per source file and overall, for each ``levels`` value."""
    from babyssm.data.prepared import load_meta, load_split

    data = load_split(prepared_dir, split)
    sources = [s for s in load_meta(prepared_dir).get("sources", []) if s.get("split") == split]
    if not sources:
        raise BabySSMError(f"{prepared_dir}/meta.json lists no {split} sources; rerun `babyssm prepare`")
    if context == "carry" and not callable(getattr(scorer, "forward_from", None)):
        raise BabySSMError(f"--context carry needs a model with forward_from; {type(scorer).__name__} has none")
    runs = []
    for lv in levels or [None]:
        rows, nats, chars = [], 0.0, 0
        for src in sources:
            n = src["length"] if chars_per_file is None else min(src["length"], chars_per_file)
            text = np.asarray(data[src["offset"] : src["offset"] + n])
            if context == "carry":
                lp = scoring.streamed_logprob(scorer, text, seq_len=seq_len, streams=streams, levels=lv)
            else:
                lp = scoring.windowed_logprob(scorer, text, seq_len=seq_len, batch_size=batch_size, levels=lv)
            rows.append({"path": src["path"], "chars": int(n), "bpc": -lp / LN2 / n if n else math.nan})
            nats, chars = nats - lp, chars + n
        runs.append({"levels": lv, "bpc": nats / LN2 / chars, "chars": chars, "sources": rows})
    return {"split": split, "seq_len": seq_len, "context": context, "chars_per_file": chars_per_file,
            "bpc": runs[-1]["bpc"], "runs": runs}


def zero_shot_markdown(results: list[dict[str, Any]], title: str) -> str:
    lines = [f"# {title}", "", "| set | items | metric | score | pipeline figure (ties right) |",
             "|---|---:|---|---:|---:|"]
    for r in results:
        metric = "Spearman rho" if r["metric"] == "spearman_rho" else "accuracy %, macro (ties 1/2)"
        lines.append(f"| {r['set']} | {r['n']} | {metric} | {r['score']:.3f} | {r['pipeline_score']:.3f} |")
    return "\n".join(lines) + "\n"
