"""Helpers several test modules import: a small prepared corpus and two toy CharLMs.

``make_prepared(data_root, dest, kib)`` prepares the first ``kib`` KiB of two real
BabyLM training files and one dev file (whole lines only) into ``dest/prepared``.

The toy models are real CharLMs with hand-set weights (no training), so expected
log-probabilities are known exactly:

- ``BigramLM``: a fixed next-character table. p(c | prev) is uniform over the 128
  symbols, except p('a' | BOS) = 1/2 and p('b' | 'a') = 1/4.
- ``DecayRNN``: a true recurrent state, h_t = 0.8 h_{t-1} + E[x_t], logits_t = h_t W
  (levels=2 halves the logits), so any mistake in carrying state across a prefix
  shows up.

>>> probs = BigramLM().table.detach().softmax(-1)  # (prev, next)
>>> round(probs[BOS_ID, ord("a")].item(), 6), round(probs[ord("a"), ord("b")].item(), 6)
(0.5, 0.25)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from babyssm.data.prepared import prepare
from babyssm.models.lm import CharLM, register_model
from babyssm.data.vocab import BOS_ID, VOCAB_SIZE

SOURCES = ("train/2023_aochildes.train", "train/2023_cbt.train", "dev/2023_cbt.dev")


def make_prepared(data_root: Path, dest: Path, kib: int = 24) -> Path:
    """A prepared corpus from the first ``kib`` KiB of two real training files and one dev file."""
    for name in SOURCES:
        raw = (data_root / "babylm" / name).read_bytes()[: kib * 1024]
        (dest / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / "src" / name).write_bytes(raw[: raw.rindex(b"\n") + 1])  # whole lines: valid UTF-8
    prepare([dest / "src"], dest / "prepared")
    return dest / "prepared"


@dataclass
class ToyConfig:
    seed: int = 0  # weight initialisation seed
    width: int = 8  # state width of DecayRNN


class _ToyLM(CharLM):
    """One cross-entropy stage, like a baseline."""

    @staticmethod
    def _with_loss(logits: torch.Tensor, targets: torch.Tensor | None):
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss

    def stage_loss(self, stage, idx, targets):
        loss = self.forward(idx, targets)[1]
        return loss, {"ce": float(loss)}


@register_model
class BigramLM(_ToyLM):
    """p(c | prev): uniform over the 128 symbols, except after BOS, where 'a' has
    probability 1/2 (and the other 127 symbols share the other half), and after 'a',
    where 'b' has probability 1/4. It needs no state: logits depend on the input only."""

    model_type = "test_bigram"
    config_class = ToyConfig

    def __init__(self, config: ToyConfig = ToyConfig()):
        super().__init__()
        self.config = config
        table = torch.zeros(VOCAB_SIZE, VOCAB_SIZE)
        table[BOS_ID, ord("a")] = math.log(127.0)  # 127 / (127 + 127) = 1/2
        table[ord("a"), ord("b")] = math.log(127.0 / 3.0)  # (127/3) / (127/3 + 127) = 1/4
        self.table = nn.Parameter(table)

    def forward(self, idx, targets=None, levels=None):
        return self._with_loss(self.table[idx], targets)  # (B, T, V)

    def forward_from(self, idx, state, levels=None):
        return self.table[idx], state  # (B, T, V)

    def init_state(self, batch_size, device=None):
        return torch.zeros(batch_size, device=device)

    def step(self, idx_t, state, levels=None):
        return self.table[idx_t], state


@register_model
class DecayRNN(_ToyLM):
    """h_t = 0.8 h_{t-1} + E[x_t]; logits_t = h_t W (x levels: levels=2 halves the logits)."""

    model_type = "test_decay_rnn"
    config_class = ToyConfig

    def __init__(self, config: ToyConfig = ToyConfig()):
        super().__init__()
        self.config = config
        g = torch.Generator().manual_seed(config.seed)
        self.emb = nn.Parameter(torch.randn(VOCAB_SIZE, config.width, generator=g))
        self.out = nn.Parameter(torch.randn(config.width, VOCAB_SIZE, generator=g))

    def _logits(self, h, levels):
        return (h @ self.out) * (0.5 if levels == 2 else 1.0)

    def _run(self, idx, state, levels=None):
        hs, h = [], state
        for x in self.emb[idx].unbind(1):  # (B, width) per time step
            h = 0.8 * h + x
            hs.append(h)
        return self._logits(torch.stack(hs, 1), levels), h

    forward_from = _run

    def forward(self, idx, targets=None, levels=None):
        logits, _ = self._run(idx, self.init_state(idx.size(0), idx.device), levels)
        return self._with_loss(logits, targets)

    def init_state(self, batch_size, device=None):
        return torch.zeros(batch_size, self.config.width, device=device)

    def step(self, idx_t, state, levels=None):
        h = 0.8 * state + self.emb[idx_t]
        return self._logits(h, levels), h
