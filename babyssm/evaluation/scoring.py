"""Fast sentence log-probabilities: the engine under every zero-shot evaluation.

A *scorer* is either a ``CharLM`` (``babyssm.models.lm``) or any object with its own
``token_logprobs(seqs) -> list[np.ndarray]`` (the character n-gram of
``babyssm.models.transformer``, which is not an ``nn.Module``); the functions here accept
both and delegate to the latter.

Every sequence is scored from a start-of-text context: the model reads ``BOS``
and then the sequence's characters, and ``token_logprobs`` returns
``log p(c_i | BOS, c_<i)`` (natural log) for every character ``c_i``. BabyLM's
pipeline scores a sentence the same way, from the tokenizer's BOS token; with
characters, "the completion's tokens" are exactly its characters, so there is
no token-boundary rounding.

Symbols: S sequences, B batch (sequences in one forward), T time (characters,
BOS included), V vocabulary (128), P shared-prefix length (characters).

Memory stays flat in the length: a batch of more than ``MAX_POSITIONS`` positions
(B x T) is read in time chunks with ``forward_from``, the recurrent state carried from
chunk to chunk (the same values as one forward, tested), so a 1M-character minimal
pair needs no more memory than a short one.

Three paths, each checked against the next in the tests:

- ``token_logprobs`` (batched): sort the sequences by length, batch neighbours
  (right-padded: a causal model's outputs at real positions never see padding),
  one ``forward`` per batch under ``torch.inference_mode``.
- ``group_token_logprobs`` (shared prefix): minimal pairs and multiple-choice
  items share a prefix ("Who should Derek hug " in BLiMP, the whole context in
  EWoK). The prefix is read once with ``forward_from(idx, state, levels) ->
  (logits, state)`` (part of the ``CharLM`` contract) and every candidate continues
  from the carried state; 20% of BLiMP's characters are shared prefix. Groups of
  similar length are batched; a batch reads its members' shortest shared prefix once.
  ``forward_from`` must not modify ``state`` in place (it is reused per candidate).
- ``reference_token_logprobs`` / ``sentence_logprob`` (slow reference): one
  sequence at a time through ``model.step`` from ``init_state``.

>>> import numpy as np
>>> class Uniform:  # any object with token_logprobs is delegated to
...     def token_logprobs(self, seqs):
...         return [np.full(len(s), -np.log(128.0)) for s in seqs]
>>> [round(float(x.sum()), 3) for x in token_logprobs(Uniform(), [[72, 105], [33]])]
[-9.704, -4.852]
>>> score_groups(Uniform(), [[[72, 105], [72, 33, 33]]], starts=[[1, 1]])[0].round(3).tolist()
[-4.852, -9.704]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from babyssm.models.lm import CharLM
from babyssm.data.vocab import BOS_ID

DEFAULT_BATCH_SIZE = 64  # sequences per forward: ~3 MB of logits at 80 chars
LENGTH_BIN = 4  # group lengths batched together (chars); see group_token_logprobs
# Positions (B x T) one forward may hold: past it a batch is read in time chunks with the
# state carried, so memory stays flat in the length (8 MB of logits; a 1M-char pair in
# one forward took 2.5 GB on the tiny model). BLiMP-sized batches stay one forward.
MAX_POSITIONS = 16_384


def _delegates(scorer: Any) -> bool:
    """True for a scorer that computes its own log-probabilities (not a CharLM)."""
    return not isinstance(scorer, CharLM) and callable(getattr(scorer, "token_logprobs", None))


def _check_scorer(scorer: Any) -> None:
    if not isinstance(scorer, CharLM) and not _delegates(scorer):
        raise TypeError(f"{type(scorer).__name__} is neither a CharLM nor has token_logprobs(seqs)")


def _device(model: CharLM) -> torch.device:
    return next(model.parameters()).device


def _target_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) from logits (B, T, V) and targets (B, T) -> (B, T) float32."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _chunk_len(batch: int, max_positions: int) -> int:
    """Time steps per forward for a batch of ``batch`` rows: a multiple of 64 (scan chunks)."""
    return max(64, max_positions // max(batch, 1) // 64 * 64)


def _read(model: CharLM, inputs: torch.Tensor, state: Any, targets: torch.Tensor, levels: int | None,
          max_positions: int) -> tuple[np.ndarray, torch.Tensor, Any]:
    """Read ``inputs`` (B, T) from ``state`` in time chunks carried by the state; returns
    log p(targets) (B, T) float64, the log-distribution at the last position (B, V) and
    the state after it. One forward when B x T fits ``max_positions``."""
    step = inputs.size(1) if inputs.numel() <= max_positions else _chunk_len(inputs.size(0), max_positions)
    # Filled in place: chunk-sized temporaries only, which the allocator reuses chunk after chunk.
    lp = np.empty(tuple(inputs.shape), dtype=np.float64)  # (B, T)
    last = None
    for lo in range(0, inputs.size(1), step):
        logits, state = model.forward_from(inputs[:, lo : lo + step], state, levels=levels)
        lp[:, lo : lo + step] = _target_logprobs(logits, targets[:, lo : lo + step]).cpu().numpy()  # (B, t)
        last = F.log_softmax(logits[:, -1].float(), dim=-1)  # (B, V)
    return lp, last, state


def _pad_batch(rows: Sequence[Sequence[int]], device: torch.device, first: int | None = None) -> torch.Tensor:
    """Stack rows into (B, T) long, right-padded with BOS; ``first`` is prepended to each row."""
    lead = 0 if first is None else 1
    width = max((len(r) for r in rows), default=0) + lead
    out = np.full((len(rows), width), BOS_ID, dtype=np.int64)  # (B, T)
    for i, r in enumerate(rows):
        out[i, lead : lead + len(r)] = r
    return torch.from_numpy(out).to(device)


@torch.inference_mode()
def token_logprobs(
    scorer: Any,
    seqs: Sequence[Sequence[int]],
    batch_size: int = DEFAULT_BATCH_SIZE,
    levels: int | None = None,
    max_positions: int = MAX_POSITIONS,
) -> list[np.ndarray]:
    """log p(c_i | BOS, c_<i) for every symbol of every sequence, as float64 arrays.

    ``levels`` is passed to the model's forward (a hierarchical model's level choice);
    a batch over ``max_positions`` is read in chunks carried by the recurrent state.
    """
    _check_scorer(scorer)
    if _delegates(scorer):
        return [np.asarray(x, dtype=np.float64) for x in scorer.token_logprobs([list(map(int, s)) for s in seqs])]
    model, device = scorer, _device(scorer)
    model.eval()
    lengths = np.array([len(s) for s in seqs])
    out: list[np.ndarray] = [np.zeros(0, dtype=np.float64) for _ in seqs]
    # Longest first so each batch's padding is small and the widest batch comes first
    # (an out-of-memory error shows up at once, not after minutes).
    order = [i for i in np.argsort(-lengths, kind="stable") if lengths[i] > 0]
    for lo in range(0, len(order), batch_size):
        idx = order[lo : lo + batch_size]
        rows = [list(seqs[i]) for i in idx]
        targets = _pad_batch(rows, device)  # (B, T): c_0 .. c_{n-1}, padded
        inputs = _pad_batch([r[:-1] for r in rows], device, first=BOS_ID)  # (B, T): BOS, c_0 .. c_{n-2}
        if inputs.numel() <= max_positions:
            logits, _ = model(inputs, levels=levels)
            lp = _target_logprobs(logits, targets).double().cpu().numpy()  # (B, T)
        else:
            lp, _, _ = _read(model, inputs, model.init_state(len(idx), device), targets, levels, max_positions)
        for row, i in enumerate(idx):
            out[i] = lp[row, : lengths[i]].copy()
    return out


def common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the prefix all ``seqs`` share (0 for none)."""
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for p in range(n):
        if any(s[p] != first[p] for s in seqs[1:]):
            return p
    return n


