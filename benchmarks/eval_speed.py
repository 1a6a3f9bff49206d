"""How fast BLiMP scores: pairs per second of each scoring path, against a naive loop.

Scores pairs of the filtered BLiMP (the real data: $BABYSSM_DATA/eval/blimp_filtered)
with a randomly initialised model of a preset (speed does not depend on training):

- naive: one ``forward`` per sentence, batch size 1 (the reference, on a small slice);
- batched: ``scoring.token_logprobs``: sentences sorted by length, padded batches;
- shared prefix: ``scoring.group_token_logprobs``: each pair's common prefix is read
  once and both continuations go on from the carried state (``forward_from``).

All three must give the same log-probabilities (the max difference is printed), and
the projected time for the whole set (59,875 pairs) is printed per path. With
``--precision bfloat16`` the batched and shared-prefix paths run under bfloat16
autocast (``babyssm eval --precision bfloat16``) while the naive reference stays
float32, so the printed difference is what bfloat16 costs in log-probability. The shared-
prefix path batches pairs of similar length and prefix, so small slices understate
it: on all of BLiMP it reads 16% fewer positions than the batched path, on 30 pairs
per file none fewer.

    nice -n 10 python benchmarks/eval_speed.py --threads 1     # seed preset, 200 pairs per file
    python benchmarks/eval_speed.py --pairs-per-file 0         # the whole set (minutes)
    python benchmarks/eval_speed.py --preset tiny
    python benchmarks/eval_speed.py --preset hlru --pairs-per-file 0 --naive-pairs 20   # the issue-14 target
    python benchmarks/eval_speed.py --preset hlru --pairs-per-file 0 --naive-pairs 20 --precision bfloat16
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import time

import numpy as np
import torch

from babyssm.evaluation import scoring
from babyssm.models.lm import build_model
from babyssm.models.presets import model_preset
from babyssm.evaluation.zeroshot import load_items, resolve_set

FULL_SET = 59_875  # pairs in the filtered BLiMP


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="seed")
    p.add_argument("--pairs-per-file", type=int, default=200, help="0: the whole set")
    p.add_argument("--naive-pairs", type=int, default=100, help="pairs for the naive reference loop")
    p.add_argument("--batch-size", type=int, default=scoring.DEFAULT_BATCH_SIZE)
    p.add_argument("--levels", type=int, default=None, choices=(2, 3),
                   help="the hierarchical presets' levels (default: all); not for hlru presets")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                   help="dtype of the batched and shared-prefix paths (the naive reference stays float32)")
    p.add_argument("--data-root", default=os.environ.get("BABYSSM_DATA", "../shared/data"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model_type, config = model_preset(args.preset)
    model = build_model(model_type, dataclasses.asdict(config)).eval()
    items = load_items(resolve_set("blimp_filtered", args.data_root), "blimp", args.pairs_per_file or None)
    pairs = [it.candidates for it in items]
    chars = sum(len(s) for g in pairs for s in g)
    print(f"preset {args.preset} ({model.num_parameters():,} parameters), levels {args.levels}, "
          f"{args.threads} threads, batch {args.batch_size}, {args.precision}; {len(pairs):,} pairs, {chars:,} chars")

    naive_pairs = pairs[: args.naive_pairs]

    def naive():
        out = []
        with torch.inference_mode():
            for g in naive_pairs:
                for s in g:
                    idx = torch.tensor([[0, *s[:-1]]])
                    logits, _ = model(idx, levels=args.levels)
                    lp = torch.log_softmax(logits[0].double(), -1)[torch.arange(len(s)), torch.tensor(s)]
                    out.append(lp.numpy())
        return out

    ref, t_naive = timed(naive)
    flat = [s for g in pairs for s in g]
    fast = (torch.autocast("cpu", dtype=torch.bfloat16) if args.precision == "bfloat16"
            else contextlib.nullcontext())
    with fast:
        batched, t_batched = timed(lambda: scoring.token_logprobs(model, flat, args.batch_size, args.levels))
        shared, t_shared = timed(lambda: scoring.group_token_logprobs(model, pairs, args.batch_size, args.levels))
    shared_flat = [x for g in shared for x in g]
    n_ref = len(ref)
    diff_b = max(float(np.abs(a - b).max()) for a, b in zip(ref, batched[:n_ref]))
    diff_s = max(float(np.abs(a - b).max()) for a, b in zip(batched, shared_flat))
    print(f"{'path':<14} {'pairs':>7} {'seconds':>8} {'pairs/s':>9} {'full set (min)':>15}")
    for name, n, t in (("naive", len(naive_pairs), t_naive), ("batched", len(pairs), t_batched),
                       ("shared prefix", len(pairs), t_shared)):
        print(f"{name:<14} {n:>7,} {t:>8.2f} {n / t:>9.1f} {FULL_SET / (n / t) / 60:>15.1f}")
    print(f"speed-up over naive: batched {t_naive / len(naive_pairs) / (t_batched / len(pairs)):.1f}x, "
          f"shared prefix {t_naive / len(naive_pairs) / (t_shared / len(pairs)):.1f}x")
    print(f"max |difference| in log-prob per char: naive vs batched {diff_b:.2e}, batched vs shared {diff_s:.2e}")


if __name__ == "__main__":
    main()
