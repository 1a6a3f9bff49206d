"""Utterance starts: where training windows begin, so that BOS means "an utterance starts here".

Every zero-shot test scores a sentence from BOS (``babyssm.scoring``, and the BabyLM
pipeline through the exported tokenizer), so training shows BOS where an utterance
starts, not at an arbitrary offset in the middle of a line.

Symbols: N characters of a split, U utterance starts, T window length (characters),
c_i the character at position i.

The rule (``utterance_starts``): position i starts an utterance when c_i is neither
space nor newline and
- i = 0 or i is the first character of a source file (meta.json's ``offset``), or
- c_(i-1) is a newline (one utterance per line: CHILDES, Switchboard, CBT), or
- c_(i-1) is a space that follows sentence-final punctuation ``.``, ``!`` or ``?``,
  possibly closed by one of ``"')]`` (sentence starts inside a line: the five
  2024sample_* files have no newline at all, children_stories' lines are paragraphs).
The second-level rule is applied to every file, so a multi-sentence line yields
several starts. Abbreviations (``Mr. K.``) give a few spurious starts; an utterance
cut there is still a run of words that begins after a space.
Measured on the shared training text (23.9M characters): 509,787 starts, mean
utterance 47 characters; 2.4 % of the characters lie 256 or more characters past
their utterance's start (BNC spoken 9 %, the most); with line starts alone the five
one-line files would have a single start each (16.3M characters). The n-gram's cut
(T = 256) has 112,184 windows, 94.3 % of them from an utterance start.

Window modes (``WINDOW_MODES``, ``TrainConfig.windows``, ``NGramConfig.windows``):
- ``"utterance"`` (the default of every neural model): a window begins at an
  utterance start and is read from BOS. Neural models (``sample_window_starts``) draw a position p uniformly as before
  and start at the last utterance start s <= p, so an utterance is drawn in
  proportion to its length (up to T) and the character mix is that of the corpus.
  Where p lies T or more characters past s (a long utterance's tail), the window is
  the T-character piece of that utterance holding p, read after its real preceding
  character instead of BOS: every character can still be trained on, and BOS never
  appears mid-utterance. The n-gram (``packed_windows``) cuts the corpus once into
  windows of at most T characters, each beginning at an utterance start and holding
  the whole utterances that fit (the same tails rule: a piece of a long utterance is
  counted after its real preceding characters).
- ``"offset"``: the earlier behaviour: windows at arbitrary offsets (uniform for
  neural models, a fixed tiling for the n-gram), each read from BOS. The n-gram keeps
  it as its default: utterance windows cost it BLiMP accuracy (docs/RESULTS.md).

>>> text = np.frombuffer(b"Hi. Yes!\\nno\\n", np.uint8)
>>> utterance_starts(text).tolist()
[0, 4, 9]
>>> [a.tolist() for a in packed_windows(len(text), 6, utterance_starts(text))]  # begin, end, bos
[[0, 4, 9], [4, 9, 12], [True, True, True]]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from babyssm.data.prepared import load_meta
from babyssm.data.vocab import NEWLINE_ID, SPACE_ID
from babyssm.errors import BabySSMError

WINDOW_MODES = ("utterance", "offset")  # see the module docstring
_FINAL = np.frombuffer(b".!?", np.uint8)  # sentence-final punctuation
_CLOSE = np.frombuffer(b"\"')]", np.uint8)  # may close a sentence after its final mark


def check_mode(windows: str, where: str) -> None:
    if windows not in WINDOW_MODES:
        raise BabySSMError(f"{where} must be one of {', '.join(WINDOW_MODES)}, got {windows!r}")


def utterance_starts(data: np.ndarray, file_offsets: Sequence[int] = ()) -> np.ndarray:
    """Sorted positions (U,) int64 of ``data`` (N,) that start an utterance (the module's rule).

    Position 0 is always one, so every position has a start at or before it.
    """
    data = np.asarray(data, np.uint8)
    n = len(data)
    if n == 0:
        return np.zeros(1, np.int64)
    final = np.isin(data, _FINAL)
    final[1:] |= np.isin(data[1:], _CLOSE) & final[:-1]  # (N,) "Yes!" and "Yes!)" both end a sentence
    start = np.zeros(n, bool)  # (N,)
    start[1:] = data[:-1] == NEWLINE_ID
    start[2:] |= (data[1:-1] == SPACE_ID) & final[:-2]
    start &= (data != SPACE_ID) & (data != NEWLINE_ID)
    start[[o for o in file_offsets if 0 <= o < n]] = True
    start[0] = True
    return np.flatnonzero(start).astype(np.int64)


def sample_window_starts(n: int, seq_len: int, batch_size: int, generator: torch.Generator,
                         starts: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Window starts (B,) int64 in a split of ``n`` chars, and (B,) bool: read from BOS.

    ``starts`` None is the "offset" mode (uniform starts, all from BOS); else the
    utterance starts of the split and the "utterance" mode. Both draw the same
    uniform positions from ``generator``, so the two modes see the same random stream.
    """
    pos = torch.randint(n - seq_len + 1, (batch_size,), generator=generator).numpy().astype(np.int64)  # (B,)
    if starts is None:
        return pos, np.ones(batch_size, bool)
    s = starts[np.searchsorted(starts, pos, side="right") - 1]  # (B,) the utterance holding each position
    piece = (pos - s) // seq_len  # (B,) 0: the utterance's first T chars; k: its k-th T-char piece
    return s + piece * seq_len, piece == 0


def packed_windows(n: int, window: int, starts: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The n-gram's cut of ``n`` chars: (begin, end, bos) per window, each (W,).

    ``starts`` None: the "offset" tiling (every ``window`` chars, all from BOS). Else
    each window begins at an utterance start (bos True) and ends at the last start
    that keeps it within ``window`` chars; an utterance longer than that continues in
    ``window``-char pieces (bos False: counted after their real preceding chars).
    """
    if starts is None:
        begin = np.arange(0, n, window, dtype=np.int64)
        return begin, np.minimum(begin + window, n), np.ones(len(begin), bool)
    begins, bos = [], []
    i, at_start = 0, True
    while i < n:
        begins.append(i)
        bos.append(at_start)
        if i + window >= n:
            break
        j = int(starts[np.searchsorted(starts, i + window, side="right") - 1])  # last start <= i + window
        at_start = j > i
        i = j if at_start else i + window
    begin = np.array(begins, np.int64)
    return begin, np.append(begin[1:], n), np.array(bos, bool)


def split_starts(prepared_dir, split: str, data: np.ndarray) -> np.ndarray:
    """``utterance_starts`` of a prepared split, with its source files' offsets from meta.json."""
    sources = load_meta(prepared_dir).get("sources", [])
    return utterance_starts(data, [s["offset"] for s in sources if s.get("split") == split])
