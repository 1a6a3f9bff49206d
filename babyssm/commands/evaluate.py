"""``babyssm eval``: bits per character, BLiMP and the zero-shot suite of a run folder.

Results go to RUN_DIR/eval/ (see ``babyssm.evaluation.bpc`` for what each task measures).
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import time
from pathlib import Path
from typing import Any

import torch

from babyssm.commands.args import add_renamed, count_at_least, positive_count
from babyssm.errors import BabySSMError, check_device
from babyssm.evaluation import scoring
from babyssm.evaluation.bpc import evaluate_bpc, levels_to_evaluate, load_scorer, write_result, zero_shot_markdown
from babyssm.evaluation.zeroshot import SUITES, TASK_OF_SET, evaluate_set, resolve_set
from babyssm.io import atomic_write_bytes, atomic_write_json


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this evaluation (kept in its JSON for the report)."""
    parts = ["babyssm", "eval", args.eval_command]
    for key, value in vars(args).items():
        if key not in ("func", "command", "eval_command", "invocation") and value is not None:
            parts += [f"--{key.replace('_', '-')}", str(value)]
    return shlex.join(parts)


def _precision(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """The context every forward of this evaluation runs in: bfloat16 autocast where asked."""
    if args.precision == "float32":
        return contextlib.nullcontext()
    from babyssm.training.loop import warn_if_emulated_bfloat16

    device_type = torch.device(args.device).type
    warn_if_emulated_bfloat16(device_type)
    return torch.autocast(device_type, dtype=torch.bfloat16)


def _eval_dir(args: argparse.Namespace) -> Path:
    return Path(args.run) / "eval"


def _levels_arg(args: argparse.Namespace, info: dict[str, Any]) -> int | None:
    if args.levels is not None and info.get("default_levels") is None:
        raise BabySSMError(f"--levels: {args.run} is a baseline without levels; drop the flag")
    return args.levels if args.levels is not None else info.get("default_levels")


def _stem(set_name: str, levels: int | None, info: dict[str, Any]) -> str:
    return set_name if levels == info.get("default_levels") else f"{set_name}_levels{levels}"


def _cmd_bpc(args: argparse.Namespace) -> int:
    scorer, info = load_scorer(args.run, check_device(args.device))
    levels = [_levels_arg(args, info)] if args.levels is not None else levels_to_evaluate(info)
    with _precision(args):
        res = evaluate_bpc(scorer, args.data, args.split, levels, args.chars_per_file, args.seq_len, args.context,
                           args.batch_size, args.streams)
    res["command"] = _command(args)
    stem = _stem(f"bpc_{args.split}", levels[-1], info)
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
    title = f"{set_dir.name}: {Path(args.run).name}" + (f" (levels {levels})" if levels else "")
    write_result(res, _eval_dir(args), _stem(set_dir.name, levels, info), title)
    return res


def _cmd_blimp(args: argparse.Namespace) -> int:
    set_dir = resolve_set(args.pairs, args.data_root)
    if _task(set_dir) != "blimp":
        raise BabySSMError(f"--pairs {args.pairs} is a {_task(set_dir)} set, not minimal pairs; "
                           "use `babyssm eval zero-shot`")
    scorer, info = load_scorer(args.run, check_device(args.device))
    levels = _levels_arg(args, info)
    with _precision(args):
        res = _run_set(scorer, info, args, set_dir, levels)
    print(f"{res['set']}: {res['n']} pairs in {res['seconds']:.0f}s; accuracy micro {res['micro']:.2f}, "
          f"macro {res['macro']:.2f}; pipelines' figure (ties right) {res['macro_ties_right']:.2f}; "
          f"ties {res['ties']}")
    for p in res["phenomena"]:
        print(f"  {p['linguistics_term']:<36} {p['n']:>6} pairs  {p['micro']:6.2f}")
    print(f"written to {_eval_dir(args) / _stem(res['set'], levels, info)}.{{json,md,png}}")
    return 0


def _cmd_zero_shot(args: argparse.Namespace) -> int:
    scorer, info = load_scorer(args.run, check_device(args.device))
    levels = _levels_arg(args, info)
    results = []
    with _precision(args):
        for name in SUITES[args.suite]:
            res = _run_set(scorer, info, args, resolve_set(name, args.data_root), levels)
            print(f"{name:<26} {res['n']:>7} items  {res['metric']:<13} {res['score']:8.3f}  "
                  f"(pipeline {res['pipeline_score']:.3f}, {res['seconds']:.0f}s)", flush=True)
            results.append(res)
    summary = [{k: r[k] for k in ("set", "task", "n", "metric", "score", "pipeline_score")} for r in results]
    stem = _stem("zero_shot", levels, info)
    atomic_write_json(_eval_dir(args) / f"{stem}.json", {"suite": args.suite, "levels": levels, "sets": summary})
    title = f"BabyLM zero-shot ({args.suite}): {Path(args.run).name}"
    atomic_write_bytes(_eval_dir(args) / f"{stem}.md", zero_shot_markdown(results, title).encode())
    print(f"written to {_eval_dir(args) / stem}.{{json,md}}")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="bits per character, BLiMP and the BabyLM zero-shot suite",
                              description="Evaluate a run folder; results go to RUN_DIR/eval/.",
                              epilog="e.g. babyssm eval blimp --run work/run --pairs blimp_filtered")
    sub = p.add_subparsers(dest="eval_command", metavar="TASK", required=True)
    common = argparse.ArgumentParser(add_help=False)
    add_renamed(common, "--run", "--ckpt", required=True, metavar="RUN_DIR",
                help="run folder (babyssm train / baseline)")
    common.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    common.add_argument("--batch-size", type=positive_count, default=scoring.DEFAULT_BATCH_SIZE,
                        help=f"sequences per forward (default {scoring.DEFAULT_BATCH_SIZE})")
    common.add_argument("--levels", type=int, choices=(2, 3), help="hierarchical levels (default: the checkpoint's)")
    common.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                        help="dtype of the matrix products: float32 (default, as the BabyLM pipeline scores) or "
                             "bfloat16 autocast, faster on CPUs with AMX; scores move slightly "
                             "(benchmarks/eval_speed.py, docs/RESULTS.md)")
    sets = argparse.ArgumentParser(add_help=False)
    sets.add_argument("--data-root", help="folder holding eval/ (default: $BABYSSM_DATA)")
    sets.add_argument("--limit-per-file", type=positive_count, metavar="N",
                      help="score only the first N items of each file")

    b = sub.add_parser("bpc", parents=[common], help="bits per character on a prepared split",
                       description="Bits per character, overall and per source file, for each level of the "
                                   "checkpoint (level 2 alone, then 2+3). Writes RUN_DIR/eval/bpc_<split>.json.")
    b.add_argument("--data", required=True, metavar="PREPARED_DIR", help="folder written by babyssm prepare")
    b.add_argument("--split", default="dev", help="train, dev or test (default: dev)")
    add_renamed(b, "--chars-per-file", "--max-chars", type=positive_count, metavar="N",
                help="score the first N characters of each source file")
    add_renamed(b, "--seq-len", "--window", type=count_at_least(2), default=256, metavar="T",
                help="characters per window (default 256, the training length)")
    b.add_argument("--context", choices=("overlap", "carry"), default="overlap",
                   help="overlap: windows with T/2 context (any model); carry: state carried across windows")
    b.add_argument("--streams", type=positive_count, default=16, help="parallel streams for --context carry")
    b.set_defaults(func=_cmd_bpc)

    bl = sub.add_parser("blimp", parents=[common, sets], help="BLiMP-style minimal pairs",
                        description="Minimal pairs: right when log p(good) > log p(bad), a tie counts 1/2. "
                                    "Writes RUN_DIR/eval/<set>.json, .md and .png.")
    add_renamed(bl, "--pairs", "--set", default="blimp_filtered", metavar="NAME_OR_DIR",
                help="the minimal pairs: blimp_filtered (default), blimp, supplement_filtered, or a folder of "
                "jsonl files with sentence_good and sentence_bad")
    bl.set_defaults(func=_cmd_blimp)

    z = sub.add_parser("zero-shot", parents=[common, sets], help="the BabyLM 2025 zero-shot text suite",
                       description="BLiMP filtered, supplement, EWoK, entity tracking and wug, scored as the "
                                   "BabyLM 2025 pipeline scores them. Writes RUN_DIR/eval/zero_shot.{json,md}.")
    z.add_argument("--suite", choices=sorted(SUITES), default="babylm", help="which suite (default: babylm)")
    z.set_defaults(func=_cmd_zero_shot)
