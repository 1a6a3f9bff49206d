"""``babyssm eval``: bits per character and the zero-shot tests, written into the run folder.

Symbols: T window (characters), B streams (rows of a batch), n characters scored.

``babyssm eval bpc --ckpt RUN --data PREPARED --split dev [--max-chars N]``
    Bits per character -log2 p(text) / n, overall and per source file (from
    meta.json's offsets into the split's .bin), for each level the checkpoint has
    (level 2 alone, then levels 2+3). ``--max-chars N`` takes the first N characters
    of each source file. Two ways to read long text (``babyssm.scoring``):
    ``--context overlap`` (default, every model): windows of T = 256 chars from BOS
    with stride T/2, each scoring only its second half, so every character has T/2..T
    chars of context -- the range training showed the models (BOS + a T-char window,
    no carried state). ``--context carry`` (models with ``forward_from``): state
    carried across windows, the exact streaming likelihood, with contexts longer than
    any training window. Writes RUN/eval/bpc_<split>.json.
``babyssm eval blimp --ckpt RUN --set blimp_filtered|blimp|supplement_filtered|DIR``
    Minimal pairs scored by ``babyssm.zeroshot``: per file (67 rows for BLiMP), per
    phenomenon and overall micro/macro accuracy; RUN/eval/<set>.json, .md (tables)
    and .png (bar chart per file); a summary on stdout.
``babyssm eval zero-shot --ckpt RUN --suite babylm``
    BLiMP filtered, supplement, EWoK, entity tracking and wug adjective
    nominalization, each scored as the BabyLM 2025 pipeline scores it, plus one
    summary table: RUN/eval/zero_shot.json and .md.

Outputs for non-default ``--levels`` get a ``_levels<L>`` suffix, so the default
evaluation (what ``babyssm report`` reads) is never overwritten by a probe.

    babyssm eval bpc --ckpt work/run --data work/prepared --split dev --max-chars 200000
    babyssm eval blimp --ckpt work/run --set blimp_filtered --limit-per-file 50
    babyssm eval zero-shot --ckpt work/run --suite babylm
"""

from __future__ import annotations

import argparse
import math
import shlex
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from babyssm import scoring
from babyssm.errors import BabySSMError
from babyssm.zeroshot import SUITES, TASK_OF_SET, evaluate_set, resolve_set

LN2 = math.log(2.0)


