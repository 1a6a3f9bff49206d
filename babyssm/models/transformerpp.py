"""``TransformerPP``: the same-size transformer in today's small-LM recipe (RoPE, RMSNorm, SwiGLU).

Symbols: B batch, T time (characters), V vocabulary (128), D d_model, F d_ff,
H heads, E head width (D / H), L n_layers, W seq_len (attention window).

The stronger of the two transformer baselines, beside ``babyssm.models.transformer.TransformerLM``
(LayerNorm, GELU MLP): the "Transformer++" of the Mamba paper (Gu & Dao 2023), i.e.
LLaMA's block (Touvron et al. 2023) at this size::

    x_0 = Emb[c_t]
    x  <- x + Attn(rms(x))           causal, rotary positions on queries and keys
    x  <- x + W_down (silu(rms(x) W_gate) ⊙ rms(x) W_up)
    logits = rms(x) Emb^T            head tied to the embedding

Attention, its rotary tables, the sliding-window KV cache, the tied head and the
initialisation are ``babyssm.models.transformer``'s (``TransformerPP`` is a ``TransformerLM``
with this block, so ``step``/``forward_from`` give ``forward``'s logits at any length);
RMSNorm and SwiGLU are ``babyssm.models.lru``'s. Parameters: VD + L(4D^2 + 3DF + 2D) + D.
Trained by the same loop as every baseline: ``babyssm baseline transformerpp``.

>>> cfg = transformerpp_config_for_params(1_640_961)
>>> cfg.d_model, cfg.d_ff, abs(TransformerPP(cfg).num_parameters() / 1_640_961 - 1) < 0.01
(184, 486, True)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from babyssm.errors import BabySSMError
from babyssm.models.config import check_positive_ints, check_rates
from babyssm.models.lm import register_model
from babyssm.models.lru import RMSNorm, SwiGLU
from babyssm.models.transformer import KV, SelfAttention, TransformerLM


@dataclass
class TransformerPPConfig:
    vocab_size: int = 128  # V: babyssm.data.vocab's symbols
    d_model: int = 184  # D: residual width (184 with d_ff 486: the seed model's parameter count)
    n_layers: int = 4  # L: pre-norm blocks
    n_heads: int = 4  # H: attention heads; D / H must be even for the rotary pairs
    d_ff: int = 486  # F: SwiGLU width (~8/3 D, LLaMA's ratio; tunes the parameter count finely)
    seq_len: int = 256  # W: attention window in characters (= TrainConfig.seq_len)
    rope_base: float = 10000.0  # rotary wavelength base
    norm_eps: float = 1e-6  # RMSNorm floor
    lr: float = 2e-3  # peak learning rate of its one training stage (the sweep's best, docs/RESULTS.md)
    weight_decay: float = 0.1  # AdamW decay of the matrices in the cross-entropy stage (babyssm.training.plan)
    min_lr_frac: float = 0.1  # the cross-entropy stage's cosine ends at lr * min_lr_frac (0: decays to zero)
    head_dim: int = dataclasses.field(init=False)  # E = D / H, derived

    def __post_init__(self):
        check_positive_ints(self, ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "seq_len"))
        check_rates(self)
        if self.d_model % (2 * self.n_heads):
            raise ValueError(f"TransformerPPConfig.d_model ({self.d_model}) must be a multiple of 2 * n_heads "
                             f"({2 * self.n_heads}): rotary positions rotate pairs of each head's channels")
        self.head_dim = self.d_model // self.n_heads


class Block(nn.Module):
    @staticmethod
    def make_norm(config: TransformerPPConfig) -> nn.Module:
        """The block's normalisation, also the model's final one."""
        return RMSNorm(config.d_model, config.norm_eps)

    def __init__(self, config: TransformerPPConfig):
        super().__init__()
        self.norm1 = RMSNorm(config.d_model, config.norm_eps)
        self.attn = SelfAttention(config)
        self.norm2 = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = SwiGLU(config.d_model, config.d_ff)

    def forward(self, x, cos, sin, cache: KV) -> tuple[torch.Tensor, KV]:
        a, cache = self.attn(self.norm1(x), cos, sin, cache)
        x = x + a
        return x + self.mlp(self.norm2(x)), cache


@register_model
class TransformerPP(TransformerLM):
    """``TransformerLM`` with LLaMA's block: embedding, tied head, KV-cache state and init are its own."""

    model_type = "transformerpp"
    config_class = TransformerPPConfig
    block_class = Block
    residual_outputs = ("proj.weight", "down.weight")


def transformerpp_param_count(vocab_size: int, d_model: int, n_layers: int, d_ff: int) -> int:
    V, D, L, Fw = vocab_size, d_model, n_layers, d_ff
    return V * D + L * (4 * D * D + 3 * D * Fw + 2 * D) + D


def transformerpp_config_for_params(n: int, n_layers: int = 4, n_heads: int = 4, seq_len: int = 256,
                                    vocab_size: int = 128) -> TransformerPPConfig:
    """A TransformerPPConfig of about ``n`` parameters: D from n with F = 8D/3 (rounded to a
    multiple of 2H), then F solved exactly (it moves the count in steps of 3LD)."""
    step = 2 * n_heads
    a, b = 12 * n_layers, vocab_size + 2 * n_layers + 1
    d = max(step, round((-b + math.sqrt(b * b + 4 * a * n)) / (2 * a) / step) * step)
    d_ff = round((n - transformerpp_param_count(vocab_size, d, n_layers, 0)) / (3 * n_layers * d))
    if d_ff < 1:
        raise BabySSMError(f"{n} parameters is too few for a {n_layers}-layer transformer of width {d}")
    return TransformerPPConfig(vocab_size=vocab_size, d_model=d, n_layers=n_layers, n_heads=n_heads,
                               d_ff=d_ff, seq_len=seq_len)
