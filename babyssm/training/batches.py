"""Training batches, word counting and the fixed dev subset with its scoring.

Symbols: B batch (windows per step and rank), T time (characters per window),
c_i the character at position i of a split's .bin.

Batches (``get_batch``): B windows of T characters; a window at position i is fed as
x = [BOS, c_i .. c_{i+T-2}] to predict y = [c_i .. c_{i+T-1}], from a fresh zero
state. No state is carried across windows: random windows decorrelate consecutive
batches. ``TrainConfig.windows`` says where windows start (``babyssm.data.utterances``):
"utterance" (default) at utterance starts, so that BOS means "an utterance starts
here", which is how evaluation reads a sentence (from BOS); the tail of an utterance
longer than T is read after its real preceding character c_{i-1} in place of BOS.
"offset" (the earlier behaviour, for ablations) at uniform offsets, each from BOS.
``dev_windows`` is the fixed dev subset: evenly spaced windows of dev.bin, so every
source is represented (in "utterance" mode each moved back to the utterance start
at or before it); ``evaluate`` scores it: the stage's own
objective (``dev_loss``) and, where the stage trains a language model, bits per
character (``dev_bpc``: stage 0 the model, stage 2 level 2 alone, stage 3 levels 2+3;
stage 1 trains the character encoder, which has no next-character distribution),
under a forked RNG with a fixed seed: the same noise at every evaluation, and
training's random streams are left untouched.

Words (the BabyLM budget unit): ``get_batch(..., with_words=True)`` also counts the
words that start in the batch, exactly: a character that is neither space nor
newline and follows one (the character before a window is read from the corpus,
and the corpus start counts as a newline). Summed over training, that is the
number of word tokens (whitespace-separated, as BabyLM counts its 10M words) whose
first character was trained on; a full pass over train.bin counts exactly its
word total (word milestones: ``babyssm.training.plan``).

>>> x, y = get_batch(np.frombuffer(b"hello world", np.uint8), 1, 4, torch.Generator().manual_seed(0), "cpu")
>>> x.tolist(), y.tolist()
([[0, 111, 32, 119]], [[111, 32, 119, 111]])
>>> count_words(np.frombuffer(b"o wo", np.uint8)[None], np.frombuffer(b"l", np.uint8))  # "o" ends "hello"
1
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from babyssm.data.utterances import sample_window_starts
from babyssm.data.vocab import BOS_ID, NEWLINE_ID, SPACE_ID
from babyssm.models.lm import CharLM


def get_batch(data: np.ndarray, batch_size: int, seq_len: int, generator: torch.Generator,
              device: torch.device, with_words: bool = False, starts: np.ndarray | None = None):
    """x (B, T) = [BOS, window[:-1]], y (B, T) = window, for B random windows of ``data``
    (a long utterance's tail piece reads its real preceding character c_{i-1} for BOS);
    ``starts`` (the utterance starts of ``data``) selects the "utterance" mode, None the
    "offset" mode (``babyssm.data.utterances.sample_window_starts``); ``with_words`` adds
    the number of words starting in the windows (``count_words``)."""
    first, from_bos = sample_window_starts(len(data), seq_len, batch_size, generator, starts)  # (B,), (B,)
    windows = np.stack([data[i:i + seq_len] for i in first])  # (B, T) uint8
    before = np.array([data[i - 1] if i > 0 else NEWLINE_ID for i in first], dtype=np.uint8)  # (B,)
    win = torch.from_numpy(windows.astype(np.int64))  # (B, T)
    lead = torch.from_numpy(np.where(from_bos, BOS_ID, before).astype(np.int64))  # (B,) BOS or c_{i-1}
    x = torch.cat([lead[:, None], win[:, :-1]], dim=1)  # (B, T)
    x, y = x.to(device, non_blocking=True), win.to(device, non_blocking=True)
    if not with_words:
        return x, y
    return x, y, count_words(windows, before)


def count_words(windows: np.ndarray, before: np.ndarray) -> int:
    """Words starting in ``windows`` (B, T): non-whitespace characters after a space or newline
    (``before`` (B,) holds the character preceding each window)."""
    text = np.concatenate([before[:, None], windows], axis=1)  # (B, T+1)
    space = (text == SPACE_ID) | (text == NEWLINE_ID)
    return int((space[:, :-1] & ~space[:, 1:]).sum())


def dev_windows(dev: np.ndarray, eval_chars: int, seq_len: int, starts: np.ndarray | None = None) -> torch.Tensor:
    """The fixed dev subset: evenly spaced windows (N, T) of ``dev``, covering every source;
    with ``starts`` (utterance starts of ``dev``) each begins at the start at or before its place."""
    n = max(1, eval_chars // seq_len)
    first = np.linspace(0, len(dev) - seq_len, n).astype(np.int64)  # (N,)
    if starts is not None:
        first = starts[np.searchsorted(starts, first, side="right") - 1]
    return torch.from_numpy(np.stack([dev[i:i + seq_len] for i in first]).astype(np.int64))  # (N, T)


_LEVELS_FOR_STAGE = {0: None, 2: 2, 3: 3, 4: 3}  # the forward() levels whose bpc a stage improves


@torch.no_grad()
def evaluate(model: CharLM, windows: torch.Tensor, stage: int, batch_size: int, device: torch.device,
             autocast: Any, seed: int = 0) -> dict[str, float]:
    """Mean stage objective and bits per character on ``windows``, with fixed noise."""
    was_training = model.training
    model.eval()
    losses, ces = [], []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # the stage-1 noise is the same at every evaluation
        for w in windows.split(batch_size):
            y = w.to(device)  # (b, T)
            x = torch.cat([torch.full_like(y[:, :1], BOS_ID), y[:, :-1]], dim=1)  # (b, T)
            with autocast():
                losses.append(float(model.stage_loss(stage, x, y)[0]) * len(w))
                if stage in _LEVELS_FOR_STAGE:
                    ces.append(float(model(x, y, levels=_LEVELS_FOR_STAGE[stage])[1]) * len(w))
    model.train(was_training)
    out = {"dev_loss": sum(losses) / len(windows)}
    if ces:
        out["dev_bpc"] = sum(ces) / len(windows) / math.log(2)
    return out