def load_scorer(run_dir: str | Path, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """A run folder's scorer (a CharLM, or the n-gram) and its info (config.json + default_levels)."""
    from babyssm.checkpoint import load_model, read_config

    config = read_config(run_dir)
    if config["model_type"] == "ngram":
        from babyssm.ngram import load_ngram

        return load_ngram(run_dir), {**config, "default_levels": None, "run_dir": str(run_dir)}
    model, info = load_model(run_dir, device)
    if getattr(model, "stages", (0,)) == (0,):
        info["default_levels"] = None  # a baseline has no levels to choose
    return model, info


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


def blimp_plot(res: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(res["files"], key=lambda r: r["accuracy"])
    fields = sorted({r["field"] for r in rows})
    colour = {f: plt.cm.tab10(i % 10) for i, f in enumerate(fields)}
    fig, ax = plt.subplots(figsize=(8, 1.5 + 0.17 * len(rows)))
    ax.barh(range(len(rows)), [r["accuracy"] for r in rows], color=[colour[r["field"]] for r in rows])
    ax.set_yticks(range(len(rows)), [r["file"] for r in rows], fontsize=6)
    ax.axvline(50, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlim(0, 100)
    ax.set_xlabel("accuracy (%), ties count 1/2; dashed: chance")
    ax.set_title(f"{title}: micro {res['micro']:.1f}, macro {res['macro']:.1f}", fontsize=9)
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=colour[f]) for f in fields], labels=fields, fontsize=7,
              loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def write_result(res: dict[str, Any], eval_dir: Path, stem: str, title: str) -> None:
    """EVAL_DIR/<stem>.json, and for minimal pairs also the .md tables and the .png chart."""
    from babyssm.checkpoint import atomic_write, atomic_write_bytes, atomic_write_json

    atomic_write_json(eval_dir / f"{stem}.json", res)
    if res["task"] == "blimp":
        atomic_write_bytes(eval_dir / f"{stem}.md", blimp_markdown(res, title).encode())
        atomic_write(eval_dir / f"{stem}.png", lambda tmp: blimp_plot(res, Path(tmp), title))


def levels_to_evaluate(info: dict[str, Any]) -> list[int | None]:
    """Level 2 alone up to the checkpoint's default (2..default_levels); [None] for baselines."""
    top = info.get("default_levels")
    return [None] if top is None else list(range(2, top + 1))


def evaluate_bpc(scorer: Any, prepared_dir: str | Path, split: str = "dev", levels: list[int | None] | None = None,
                 max_chars: int | None = None, window: int = 256, context: str = "overlap",
                 batch_size: int = scoring.DEFAULT_BATCH_SIZE, streams: int = 16) -> dict[str, Any]:
    """Bits per character of a prepared split, per source file and overall, for each ``levels`` value."""
    from babyssm.data import load_meta, load_split

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
            n = src["length"] if max_chars is None else min(src["length"], max_chars)
            text = np.asarray(data[src["offset"] : src["offset"] + n])
            if context == "carry":
                lp = scoring.streamed_logprob(scorer, text, window=window, streams=streams, levels=lv)
            else:
                lp = scoring.windowed_logprob(scorer, text, window=window, batch_size=batch_size, levels=lv)
            rows.append({"path": src["path"], "chars": int(n), "bpc": -lp / LN2 / n if n else math.nan})
            nats, chars = nats - lp, chars + n
        runs.append({"levels": lv, "bpc": nats / LN2 / chars, "chars": chars, "sources": rows})
    return {"split": split, "window": window, "context": context, "max_chars": max_chars,
            "bpc": runs[-1]["bpc"], "runs": runs}


def _device(name: str) -> str:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BabySSMError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return name


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this evaluation (kept in its JSON for the report)."""
    parts = ["babyssm", "eval", args.eval_command]
    for key, value in vars(args).items():
        if key not in ("func", "command", "eval_command", "invocation") and value is not None:
            parts += [f"--{key.replace('_', '-')}", str(value)]
    return shlex.join(parts)


def _eval_dir(args: argparse.Namespace) -> Path:
    return Path(args.ckpt) / "eval"


def _levels_arg(args: argparse.Namespace, info: dict[str, Any]) -> int | None:
    if args.levels is not None and info.get("default_levels") is None:
        raise BabySSMError(f"--levels: {args.ckpt} is a baseline without levels; drop the flag")
    return args.levels if args.levels is not None else info.get("default_levels")


def _stem(set_name: str, levels: int | None, info: dict[str, Any]) -> str:
    return set_name if levels == info.get("default_levels") else f"{set_name}_levels{levels}"


def _cmd_bpc(args: argparse.Namespace) -> int:
    scorer, info = load_scorer(args.ckpt, _device(args.device))
    levels = [_levels_arg(args, info)] if args.levels is not None else levels_to_evaluate(info)
    res = evaluate_bpc(scorer, args.data, args.split, levels, args.max_chars, args.window, args.context,
                       args.batch_size, args.streams)
    res["command"] = _command(args)
    stem = _stem(f"bpc_{args.split}", levels[-1], info)
    from babyssm.checkpoint import atomic_write_json

    atomic_write_json(_eval_dir(args) / f"{stem}.json", res)
    heads = [f"bpc L{r['levels']}" if r["levels"] else "bpc" for r in res["runs"]]
    print(f"{'source':<40} {'chars':>10} " + " ".join(f"{h:>8}" for h in heads))
    for i, src in enumerate(res["runs"][0]["sources"]):
        cells = " ".join(f"{r['sources'][i]['bpc']:>8.4f}" for r in res["runs"])
        print(f"{src['path']:<40} {src['chars']:>10,} {cells}")
    print(f"{'all':<40} {res['runs'][0]['chars']:>10,} " + " ".join(f"{r['bpc']:>8.4f}" for r in res["runs"]))
    print(f"written to {_eval_dir(args) / (stem + '.json')}")
    return 0


def _task(set_dir: Path) -> str:
    return TASK_OF_SET.get(set_dir.name, "blimp")  # any other folder holds minimal pairs


def _run_set(scorer: Any, info: dict[str, Any], args: argparse.Namespace, set_dir: Path, levels: int | None) -> dict:
    task = _task(set_dir)
    t0 = time.perf_counter()
    res = evaluate_set(scorer, set_dir, task, name=set_dir.name, limit_per_file=args.limit_per_file,
                       batch_size=args.batch_size, levels=levels)
    res.update(seconds=round(time.perf_counter() - t0, 2), command=_command(args))
    title = f"{set_dir.name}: {Path(args.ckpt).name}" + (f" (levels {levels})" if levels else "")
    write_result(res, _eval_dir(args), _stem(set_dir.name, levels, info), title)
    return res


def _cmd_blimp(args: argparse.Namespace) -> int:
    set_dir = resolve_set(args.set, args.data_root)
    if _task(set_dir) != "blimp":
        raise BabySSMError(f"--set {args.set} is a {_task(set_dir)} set, not minimal pairs; "
                           "use `babyssm eval zero-shot`")
    scorer, info = load_scorer(args.ckpt, _device(args.device))
    levels = _levels_arg(args, info)
    res = _run_set(scorer, info, args, set_dir, levels)
    print(f"{res['set']}: {res['n']} pairs in {res['seconds']:.0f}s; accuracy micro {res['micro']:.2f}, "
          f"macro {res['macro']:.2f}; pipelines' figure (ties right) {res['macro_ties_right']:.2f}; "
          f"ties {res['ties']}")
    for p in res["phenomena"]:
        print(f"  {p['linguistics_term']:<36} {p['n']:>6} pairs  {p['micro']:6.2f}")
    print(f"written to {_eval_dir(args) / _stem(res['set'], levels, info)}.{{json,md,png}}")
    return 0


def zero_shot_markdown(results: list[dict[str, Any]], title: str) -> str:
    lines = [f"# {title}", "", "| set | items | metric | score | pipeline figure (ties right) |",
             "|---|---:|---|---:|---:|"]
    for r in results:
        metric = "Spearman rho" if r["metric"] == "spearman_rho" else "accuracy %, macro (ties 1/2)"
        lines.append(f"| {r['set']} | {r['n']} | {metric} | {r['score']:.3f} | {r['pipeline_score']:.3f} |")
    return "\n".join(lines) + "\n"


def _cmd_zero_shot(args: argparse.Namespace) -> int:
    from babyssm.checkpoint import atomic_write_bytes, atomic_write_json

    scorer, info = load_scorer(args.ckpt, _device(args.device))
    levels = _levels_arg(args, info)
    results = []
    for name in SUITES[args.suite]:
        res = _run_set(scorer, info, args, resolve_set(name, args.data_root), levels)
        print(f"{name:<26} {res['n']:>7} items  {res['metric']:<13} {res['score']:8.3f}  "
              f"(pipeline {res['pipeline_score']:.3f}, {res['seconds']:.0f}s)", flush=True)
        results.append(res)
    summary = [{k: r[k] for k in ("set", "task", "n", "metric", "score", "pipeline_score")} for r in results]
    stem = _stem("zero_shot", levels, info)
    atomic_write_json(_eval_dir(args) / f"{stem}.json", {"suite": args.suite, "levels": levels, "sets": summary})
    title = f"BabyLM zero-shot ({args.suite}): {Path(args.ckpt).name}"
    atomic_write_bytes(_eval_dir(args) / f"{stem}.md", zero_shot_markdown(results, title).encode())
    print(f"written to {_eval_dir(args) / stem}.{{json,md}}")
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _window(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2 characters, got {text}")
    return value


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="bits per character, BLiMP and the BabyLM zero-shot suite",
                              description="Evaluate a run folder; results go to RUN_DIR/eval/.",
                              epilog="e.g. babyssm eval blimp --ckpt work/run --set blimp_filtered")
    sub = p.add_subparsers(dest="eval_command", metavar="TASK", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--ckpt", required=True, metavar="RUN_DIR", help="run folder (babyssm train / baseline)")
    common.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    common.add_argument("--batch-size", type=_positive, default=scoring.DEFAULT_BATCH_SIZE,
                        help=f"sequences per forward (default {scoring.DEFAULT_BATCH_SIZE})")
    common.add_argument("--levels", type=int, choices=(2, 3), help="hierarchical levels (default: the checkpoint's)")
    sets = argparse.ArgumentParser(add_help=False)
    sets.add_argument("--data-root", help="folder holding eval/ (default: $BABYSSM_DATA)")
    sets.add_argument("--limit-per-file", type=_positive, metavar="N", help="score only the first N items of each file")

    b = sub.add_parser("bpc", parents=[common], help="bits per character on a prepared split",
                       description="Bits per character, overall and per source file, for each level of the "
                                   "checkpoint (level 2 alone, then 2+3). Writes RUN_DIR/eval/bpc_<split>.json.")
    b.add_argument("--data", required=True, metavar="PREPARED_DIR", help="folder written by babyssm prepare")
    b.add_argument("--split", default="dev", help="train, dev or test (default: dev)")
    b.add_argument("--max-chars", type=_positive, metavar="N", help="first N characters of each source file")
    b.add_argument("--window", type=_window, default=256,
                   help="window T in characters (default 256, the training length)")
    b.add_argument("--context", choices=("overlap", "carry"), default="overlap",
                   help="overlap: windows with T/2 context (any model); carry: state carried across windows")
    b.add_argument("--streams", type=_positive, default=16, help="parallel streams for --context carry")
    b.set_defaults(func=_cmd_bpc)

    bl = sub.add_parser("blimp", parents=[common, sets], help="BLiMP-style minimal pairs",
                        description="Minimal pairs: right when log p(good) > log p(bad), a tie counts 1/2. "
                                    "Writes RUN_DIR/eval/<set>.json, .md and .png.")
    bl.add_argument("--set", default="blimp_filtered", metavar="NAME_OR_DIR",
                    help="blimp_filtered, blimp, supplement_filtered, or a folder of jsonl files "
                         "with sentence_good and sentence_bad")
    bl.set_defaults(func=_cmd_blimp)

    z = sub.add_parser("zero-shot", parents=[common, sets], help="the BabyLM 2025 zero-shot text suite",
                       description="BLiMP filtered, supplement, EWoK, entity tracking and wug, scored as the "
                                   "BabyLM 2025 pipeline scores them. Writes RUN_DIR/eval/zero_shot.{json,md}.")
    z.add_argument("--suite", choices=sorted(SUITES), default="babylm", help="which suite (default: babylm)")
    z.set_defaults(func=_cmd_zero_shot)