@torch.inference_mode()
def group_token_logprobs(
    scorer: Any,
    groups: Sequence[Sequence[Sequence[int]]],
    batch_size: int = DEFAULT_BATCH_SIZE,
    levels: int | None = None,
    max_positions: int = MAX_POSITIONS,
) -> list[list[np.ndarray]]:
    """``token_logprobs`` of every sequence of every group, reading a group's shared
    prefix once with ``forward_from`` (same values, less work), in chunks past
    ``max_positions`` as ``token_logprobs``."""
    _check_scorer(scorer)
    if _delegates(scorer):
        flat = [s for g in groups for s in g]
        lp = iter(token_logprobs(scorer, flat, batch_size=batch_size, levels=levels))
        return [[next(lp) for _ in g] for g in groups]
    model, device = scorer, _device(scorer)
    model.eval()
    out: list[list[np.ndarray]] = [[np.zeros(0, dtype=np.float64)] * len(g) for g in groups]
    # Groups sorted by (size, longest member // LENGTH_BIN, shared prefix) share a batch,
    # which reads its shortest shared prefix once: similar lengths keep the padding of
    # the continuations small, and neighbours by prefix keep that shortest prefix long.
    # (On all of BLiMP: 16% fewer positions than the batched path; by prefix first: 15%.)
    todo = [gi for gi, g in enumerate(groups) if g and max(len(s) for s in g) > 0]
    prefix = {gi: common_prefix(groups[gi]) for gi in todo}
    todo.sort(key=lambda gi: (len(groups[gi]), max(len(s) for s in groups[gi]) // LENGTH_BIN, prefix[gi]))
    chunks: list[list[int]] = []
    for gi in todo:
        if chunks and len(chunks[-1]) < batch_size and len(groups[chunks[-1][0]]) == len(groups[gi]):
            chunks[-1].append(gi)
        else:
            chunks.append([gi])
    for chunk in chunks:
        p, k = min(prefix[gi] for gi in chunk), len(groups[chunk[0]])
        # Prefix pass: inputs BOS, c_0 .. c_{p-1} (B, p+1); output t predicts c_t for t <= p.
        prefix_rows = [list(groups[gi][0][:p]) for gi in chunk]
        inputs = _pad_batch(prefix_rows, device, first=BOS_ID)  # (B, p+1)
        next_ids = torch.cat([inputs[:, 1:], inputs[:, :1]], 1)  # (B, p+1): c_0 .. c_{p-1}, then a dummy
        lp, last, state = _read(model, inputs, model.init_state(len(chunk), device), next_ids, levels, max_positions)
        shared = lp[:, :p]  # (B, p)
        last = last.double().cpu().numpy()  # (B, V): the distribution of c_p
        for j in range(k):
            seqs = [groups[gi][j] for gi in chunk]
            # Continuation: inputs c_p .. c_{n-2} from the prefix state predict c_{p+1} .. c_{n-1}.
            tails = [list(s[p:-1]) for s in seqs]
            tail_lp = None
            if max(len(t) for t in tails) > 0:
                targets = _pad_batch([list(s[p + 1 :]) for s in seqs], device)  # (B, T)
                tail_lp, _, _ = _read(model, _pad_batch(tails, device), state, targets, levels, max_positions)
            for b, (gi, s) in enumerate(zip(chunk, seqs)):
                at_p = [last[b, s[p]]] if len(s) > p else []
                tail = tail_lp[b, : len(tails[b])] if tails[b] else np.zeros(0)
                out[gi][j] = np.concatenate([shared[b], at_p, tail])
    return out


def score_groups(
    scorer: Any,
    groups: Sequence[Sequence[Sequence[int]]],
    starts: Sequence[Sequence[int]] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    levels: int | None = None,
) -> list[np.ndarray]:
    """Summed log-probabilities (float64) of each candidate of each group, counting only
    characters from ``starts[g][j]`` on (0 when omitted: the whole sequence).

    A start lets a context be read but not scored, as BabyLM scores a completion
    given a prefix (EWoK targets, entity-tracking options). Identical candidates of a
    group get one score: a few filtered BLiMP pairs hold the same sentence twice, and
    read in different rows of a batch the two can differ in the last bits, where the
    pipelines' rule needs an exact tie (their scorer reads both in the same row).
    """
    per_char = group_token_logprobs(scorer, groups, batch_size=batch_size, levels=levels)
    sums = []
    for gi, lps in enumerate(per_char):
        st = starts[gi] if starts is not None else [0] * len(lps)
        first: dict[tuple, int] = {}  # (candidate, start) -> its first index in the group
        index = [first.setdefault((tuple(c), s), j) for j, (c, s) in enumerate(zip(groups[gi], st))]
        sums.append(np.array([float(lps[i][st[i]:].sum(dtype=np.float64)) for i in index]))
    return sums


@torch.inference_mode()
def reference_token_logprobs(scorer: Any, seq: Sequence[int], levels: int | None = None) -> np.ndarray:
    """Slow reference: log p(c_i | BOS, c_<i) one character at a time through ``model.step``."""
    _check_scorer(scorer)
    if _delegates(scorer):
        return np.asarray(scorer.token_logprobs([list(map(int, seq))])[0], dtype=np.float64)
    model, device = scorer, _device(scorer)
    model.eval()
    state = model.init_state(1, device)
    out = np.zeros(len(seq), dtype=np.float64)
    prev = BOS_ID
    for i, c in enumerate(seq):
        logits, state = model.step(torch.tensor([prev], device=device), state, levels=levels)
        out[i] = float(F.log_softmax(logits.double(), dim=-1)[0, int(c)])
        prev = int(c)
    return out


def sentence_logprob(scorer: Any, seq: Sequence[int], levels: int | None = None) -> float:
    """log p(sequence | BOS) (natural log), by the slow step-by-step reference."""
    return float(reference_token_logprobs(scorer, seq, levels=levels).sum())


def windowed_logprob(
    scorer: Any,
    text: np.ndarray,
    seq_len: int = 256,
    batch_size: int = DEFAULT_BATCH_SIZE,
    levels: int | None = None,
) -> float:
    """log p(text) (nats) from overlapping windows: each window reads BOS and up to
    ``seq_len`` chars and scores only its last ``seq_len // 2`` (the first window scores
    all of its own), so every char is scored once with ``seq_len//2 .. seq_len`` chars of
    context: the context range a model trained on BOS + ``seq_len``-char windows knows.

    >>> class Uniform:
    ...     def token_logprobs(self, seqs):
    ...         return [np.full(len(s), -np.log(128.0)) for s in seqs]
    >>> round(windowed_logprob(Uniform(), np.arange(97, 107), seq_len=4) / float(-np.log(128.0)), 6)
    10.0
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2 characters, got {seq_len}")
    text = np.asarray(text, dtype=np.int64)
    stride = seq_len // 2
    context = seq_len - stride
    seqs, skip = [], []
    for start in range(0, len(text), stride):
        first = max(0, start - context)
        seqs.append(text[first : start + stride])
        skip.append(start - first)
    lps = token_logprobs(scorer, seqs, batch_size=batch_size, levels=levels)
    return float(sum(lp[s:].sum(dtype=np.float64) for lp, s in zip(lps, skip)))


@torch.inference_mode()
def streamed_logprob(
    model: CharLM,
    text: np.ndarray,
    seq_len: int = 256,
    streams: int = 16,
    levels: int | None = None,
) -> float:
    """log p(text) (nats) with state carried: the text is cut into ``streams`` contiguous
    rows, each read from BOS once and continued window by window with ``forward_from``.
    Exact streaming likelihood; contexts grow past what training windows showed."""
    text = np.asarray(text, dtype=np.int64)
    device = _device(model)
    model.eval()
    n_rows = max(1, min(streams, len(text) // seq_len))
    row_len = -(-len(text) // n_rows)  # ceil: the last row may be shorter
    rows = np.full((n_rows, row_len), BOS_ID, dtype=np.int64)  # (B, L)
    lengths = np.zeros(n_rows, dtype=np.int64)
    for b in range(n_rows):
        part = text[b * row_len : (b + 1) * row_len]
        rows[b, : len(part)], lengths[b] = part, len(part)
    inputs_all = torch.from_numpy(np.concatenate([np.full((n_rows, 1), BOS_ID), rows], 1)).to(device)  # (B, L+1)
    targets_all = torch.from_numpy(rows).to(device)
    real = torch.arange(row_len, device=device)[None, :] < torch.from_numpy(lengths).to(device)[:, None]  # (B, L)
    state = model.init_state(n_rows, device)
    total = 0.0
    for lo in range(0, row_len, seq_len):
        logits, state = model.forward_from(inputs_all[:, lo : lo + seq_len], state, levels=levels)
        lp = _target_logprobs(logits, targets_all[:, lo : lo + seq_len]).double()  # (B, T)
        total += float(lp[real[:, lo : lo + seq_len]].sum())
    return total
