"""The GRU baseline: a ``torch.nn.GRU`` character model sized to the seed model.

Symbols: B batch, T time (characters), D d_model, L n_layers, V vocabulary (128).

GRULM: x_t = Emb[c_t]; h_t = GRU_L(x_t, h_{t-1}) (torch.nn.GRU, L stacked layers);
logits_t = h_t W_head + b_head. Parameters: 2VD + V + L(6D^2 + 6D).

Like the transformer (``babyssm.models.transformer``) it is a ``WholeModelLM``: one
training stage (the whole model, cross-entropy), trained by the same loop on the same
windows as the hierarchical model, sized to its parameter count
(``gru_config_for_params``), so a comparison differs in the architecture only.

>>> cfg = gru_config_for_params(1_640_961)
>>> cfg.d_model, abs(GRULM(cfg).num_parameters() / 1_640_961 - 1) < 0.02
(502, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from babyssm.data.vocab import VOCAB_SIZE
from babyssm.models.config import check_positive_ints, check_rates
from babyssm.models.lm import WholeModelLM, register_model


@dataclass
class GRUConfig:
    vocab_size: int = VOCAB_SIZE  # V: fixed character vocabulary
    d_model: int = 502  # D: embedding and hidden width (502: the seed model's parameter count)
    n_layers: int = 1  # L: stacked GRU layers (one, like the SSM's single recurrent state per level)
    lr: float = 2e-3  # peak learning rate of its one training stage
    weight_decay: float = 0.1  # AdamW decay of the matrices in the cross-entropy stage (babyssm.training.plan)
    min_lr_frac: float = 0.1  # the cross-entropy stage's cosine ends at lr * min_lr_frac (0: decays to zero)

    def __post_init__(self):
        check_positive_ints(self, ("vocab_size", "d_model", "n_layers"))
        check_rates(self)


@register_model
class GRULM(WholeModelLM):
    model_type = "gru"
    config_class = GRUConfig

    def __init__(self, config: GRUConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.rnn = nn.GRU(config.d_model, config.d_model, num_layers=config.n_layers, batch_first=True)
        self.head = nn.Linear(config.d_model, config.vocab_size)

    def forward_from(self, idx: torch.Tensor, state: torch.Tensor, levels: int | None = None):
        """Logits (B, T, V) of ``idx`` (B, T) continuing from ``state`` (L, B, D), and the new state."""
        y, state = self.rnn(self.embed(idx), state)  # y: (B, T, D)
        return self.head(y), state

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, levels: int | None = None):
        y, _ = self.rnn(self.embed(idx))  # (B, T, D), from a zero state
        logits = self.head(y)  # (B, T, V)
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
        return torch.zeros(self.config.n_layers, batch_size, self.config.d_model, device=device)


def gru_config_for_params(n: int, n_layers: int = 1, vocab_size: int = VOCAB_SIZE) -> GRUConfig:
    """The GRUConfig whose parameter count is closest to ``n`` (the width moves in steps of ~12D)."""
    a, b, c = 6 * n_layers, 2 * vocab_size + 6 * n_layers, vocab_size - n
    d = max(1, round((-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)))
    return GRUConfig(vocab_size=vocab_size, d_model=d, n_layers=n_layers)
