"""Character n-gram language model with interpolated modified Kneser-Ney smoothing.

The count-based baseline: what a model learns from nothing but which characters
follow which (n - 1) characters. Counting is vectorised numpy over the whole
prepared corpus (24M characters: seconds, not minutes); a slow dict-based
reference (``ReferenceKN``) sits beside it and the tests check they agree.

Symbols: n order, k an order 1..n, V vocabulary (128), h a context (k - 1 symbols),
w a symbol, c(hw) the count of the k-gram hw, N scored positions, M the length of a
BOS-padded symbol stream, G the number of distinct k-grams of an order.

Keys. A k-gram of 7-bit symbol ids packs into one int64, oldest symbol in the
highest bits: key(a b c) = a << 14 | b << 7 | c. So 9 symbols fit (63 bits), the
key of a k-gram's last j symbols is ``key & (2**(7j) - 1)`` and its context is
``key >> 7``; sorted keys keep each context's k-grams contiguous.

BOS. Training text is cut once into windows of at most ``seq_len`` characters (256 =
TrainConfig.seq_len) by ``babyssm.data.utterances.packed_windows`` and every real
character is counted once, with its in-window context. The default "offset" mode
tiles the text every ``seq_len`` characters, each tile after n - 1 BOS, as a neural
model reads [BOS, c_0, c_1, ...] from an arbitrary offset. In the "utterance" mode
(the neural models' default) a window begins at an utterance start and holds the
whole utterances that fit, preceded by n - 1 BOS; a piece of an utterance longer
than ``seq_len`` is preceded by its real n - 1 preceding characters instead (they
are context, not counted), so BOS only ever means "an utterance starts". For this
n-gram that costs BLiMP accuracy (filtered, order 8: 55.44 -> 54.20 on all 23.9M
training characters, 53.55 -> 52.92 on 5M; docs/RESULTS.md), so it is not the default.
n - 1 BOS pads give every n-gram full length (nothing precedes BOS, so the extra BOS
symbols add no information). Scoring pads each sequence with BOS the same way:
log p(c_i | BOS, c_<i) is read from the context (BOS^(n-1) c_<i)[-(n-1):].

Counts (Kneser-Ney's "adjusted counts" a_k, as in KenLM):
    a_n(hw) = c(hw)                              raw counts at the highest order
    a_k(hw) = N1+(. hw) = |{v : a_(k+1)(v hw) > 0}|   k < n: distinct left extensions
    a_k(hw) = c(hw)  if hw starts with BOS       its only left extension is BOS, so
                                                 the type count (1) would say nothing

Discounts (Chen & Goodman 1998, "An empirical study of smoothing techniques for
language modeling", Harvard TR-10-98: modified Kneser-Ney), per order k, from
n_j = the number of k-grams with a_k == j; D(a) is D1, D2 or D3+ for a = 1, 2, >= 3:
    Y = n1 / (n1 + 2 n2)
    modified: D1 = 1 - 2Y n2/n1,  D2 = 2 - 3Y n3/n2,  D3+ = 3 - 4Y n4/n3
    single:   D1 = D2 = D3+ = Y                  (Ney, Essen & Kneser 1994)
When some n_j (j <= 4) is 0 or an estimate falls outside 0 < D_j < j (tiny corpora,
and the unigram order, where all ~97 symbols have large counts), the order uses
KenLM's fallback (0.5, 1, 1.5) instead: 0 < D_j < j keeps every numerator positive
and some mass for the lower order.

Interpolation, for k = 1..n, with p_0(w) = 1/V (so no symbol has probability 0):
    p_k(w | h) = (a_k(hw) - D(a_k(hw))) / a_k(h.)  +  g_k(h) p_(k-1)(w | h')
    g_k(h) = (D1 N1(h.) + D2 N2(h.) + D3+ N3+(h.)) / a_k(h.)
    p_k(w | h) = p_(k-1)(w | h')   when a_k(h.) = 0 (context never seen)
(the first term is 0 for an unseen hw) where a_k(h.) = sum_w a_k(hw), N_j(h.) = |{w : a_k(hw) = j}| (3+: >= 3) and h' is h
without its oldest symbol. Summing over w gives (a_k(h.) - sum D + sum D) / a_k(h.)
= 1, so every distribution over the V symbols sums to 1 (tested).

Example (a 3-gram on two short windows; probabilities are exact and sum to 1):

>>> lm = NGramLM.fit(np.frombuffer(b"abab\\nabba\\n", np.uint8), NGramConfig(order=3, seq_len=5))
>>> p = lm.distribution([ord("a")])
>>> round(float(p.sum()), 12), int(p.argmax()) == ord("b")
(1.0, True)
>>> [round(float(x), 3) for x in lm.token_logprobs([[ord("a"), ord("b")]])[0]]
[-0.232, -0.343]
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from babyssm.io import atomic_write, atomic_write_json
from babyssm.errors import BabySSMError
from babyssm.data.utterances import check_mode, packed_windows, utterance_starts
from babyssm.data.vocab import BOS_ID, VOCAB_SIZE

BITS = 7  # bits per symbol id in a key
MAX_ORDER = 63 // BITS  # 9 symbols fill a non-negative int64
# Discounts when a tiny corpus gives no usable estimate (KenLM's --discount_fallback).
FALLBACK_DISCOUNTS = np.array([0.5, 1.0, 1.5])


@dataclass
class NGramConfig:
    order: int = 5  # n: predict from the previous n - 1 characters (1..9)
    seq_len: int = 256  # counting windows of at most this many chars (= TrainConfig.seq_len)
    windows: str = "offset"  # a window every seq_len chars; "utterance": from utterance starts (worse BLiMP here)
    discount: str = "modified"  # "modified" (D1, D2, D3+ per order) or "single" (one D per order)
    vocab_size: int = VOCAB_SIZE  # fixed 7-bit vocabulary; keys assume it
    RENAMED: ClassVar[dict[str, str]] = {"window": "seq_len"}  # old field -> new, in configs saved before

    def __post_init__(self):
        if not 1 <= self.order <= MAX_ORDER:
            raise ValueError(f"order must be 1..{MAX_ORDER} (7-bit ids packed in an int64), got {self.order}")
        if self.seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {self.seq_len}")
        if self.discount not in ("modified", "single"):
            raise ValueError(f"discount must be 'modified' or 'single', got {self.discount!r}")
        check_mode(self.windows, "NGramConfig.windows")
        if self.vocab_size != VOCAB_SIZE:
            raise ValueError(f"vocab_size must be {VOCAB_SIZE} (7-bit symbol keys), got {self.vocab_size}")


def discounts(count_of_counts: tuple[int, int, int, int], kind: str = "modified") -> np.ndarray:
    """[D1, D2, D3+] from (n1, n2, n3, n4) by Chen & Goodman's estimates (see module doc).

    >>> discounts((100, 40, 20, 10)).round(4).tolist()
    [0.5556, 1.1667, 1.8889]
    >>> discounts((100, 40, 20, 10), "single").round(4).tolist()
    [0.5556, 0.5556, 0.5556]
    >>> discounts((3, 1, 0, 0)).tolist()  # too little data to estimate: the fallback
    [0.5, 1.0, 1.5]
    """
    n1, n2, n3, n4 = (float(x) for x in count_of_counts)
    if n1 == 0 or n2 == 0 or (kind == "modified" and (n3 == 0 or n4 == 0)):
        return FALLBACK_DISCOUNTS.copy() if kind == "modified" else np.full(3, FALLBACK_DISCOUNTS[0])
    y = n1 / (n1 + 2 * n2)
    if kind == "single":
        return np.full(3, y)
    d = np.array([1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3])
    return d if ((d > 0) & (d < [1, 2, 3])).all() else FALLBACK_DISCOUNTS.copy()


def pad_windows(data: np.ndarray, window: int, pad: int, windows: str = "offset") -> tuple[np.ndarray, np.ndarray]:
    """Cut ``data`` (N,) into windows (``packed_windows``), each preceded by ``pad`` context
    symbols: BOS for a window from BOS, else the real ``pad`` symbols before it.

    Returns (padded (M,) uint8, real (M,) bool: True where a counted corpus symbol sits).

    >>> s, real = pad_windows(np.array([5, 6, 7], np.uint8), 2, 1)
    >>> s.tolist(), real.tolist()
    ([0, 5, 6, 0, 7], [False, True, True, False, True])
    >>> pad_windows(np.frombuffer(b"a b. c", np.uint8), 4, 1, "utterance")[0].tolist()  # windows "a b.", " c"
    [0, 97, 32, 98, 46, 46, 32, 99]
    """
    data = np.asarray(data, np.uint8)
    begin, end, bos = packed_windows(len(data), window, utterance_starts(data) if windows == "utterance" else None)
    lengths = end - begin + pad  # (W,) padded window lengths
    first = np.concatenate(([0], np.cumsum(lengths)[:-1]))  # (W,) where each padded window starts
    src = np.repeat(begin - pad - first, lengths)  # (M,) data index of each padded slot
    src += np.arange(len(src), dtype=np.int64)
    np.maximum(src, 0, out=src)  # only the first window's context reaches before the data; it is BOS below
    padded = data[src]
    del src
    real = np.ones(len(padded), bool)
    pads = (first[:, None] + np.arange(pad)).reshape(-1)  # (W * pad,) the context slots
    real[pads] = False
    padded[(first[bos, None] + np.arange(pad)).reshape(-1)] = BOS_ID  # the first window is always from BOS
    return padded, real


def ngram_keys(padded: np.ndarray, order: int) -> np.ndarray:
    """Key of the ``order``-gram ending at each position p >= order - 1 of ``padded``: (M - order + 1,) int64."""
    m = len(padded) - order + 1
    keys = np.zeros(max(m, 0), np.int64)
    for j in range(order):
        keys <<= BITS
        keys |= padded[j : j + m]
    return keys


def _run_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Indices where a run of equal values starts in a non-empty sorted array."""
    return np.flatnonzero(np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1])))


