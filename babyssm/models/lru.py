"""The residual block of the ``hlru`` family: a gated diagonal linear recurrence and a SwiGLU MLP.

Symbols: B batch, T time (characters or words), D width, F MLP width, K conv width,
N d_state, H = D / N heads, a_t decay, c_t candidate, g_t output gate, h_t state;
⊙ elementwise.

One block (pre-norm residual, as in Griffin, HGRN and Mamba stacks)::

    x  <- x + LRU(rms(x))
    x  <- x + W_down (silu(rms(x) W_gate) ⊙ rms(x) W_up)              SwiGLU (Shazeer 2020)

    LRU(u):
      ũ_t = sum_{k<K} w_k ⊙ u_{t-k} + b_conv          causal depthwise conv (Mamba, Griffin)
      c_t = ũ_t W_c                                    candidate
      a_t = sigmoid(ũ_t W_a + b_a)                     input-dependent decay ("selection")
      h_t = a_t ⊙ h_{t-1} + (1 - a_t) ⊙ c_t           input gate tied to the decay
      y_t = (h_t ⊙ silu(u_t W_g)) W_o                  output gate

With ``d_state`` N > 1 the state of each of H heads is an N x N matrix (HGRN2's
state expansion, Qin et al. 2024: the decay and the input gate act per key row, a
query reads it out), so a block carries N times as many numbers for one more D x D
matrix W_q; N = 1 is the diagonal recurrence above, unchanged::

      a_t, c_t, q_t = the rows above reshaped (H, N); q_t = ũ_t W_q / sqrt(N)
      S_t = diag(a_t) S_{t-1} + (1 - a_t) c_t^T        (H, N, N) per step: key rows, value columns
      y_t = ((q_t S_t) ⊙ silu(u_t W_g)) W_o           q_t S_t (H, N) flattened to D

It runs through the same scan, on the D x N state flattened.

The recurrence is minGRU's (Feng et al. 2024, "Were RNNs all we needed?": h_t =
(1 - z_t) h_{t-1} + z_t h̃_t with z_t = sigmoid(x_t W_z), h̃_t = x_t W_h), which is
HGRN's (Qin et al. 2023) forget/input coupling without its lower bound, and
RG-LRU's (De et al. 2024, Griffin) input-dependent diagonal decay with the input
gate tied to it. It is linear in h, so a sequence runs as a scan
(``babyssm.models.scan.linear_scan``); the non-linearity lives between the recurrences
(gates, MLP), where stacked blocks put it. ``b_a`` starts with time constants
log-spaced over [1, ``max_timescale``] steps: a = exp(-1/tau).

Three forms of the same equations, tested equal (values and gradients):

- ``forward(x, state, kernel=...)``: a whole sequence. ``kernel`` picks the scan:
  "sequential" (one fused multiply-add per step, hand-written backward: the CPU
  default), "chunked" (blocks of ``chunk_size`` steps, exp of cumulative log-decay
  differences inside a block, the state carried between blocks: the GPU path),
  "reference" (the plain autograd loop, slow and obviously right), "auto".
- ``step(x_t, state)``: one position at constant cost (generation, streaming scoring).
- ``forward(..., lengths=n)``: rows of different real lengths in one padded batch
  (the word level): the returned state is each row's state after its n_b-th step.

State: (conv buffer (B, K-1, D): the last K-1 normalised inputs; h (B, D N), S flattened).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import AttentionState, LocalAttention
from .scan import KERNELS, linear_scan, reference_scan

SCAN_KERNELS = (*KERNELS, "reference")
BlockState = tuple[torch.Tensor, torch.Tensor]


class RMSNorm(nn.Module):
    def __init__(self, width: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def decay_bias_init(width: int, max_timescale: float) -> torch.Tensor:
    """(D,) logits b_a with sigmoid(b_a) = exp(-1/tau), tau log-spaced over [1, max_timescale]."""
    tau = torch.logspace(0.0, math.log10(max_timescale), width)
    a = torch.exp(-1.0 / tau)
    return torch.log(a) - torch.log1p(-a)


class GatedLRU(nn.Module):
    def __init__(self, width: int, conv_size: int, max_timescale: float, chunk_size: int, d_state: int = 1):
        super().__init__()
        if width % d_state:
            raise ValueError(f"GatedLRU: width {width} is not a multiple of d_state {d_state}")
        self.width, self.conv_size, self.chunk_size, self.d_state = width, conv_size, chunk_size, d_state
        # Depthwise weights (D, K): w[:, -1] multiplies u_t, w[:, 0] u_{t-K+1}; starts as the identity.
        self.conv_weight = nn.Parameter(F.one_hot(torch.tensor(conv_size - 1), conv_size).float().repeat(width, 1))
        self.conv_bias = nn.Parameter(torch.zeros(width))
        self.in_proj = nn.Linear(width, 2 * width, bias=False)  # ũ -> (c, decay logit)
        self.gate_proj = nn.Linear(width, width, bias=False)  # u -> g
        self.out_proj = nn.Linear(width, width, bias=False)
        bias = decay_bias_init(width, max_timescale)
        if d_state > 1:
            self.query_proj = nn.Linear(width, width, bias=False)
            # Every head's N key rows span the whole range of time constants, not a slice of it.
            bias = bias.view(d_state, width // d_state).T.flatten()  # (N, H) -> (H, N) -> (D,)
        self.decay_bias = nn.Parameter(bias)

    def init_state(self, batch_size: int, device=None, dtype=torch.float32) -> BlockState:
        D, K = self.width, self.conv_size
        return (torch.zeros(batch_size, K - 1, D, device=device, dtype=dtype),
                torch.zeros(batch_size, D * self.d_state, device=device))

    def _conv(self, u: torch.Tensor, buf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ũ (B, T, D) and the padded input (B, K-1+T, D) whose tail is the next buffer."""
        full = torch.cat([buf.to(u.dtype), u], dim=1)  # (B, K-1+T, D)
        T, w = u.size(1), self.conv_weight.to(u.dtype)  # (D, K)
        # K shifted multiply-adds: on CPU several times faster than a depthwise conv1d, backward included.
        out = self.conv_bias.to(u.dtype) + full[:, :T] * w[:, 0]
        for k in range(1, self.conv_size):
            out = torch.addcmul(out, full[:, k:k + T], w[:, k])
        return out, full

    def _gates(self, conv_u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decay a and scan input (1 - a) c, (..., D N) each, in float32 (``conv_u`` (..., D))."""
        c, f = self.in_proj(conv_u).float().chunk(2, dim=-1)  # (..., D) each
        a = torch.sigmoid(f + self.decay_bias)
        N = self.d_state
        if N == 1:
            return a, (1 - a) * c
        a = a.unflatten(-1, (-1, N))[..., None]  # (..., H, N, 1): one decay per key row
        b = (1 - a) * c.unflatten(-1, (-1, N))[..., None, :]  # (..., H, N, N)
        return a.expand_as(b).flatten(-3), b.flatten(-3)  # (..., D N) each

    def _read(self, h: torch.Tensor, conv_u: torch.Tensor) -> torch.Tensor:
        """What the state h (..., D N) gives out, (..., D) float32: h itself, or q S per head."""
        N = self.d_state
        if N == 1:
            return h
        q = self.query_proj(conv_u).float().unflatten(-1, (-1, N)) / math.sqrt(N)  # (..., H, N)
        S = h.unflatten(-1, (-1, N, N))  # (..., H, N, N)
        return (q[..., None] * S).sum(-2).flatten(-2)  # (..., H, N) -> (..., D)

    def forward(self, u: torch.Tensor, state: BlockState, kernel: str = "auto",
                lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, BlockState]:
        """y (B, T, D) of the normalised input ``u`` (B, T, D) from ``state``; the state after
        step ``lengths`` (B,) of each row (default: after step T)."""
        buf, h0 = state
        B, T, _ = u.shape
        if T == 0:
            return torch.zeros_like(u), state
        conv_u, full = self._conv(u, buf)
        a, b = self._gates(conv_u)
        if kernel == "reference":
            h = reference_scan(a, b, h0)
        else:
            h = linear_scan(a, b, h0, self.chunk_size, kernel)  # (B, T, D)
        y = self.out_proj((self._read(h, conv_u).to(u.dtype) * F.silu(self.gate_proj(u))))
        if lengths is None:
            return y, (full[:, T:], h[:, -1])
        keep = torch.arange(self.conv_size - 1, device=u.device) + lengths[:, None]  # (B, K-1) into full
        new_buf = full.gather(1, keep[..., None].expand(-1, -1, self.width))  # (B, K-1, D)
        last = (lengths - 1).clamp_min(0)[:, None, None].expand(-1, 1, h.size(-1))  # (B, 1, D N)
        new_h = torch.where((lengths > 0)[:, None], h.gather(1, last)[:, 0], h0)  # (B, D N)
        return y, (new_buf, new_h)

    def step(self, u_t: torch.Tensor, state: BlockState, advance: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, BlockState]:
        """y_t (B, D) of one normalised input ``u_t`` (B, D): the recurrence written per step. Rows
        where ``advance`` (B,) bool is False keep their state (``forward`` with ``lengths`` 0)."""
        buf, h0 = state
        window = torch.cat([buf.to(u_t.dtype), u_t[:, None]], dim=1)  # (B, K, D)
        conv_u = (window * self.conv_weight.T.to(u_t.dtype)).sum(1) + self.conv_bias  # (B, D)
        a, b = self._gates(conv_u)
        h = a * h0 + b
        y = self.out_proj(self._read(h, conv_u).to(u_t.dtype) * F.silu(self.gate_proj(u_t)))
        if advance is None:
            return y, (window[:, 1:], h)
        return y, (torch.where(advance[:, None, None], window[:, 1:], buf), torch.where(advance[:, None], h, h0))


class SwiGLU(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.up = nn.Linear(width, 2 * hidden, bias=False)  # (gate, value)
        self.down = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.up(x).chunk(2, dim=-1)  # (..., F) each
        return self.down(F.silu(gate) * value)


class Block(nn.Module):
    """x + LRU(rms(x)), then + SwiGLU(rms(x)); see the module docstring. With ``attention_heads``
    the mixer is ``babyssm.models.attention.LocalAttention`` over the last ``window`` positions
    instead of the LRU (``HLRUConfig.word_attention`` / ``char_attention``), and the state is its cache."""

    def __init__(self, width: int, hidden: int, conv_size: int, max_timescale: float, chunk_size: int,
                 eps: float, attention_heads: int = 0, window: int = 0, d_state: int = 1):
        super().__init__()
        self.norm1 = RMSNorm(width, eps)
        self.attention = attention_heads > 0
        if self.attention:
            self.attn = LocalAttention(width, attention_heads, window)
        else:  # the attribute keeps its name, so every saved hlru checkpoint loads
            self.lru = GatedLRU(width, conv_size, max_timescale, chunk_size, d_state)
        self.norm2 = RMSNorm(width, eps)
        self.mlp = SwiGLU(width, hidden)

    def init_state(self, batch_size: int, device=None, dtype=torch.float32) -> BlockState | AttentionState:
        return (self.attn if self.attention else self.lru).init_state(batch_size, device, dtype)

    def forward(self, x: torch.Tensor, state: BlockState | AttentionState, kernel: str = "auto",
                lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, BlockState | AttentionState]:
        if self.attention:
            y, state = self.attn(self.norm1(x), state, lengths)
        else:
            y, state = self.lru(self.norm1(x), state, kernel, lengths)
        x = x + y
        return x + self.mlp(self.norm2(x)), state

    def step(self, x_t: torch.Tensor, state: BlockState | AttentionState, advance: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, BlockState | AttentionState]:
        """One position (B, D); rows where ``advance`` (B,) bool is False keep their state."""
        y, state = (self.attn if self.attention else self.lru).step(self.norm1(x_t), state, advance)
        x_t = x_t + y
        return x_t + self.mlp(self.norm2(x_t)), state


def init_weights(module: nn.Module, n_blocks: int) -> None:
    """GPT-2's init: N(0, 0.02) matrices, residual outputs scaled by 1/sqrt(2 n_blocks)."""
    for name, p in module.named_parameters():
        if p.dim() == 2 and not name.endswith("conv_weight"):
            std = 0.02 / math.sqrt(2 * n_blocks) if name.endswith(("out_proj.weight", "down.weight")) else 0.02
            nn.init.normal_(p, 0.0, std)
