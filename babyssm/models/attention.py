"""Causal softmax attention over a sliding window: the ``hlru`` family's optional mixer.

Symbols: B batch, M new positions (words or characters), W window (the positions a
query sees, itself included), C = W - 1 cached positions, P <= C positions in the
carried cache, D width, H heads, E head width (D / H).

::

    q_i, k_i, v_i = u_i W_q, u_i W_k, u_i W_v          u: the block's normalised input (B, M, D)
    y_i = concat_h softmax_j(q_i k_j^T / sqrt(E)) v_j W_o     j over the W positions i-W+1 .. i

Why attention in a recurrent stack: at equal characters the same-size transformer
gains on the recurrent models as training goes on (docs/RESULTS.md, 20M), the mark
of lookups that a fixed-size state cannot make (Arora et al. 2024, "Zoology"; Jelassi
et al. 2024, "Repeat after me"). Griffin (De et al. 2024) and Jamba mix local
attention blocks into a recurrent stack for the same reason. Here it may replace the
LRU of the first decoder blocks (``HLRUConfig.char_attention``, a window of 256
characters: the training window) or of the last word blocks (``word_attention``, over
words: a window of 256 characters holds about 50, so it is cheap).

No position encoding ("NoPE", Haviv et al. 2022; Kazemnejad et al. 2023): the causal
mask alone lets a decoder infer order, and the recurrences in front of the mixer
already put each position's context, and so its place, into its vector.

State (``init_state``): keys and values of the last C positions (B, C, D) each, and
which of them hold a real position (B, C), so ``forward`` on a whole window, ``forward``
on pieces of it and ``step`` give the same outputs (tested). It starts empty (P = 0
positions), so a window read from the start -- every training step -- attends over
its own M keys under the plain causal mask, not over C + M. ``forward`` always returns C
positions (slots before the first position all zero and unseen), for M = 0 too.
``lengths`` (B,): rows of different real lengths in one padded batch, as
``babyssm.models.lru.GatedLRU``; padding follows every real position, so the causal
mask keeps it from every real query, and the returned cache ends at each row's last
real position.

>>> attn = LocalAttention(width=8, n_heads=2, window=4)
>>> u = torch.randn(1, 6, 8)
>>> y, state = attn(u, attn.init_state(1))
>>> steps, s = [], attn.init_state(1)
>>> for i in range(6):
...     out, s = attn.step(u[:, i], s)
...     steps.append(out)
>>> torch.allclose(torch.stack(steps, 1), y, atol=1e-6), [tuple(t.shape) for t in state]
(True, [(1, 3, 8), (1, 3, 8), (1, 3)])
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

AttentionState = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class LocalAttention(nn.Module):
    def __init__(self, width: int, n_heads: int, window: int):
        super().__init__()
        if width % n_heads or window < 2:
            raise ValueError(f"LocalAttention needs width ({width}) divisible by n_heads ({n_heads}) and window >= 2, "
                             f"got window {window}")
        self.width, self.n_heads, self.window = width, n_heads, window
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.out_proj = nn.Linear(width, width, bias=False)

    def init_state(self, batch_size: int, device=None, dtype=torch.float32) -> AttentionState:
        """An empty cache (P = 0 positions); ``forward`` returns one of C, so a state that has not
        grown yet reads as its all-zero, all-unseen full-size form."""
        empty = torch.zeros(batch_size, 0, self.width, device=device, dtype=dtype)
        return empty, empty.clone(), torch.zeros(batch_size, 0, dtype=torch.bool, device=device)

    def forward(self, u: torch.Tensor, state: AttentionState, lengths: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, AttentionState]:
        """y (B, M, D) of the normalised input ``u`` (B, M, D) after ``state`` (a cache of P <= C
        positions); the state (C positions) after position ``lengths`` (B,) of each row (default M)."""
        k_cache, v_cache, seen = state
        B, M, D = u.shape
        H, C, P = self.n_heads, self.window - 1, k_cache.size(1)
        if P + M == 0:  # nothing to keep yet (gather needs a position): the full cache's empty slots
            empty = u.new_zeros(B, C, D)
            return torch.zeros_like(u), (empty, empty.clone(), seen.new_zeros(B, C))
        q, k, v = self.qkv(u).chunk(3, dim=-1)  # (B, M, D) each
        keys = torch.cat([k_cache.to(k.dtype), k], dim=1)  # (B, P+M, D)
        values = torch.cat([v_cache.to(v.dtype), v], dim=1)  # (B, P+M, D)
        real = torch.cat([seen, seen.new_ones(B, M)], dim=1)  # (B, P+M)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, t.size(1), H, D // H).transpose(1, 2)  # (B, N, D) -> (B, H, N, E)

        if P == 0 and M <= self.window:  # a window from the start (training, scoring): the plain causal mask
            y = F.scaled_dot_product_attention(heads(q), heads(keys), heads(values), is_causal=True)
        else:
            i = torch.arange(M, device=u.device)[:, None] + P  # (M, 1): query positions in the concatenation
            j = torch.arange(P + M, device=u.device)[None]  # (1, P+M)
            mask = ((j <= i) & (j > i - self.window))[None] & real[:, None]  # (B, M, P+M): window, real keys
            y = F.scaled_dot_product_attention(heads(q), heads(keys), heads(values), attn_mask=mask[:, None])
        y = self.out_proj(y.transpose(1, 2).reshape(B, M, D))  # (B, H, M, E) -> (B, M, D)
        ends = P + (torch.full((B,), M, device=u.device) if lengths is None else lengths)  # (B,)
        keep = ends[:, None] - C + torch.arange(C, device=u.device)  # (B, C): the last C positions
        exists = keep >= 0  # (B, C); before the first position: an empty slot, all zero and unseen
        keep = keep.clamp_min(0)
        rows = keep[..., None].expand(B, C, D)

        def take(t: torch.Tensor) -> torch.Tensor:
            return torch.where(exists[..., None], t.gather(1, rows), 0)

        return y, (take(keys), take(values), real.gather(1, keep) & exists)

    def step(self, u_t: torch.Tensor, state: AttentionState, advance: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, AttentionState]:
        """y_t (B, D) of one normalised input ``u_t`` (B, D): ``forward`` on one position. Rows
        where ``advance`` (B,) bool is False keep their cache (``lengths`` 0)."""
        lengths = None if advance is None else advance.long()
        y, state = self(u_t[:, None], state, lengths)  # (B, D) -> (B, 1, D)
        return y[:, 0], state