def _unique_sum(keys: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique keys and, per key, its number of occurrences (or summed ``weights``)."""
    if weights is None:
        keys = np.sort(keys)
    else:
        perm = np.argsort(keys)
        keys, weights = keys[perm], weights[perm]
    starts = _run_starts(keys)
    if weights is None:
        sums = np.diff(np.append(starts, len(keys)))
    else:
        sums = np.add.reduceat(weights, starts)
    return keys[starts], sums.astype(np.int64)


def count_ngrams(data: np.ndarray, order: int, window: int,
                 windows: str = "offset") -> list[tuple[np.ndarray, np.ndarray]]:
    """Adjusted Kneser-Ney counts for orders 1..``order``: [(sorted keys, counts)] (index k - 1).

    ``data`` holds symbol ids 1..127 (a prepared split: cleaned text has no BOS).
    """
    padded, real = pad_windows(np.asarray(data, np.uint8), window, order - 1, windows)
    keys = ngram_keys(padded, order)[real[order - 1 :]]
    tables = [_unique_sum(keys)]
    del keys
    for k in range(order - 1, 0, -1):
        upper_keys, upper_counts = tables[0]
        lower = upper_keys & ((1 << (BITS * k)) - 1)
        starts_with_bos = (lower >> (BITS * (k - 1))) == BOS_ID
        # KN continuation count: one per distinct left extension, except BOS-initial k-grams keep raw counts.
        weights = np.where(starts_with_bos, upper_counts, 1)
        tables.insert(0, _unique_sum(lower, weights))
    return tables


class NGramLM:
    """An interpolated Kneser-Ney character n-gram; scores with ``token_logprobs`` (not an nn.Module)."""

    model_type = "ngram"

    def __init__(self, config: NGramConfig, tables: list[tuple[np.ndarray, np.ndarray]]):
        if len(tables) != config.order or any(len(keys) == 0 for keys, _ in tables):
            raise ValueError(f"expected {config.order} non-empty count tables")
        self.config = config
        self.tables = tables
        self.discounts = []
        # Per order: (k-gram keys, alpha = discounted count / a_k(h.), context keys, gamma).
        self._orders: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        for keys, counts in tables:
            coc = tuple(int(np.count_nonzero(counts == j)) for j in (1, 2, 3, 4))
            d = discounts(coc, config.discount)
            self.discounts.append(d)
            d_of = d[np.minimum(counts, 3) - 1]  # (G,) discount of each k-gram's count
            ctx = keys >> BITS  # (G,) sorted too: a context's k-grams are one run
            starts = _run_starts(ctx)
            total = np.add.reduceat(counts, starts)  # a_k(h.) per context
            gamma = np.add.reduceat(d_of, starts) / total
            group = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(keys))))  # (G,) context index
            alpha = (counts - d_of) / total[group]
            self._orders.append((keys, alpha, ctx[starts], gamma))

    @classmethod
    def fit(cls, data: np.ndarray, config: NGramConfig | None = None) -> NGramLM:
        """Count a corpus of symbol ids (e.g. a prepared train.bin memmap)."""
        config = config or NGramConfig()
        data = np.asarray(data, np.uint8)
        hist = np.bincount(data, minlength=256)
        if len(data) == 0:
            raise BabySSMError("cannot fit an n-gram on an empty corpus")
        if hist[BOS_ID] or hist[VOCAB_SIZE:].any():
            bad = BOS_ID if hist[BOS_ID] else VOCAB_SIZE + int(np.flatnonzero(hist[VOCAB_SIZE:])[0])
            raise BabySSMError(
                f"corpus holds symbol id {bad}, which is not text (BOS or >= {VOCAB_SIZE}); "
                "pass a split written by `babyssm prepare`"
            )
        return cls(config, count_ngrams(data, config.order, config.seq_len, config.windows))

    @property
    def num_ngrams(self) -> int:
        """Stored k-grams over all orders: the model's size."""
        return sum(len(keys) for keys, _ in self.tables)

    def _probs(self, keys: np.ndarray) -> np.ndarray:
        """p(w | h) for full-order keys (context h, symbol w): (N,) float64, the recursion in the module doc."""
        p = np.full(len(keys), 1.0 / VOCAB_SIZE)
        for k, (gram_keys, alpha, ctx_keys, gamma) in enumerate(self._orders, start=1):
            q = keys & ((1 << (BITS * k)) - 1)
            ci = np.minimum(np.searchsorted(ctx_keys, q >> BITS), len(ctx_keys) - 1)
            gi = np.minimum(np.searchsorted(gram_keys, q), len(gram_keys) - 1)
            seen_ctx = ctx_keys[ci] == (q >> BITS)
            own = np.where(gram_keys[gi] == q, alpha[gi], 0.0)
            p = np.where(seen_ctx, own + gamma[ci] * p, p)
        return p

    def distribution(self, context: list[int]) -> np.ndarray:
        """p(. | BOS, context): (V,) probabilities of the next symbol."""
        n = self.config.order
        hist = ([BOS_ID] * (n - 1) + list(context))[len(context) :] if n > 1 else []
        key = 0
        for s in hist:
            key = (key << BITS) | int(s)
        return self._probs((np.int64(key) << BITS) | np.arange(VOCAB_SIZE, dtype=np.int64))

    def token_logprobs(self, seqs: list[list[int]]) -> list[np.ndarray]:
        """log p(c_i | BOS, c_<i) in nats for every symbol of each sequence (float64)."""
        if not seqs:
            return []
        n = self.config.order
        lengths = np.fromiter((len(s) for s in seqs), np.int64, len(seqs))
        flat = np.fromiter((c for s in seqs for c in s), np.int64, int(lengths.sum()))
        if len(flat) and (flat.min() < 0 or flat.max() >= VOCAB_SIZE):
            raise ValueError(f"symbol ids must be in 0..{VOCAB_SIZE - 1}")
        seq_of = np.repeat(np.arange(len(seqs)), lengths)  # (N,) sequence index of each symbol
        pos = np.arange(len(flat)) + (seq_of + 1) * (n - 1)  # (N,) its place in the padded stream
        padded = np.zeros(len(flat) + len(seqs) * (n - 1), np.uint8)
        padded[pos] = flat
        keys = ngram_keys(padded, n)[pos - (n - 1)]
        return np.split(np.log(self._probs(keys)), np.cumsum(lengths)[:-1])

    def stream_logprobs(self, data: np.ndarray) -> np.ndarray:
        """log p of each symbol of a corpus cut into windows as in training: (len(data),) nats."""
        n = self.config.order
        padded, real = pad_windows(np.asarray(data, np.uint8), self.config.seq_len, n - 1, self.config.windows)
        keys = ngram_keys(padded, n)[real[n - 1 :]]
        return np.log(self._probs(keys))

    def save(self, run_dir: str | os.PathLike, record: dict[str, Any] | None = None) -> None:
        """Write RUN_DIR/counts.npz, then RUN_DIR/config.json (identity, sizes and ``record``), atomically."""
        arrays = {}
        for k, (keys, counts) in enumerate(self.tables, start=1):
            arrays[f"keys_{k}"], arrays[f"counts_{k}"] = keys, counts
        atomic_write(Path(run_dir) / "counts.npz", lambda tmp: _savez(tmp, arrays))
        atomic_write_json(Path(run_dir) / "config.json", {
            "model_type": self.model_type,
            "config": asdict(self.config),
            "num_ngrams": self.num_ngrams,
            "discounts": [d.round(6).tolist() for d in self.discounts],
            **(record or {}),
        })


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to the temporary's name
        np.savez(f, **arrays)


def load_ngram(run_dir: str | os.PathLike) -> NGramLM:
    """Load a model written by ``NGramLM.save`` (``babyssm baseline ngram``)."""
    run_dir = Path(run_dir)
    cfg_path, counts_path = run_dir / "config.json", run_dir / "counts.npz"
    for path in (cfg_path, counts_path):
        if not path.is_file():
            raise BabySSMError(f"{path} is missing: is {run_dir} an n-gram run (`babyssm baseline ngram`)?")
    try:
        meta = json.loads(cfg_path.read_text())
        saved = {NGramConfig.RENAMED.get(k, k): v for k, v in meta["config"].items()}
        config = NGramConfig(**{"windows": "offset", **saved})  # runs counted before windows existed: offset
    except (ValueError, KeyError, TypeError) as e:
        raise BabySSMError(f"{cfg_path}: not a valid n-gram config ({e})") from e
    if meta.get("model_type") != NGramLM.model_type:
        raise BabySSMError(f"{cfg_path}: model_type is {meta.get('model_type')!r}, not 'ngram'")
    try:
        with np.load(counts_path) as z:
            tables = [(z[f"keys_{k}"], z[f"counts_{k}"]) for k in range(1, config.order + 1)]
    except (OSError, KeyError, ValueError) as e:
        raise BabySSMError(f"{counts_path}: unreadable or incomplete count tables ({e}); rerun the baseline") from e
    return NGramLM(config, tables)


class ReferenceKN:
    """Slow dict-based interpolated Kneser-Ney with the same equations, for tests on small corpora."""

    def __init__(self, data: bytes | list[int], config: NGramConfig):
        self.order = n = config.order
        self.kind = config.discount
        data = list(data)
        counts: list[Counter] = [Counter() for _ in range(n + 1)]  # counts[k][k-gram tuple]
        starts = utterance_starts(np.array(data, np.uint8)) if config.windows == "utterance" else None
        for begin, end, bos in zip(*packed_windows(len(data), config.seq_len, starts)):
            before = data[max(0, begin - (n - 1)):begin]
            seq = ([BOS_ID] * (n - 1) if bos else [BOS_ID] * (n - 1 - len(before)) + before) + data[begin:end]
            for i in range(n - 1, len(seq)):
                counts[n][tuple(seq[i - n + 1 : i + 1])] += 1
        for k in range(n - 1, 0, -1):
            for gram, c in counts[k + 1].items():
                lower = gram[1:]
                counts[k][lower] += c if lower[0] == BOS_ID else 1
        self.counts = counts
        self.d: list[np.ndarray | None] = [None]
        self.ctx: list[dict] = [{}]  # ctx[k][h] = (a_k(h.), sum of discounts over w)
        for k in range(1, n + 1):
            coc = tuple(sum(1 for c in counts[k].values() if c == j) for j in (1, 2, 3, 4))
            d = discounts(coc, self.kind)
            stats: dict = defaultdict(lambda: [0, 0.0])
            for gram, c in counts[k].items():
                stats[gram[:-1]][0] += c
                stats[gram[:-1]][1] += d[min(c, 3) - 1]
            self.d.append(d)
            self.ctx.append(dict(stats))

    def prob(self, context: tuple[int, ...], w: int, k: int | None = None) -> float:
        """p_k(w | last k - 1 symbols of ``context``); ``context`` is padded with BOS."""
        k = self.order if k is None else k
        if k == 0:
            return 1.0 / VOCAB_SIZE
        h = tuple(([BOS_ID] * k + list(context))[len(context) + 1 :]) if k > 1 else ()
        lower = self.prob(context, w, k - 1)
        if h not in self.ctx[k]:
            return lower
        total, dsum = self.ctx[k][h]
        c = self.counts[k].get(h + (w,), 0)
        own = (c - self.d[k][min(c, 3) - 1]) / total if c else 0.0
        return own + dsum / total * lower
