"""The transformer baseline: a small pre-LN transformer with rotary positions and a sliding window.

Like the GRU (``babyssm.models.gru``) it is a ``WholeModelLM`` trained by the same loop on
the same windows and sized to the seed model's parameter count
(``transformer_config_for_params``); the n-gram baseline is ``babyssm.models.ngram``.

Symbols: B batch, T time (characters), P cached (past) positions, D d_model,
F d_ff (transformer MLP width), H heads, E head width (D / H), L n_layers,
V vocabulary (128), W seq_len (the transformer's attention window).

TransformerLM: pre-LN blocks x += Attn(LN(x)); x += W_2 gelu(W_1 LN(x)); logits =
LN(x) Emb^T (head tied to the embedding). Rotary positions (RoFormer, Su et al.
2021) rotate queries and keys, so attention depends on relative offsets only and
the model has no position table. Parameters: VD + L(4D^2 + 2DF + 2D) + D.
Context: every position attends to itself and the previous W - 1 positions
(sliding-window attention). For T <= W that is plain causal attention (the
training case, seq_len == W); longer inputs get a banded mask instead of an error,
and ``step``/``forward_from`` keep the last W - 1 keys and values per layer (the
KV cache) as their state, so recurrent decoding gives exactly the logits of
``forward`` at any length, at bounded cost per character (tested).

>>> cfg = transformer_config_for_params(1_640_961)
>>> cfg.d_model, cfg.n_layers, abs(TransformerLM(cfg).num_parameters() / 1_640_961 - 1) < 0.02
(184, 4, True)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from babyssm.data.vocab import VOCAB_SIZE
from babyssm.errors import BabySSMError
from babyssm.models.config import check_positive_ints, check_rates
from babyssm.models.lm import WholeModelLM, register_model


@dataclass
class TransformerConfig:
    vocab_size: int = VOCAB_SIZE  # V: fixed character vocabulary
    d_model: int = 184  # D: residual width (184 with d_ff 730: the seed model's parameter count)
    n_layers: int = 4  # L: pre-LN blocks
    n_heads: int = 4  # H: attention heads; D / H must be even for the rotary pairs
    d_ff: int = 730  # F: MLP hidden width, ~4D (tunes the parameter count finely)
    seq_len: int = 256  # W: attention window in characters (= TrainConfig.seq_len)
    rope_base: float = 10000.0  # rotary wavelength base (RoFormer's default)
    lr: float = 2e-3  # peak learning rate of its one training stage
    weight_decay: float = 0.1  # AdamW decay of the matrices in the cross-entropy stage (babyssm.training.plan)
    min_lr_frac: float = 0.1  # the cross-entropy stage's cosine ends at lr * min_lr_frac (0: decays to zero)
    head_dim: int = dataclasses.field(init=False)  # E = D / H, derived
    RENAMED: ClassVar[dict[str, str]] = {"block_size": "seq_len"}  # old field -> new, in configs saved before

    def __post_init__(self):
        check_positive_ints(self, ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "seq_len"))
        check_rates(self)
        if self.d_model % (2 * self.n_heads):
            raise ValueError(f"TransformerConfig.d_model ({self.d_model}) must be a multiple of 2 * n_heads "
                             f"({2 * self.n_heads}): rotary positions rotate pairs of each head's channels")
        self.head_dim = self.d_model // self.n_heads


def rope_tables(start: int, length: int, head_dim: int, base: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (T, E/2) of positions start .. start+T-1 (float64 angles: exact at large positions)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim)  # (E/2,)
    angles = torch.arange(start, start + length, dtype=torch.float64, device=device)[:, None] * inv_freq  # (T, E/2)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + E/2) of x (B, H, T, E) by the position angles."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, H, T, E/2) each
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


KV = tuple[torch.Tensor, torch.Tensor]  # keys, values (B, H, P, E)


class SelfAttention(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KV) -> tuple[torch.Tensor, KV]:
        B, T, D = x.shape
        H, E, W = self.config.n_heads, self.config.head_dim, self.config.seq_len
        q, k, v = (t.view(B, T, H, E).transpose(1, 2) for t in self.qkv(x).split(D, dim=2))  # (B, H, T, E) each
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        past = cache[0].size(2)
        if past:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)  # (B, H, P+T, E)
        if past == 0 and T <= W:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif T == 1:  # one new position and at most W - 1 cached ones: all visible
            y = F.scaled_dot_product_attention(q, k, v)
        else:
            i = torch.arange(T, device=x.device)[:, None] + past  # (T, 1) absolute query positions
            j = torch.arange(past + T, device=x.device)[None, :]  # (1, P+T) key positions
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=(j <= i) & (j > i - W))
        keep = min(past + T, W - 1)
        cache = (k[:, :, past + T - keep :], v[:, :, past + T - keep :])
        return self.proj(y.transpose(1, 2).reshape(B, T, D)), cache  # (B, H, T, E) -> (B, T, D)


class Block(nn.Module):
    @staticmethod
    def make_norm(config: TransformerConfig) -> nn.Module:
        """The block's normalisation, also the model's final one."""
        return nn.LayerNorm(config.d_model, bias=False)

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.d_model, bias=False)
        self.attn = SelfAttention(config)
        self.ln2 = nn.LayerNorm(config.d_model, bias=False)
        self.fc = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.out = nn.Linear(config.d_ff, config.d_model, bias=False)

    def forward(self, x, cos, sin, cache: KV) -> tuple[torch.Tensor, KV]:
        a, cache = self.attn(self.ln1(x), cos, sin, cache)
        x = x + a
        return x + self.out(F.gelu(self.fc(self.ln2(x)))), cache


@register_model
class TransformerLM(WholeModelLM):
    model_type = "transformer"
    config_class = TransformerConfig
    block_class: type[nn.Module] = Block  # a subclass swaps the block (and with it the norm) here
    residual_outputs = ("proj.weight", "out.weight")  # the block's matrices that write the residual stream

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(self.block_class(config) for _ in range(config.n_layers))
        self.norm = self.block_class.make_norm(config)
        # GPT-2 init: N(0, 0.02), residual outputs scaled by 1/sqrt(2L) so the stream's variance stays O(1).
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * config.n_layers) if name.endswith(self.residual_outputs) else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward_from(self, idx: torch.Tensor, state, levels: int | None = None):
        """Logits (B, T, V) of ``idx`` (B, T) after the positions in ``state`` = (position, [KV per layer])."""
        pos, caches = state
        cos, sin = rope_tables(pos, idx.size(1), self.config.head_dim, self.config.rope_base, idx.device)
        x = self.embed(idx)  # (B, T, D)
        new = []
        for block, cache in zip(self.blocks, caches):
            x, cache = block(x, cos, sin, cache)
            new.append(cache)
        return self.norm(x) @ self.embed.weight.T, (pos + idx.size(1), new)  # (B, T, V)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, levels: int | None = None):
        logits, _ = self.forward_from(idx, self.init_state(idx.size(0), idx.device))
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        return logits, loss

    def init_state(self, batch_size: int, device: torch.device | str | None = None):
        c = self.config
        dtype = self.embed.weight.dtype
        empty = torch.zeros(batch_size, c.n_heads, 0, c.head_dim, device=device, dtype=dtype)  # (B, H, 0, E)
        return 0, [(empty, empty) for _ in range(c.n_layers)]


def transformer_param_count(vocab_size: int, d_model: int, n_layers: int, d_ff: int) -> int:
    V, D, L, Fw = vocab_size, d_model, n_layers, d_ff
    return V * D + L * (4 * D * D + 2 * D * Fw + 2 * D) + D


def transformer_config_for_params(n: int, n_layers: int = 4, n_heads: int = 4, seq_len: int = 256,
                                  vocab_size: int = VOCAB_SIZE) -> TransformerConfig:
    """A TransformerConfig of about ``n`` parameters: D from n with F = 4D (rounded to a
    multiple of 2H), then F solved exactly (it moves the count in steps of 2LD)."""
    step = 2 * n_heads
    a, b = 12 * n_layers, vocab_size + 2 * n_layers + 1
    d = max(step, round((-b + math.sqrt(b * b + 4 * a * n)) / (2 * a) / step) * step)
    rest = n - transformer_param_count(vocab_size, d, n_layers, 0)
    d_ff = round(rest / (2 * n_layers * d))
    if d_ff < 1:
        raise BabySSMError(f"{n} parameters is too few for a {n_layers}-layer transformer of width {d}")
    return TransformerConfig(vocab_size=vocab_size, d_model=d, n_layers=n_layers, n_heads=n_heads,
                             d_ff=d_ff, seq_len=seq_len)
