"""Linear time-invariant recurrences, run in parallel over time.

Symbols: B batch, T time, N channels, L chunk length, C number of chunks (ceil(T / L)).

Both SSM levels need every state of

    h_t = a * h_{t-1} + b_t,        t = 0 .. T-1,  h_{-1} = h0 (zeros by default)

with a per-channel decay ``a`` in (0, 1] that does not depend on time. Unrolled,
h_t = sum_{s<=t} a^(t-s) b_s + a^(t+1) h0, which the chunked scan evaluates in
blocks of L steps:

- inside a chunk, one causal L x L decay matrix per channel,
  K[t, s, n] = a_n^(t-s) for s <= t (0 above the diagonal), applied to the chunk's
  inputs in one einsum: the within-chunk states as if the chunk started from zero;
- between chunks, the state entering chunk c is carried forward: it adds
  a^(t+1) * h_in[c] to step t of the chunk, and h_in[c+1] = within-chunk state at
  step L-1 + a^L * h_in[c] (a short loop over C chunks of (B, N) updates).

Cost: B T L N multiply-adds for the einsum instead of T sequential steps, so the
work is a few large kernels rather than thousands of tiny ones. ``reference_scan``
is the plain step-by-step loop kept beside it; tests check they agree (values and
gradients). Both run in float32 with autocast off: in bfloat16 a decay of 0.999
rounds to 1.0 and a thousand-step memory becomes an infinite one.

>>> a = torch.tensor([0.5, 1.0])
>>> b = torch.ones(1, 3, 2)
>>> chunked_scan(a, b, chunk_size=2)[0]
tensor([[1.0000, 1.0000],
        [1.5000, 2.0000],
        [1.7500, 3.0000]])
>>> torch.allclose(chunked_scan(a, b, chunk_size=2), reference_scan(a, b))
True
"""

from __future__ import annotations

import torch

# Decays are clamped here before the logarithm so that a == 0 gives powers 1, 0, 0, ...
# instead of 0 * log(0) = NaN on the diagonal.
_MIN_DECAY = 1e-30


def _check(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None) -> None:
    if b.dim() != 3 or a.shape != b.shape[-1:]:
        raise ValueError(f"scan expects a (N,) and b (B, T, N); got a {tuple(a.shape)}, b {tuple(b.shape)}")
    if h0 is not None and h0.shape != (b.shape[0], b.shape[2]):
        raise ValueError(f"scan expects h0 (B, N) = {(b.shape[0], b.shape[2])}; got {tuple(h0.shape)}")


def reference_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """All states (B, T, N) of h_t = a * h_{t-1} + b_t, one time step at a time (slow, obviously right)."""
    _check(a, b, h0)
    with torch.autocast(b.device.type, enabled=False):
        a, b = a.float(), b.float()
        h = torch.zeros_like(b[:, 0]) if h0 is None else h0.float()
        states = []
        for b_t in b.unbind(1):
            h = a * h + b_t
            states.append(h)
        return torch.stack(states, dim=1)


def decay_kernel(a: torch.Tensor, length: int) -> torch.Tensor:
    """K (L, L, N): K[t, s] = a^(t-s) for s <= t, else 0."""
    steps = torch.arange(length, device=a.device)
    lags = steps[:, None] - steps[None, :]  # (L, L): t - s
    log_a = torch.log(a.float().clamp_min(_MIN_DECAY))  # (N,)
    causal = (lags >= 0)[..., None]  # (L, L, 1)
    # Masking the exponent (not the result) keeps exp() from overflowing above the diagonal.
    powers = torch.exp(lags.clamp_min(0)[..., None].float() * log_a)  # (L, L, N)
    return powers * causal


def chunked_scan(
    a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None, chunk_size: int = 32
) -> torch.Tensor:
    """All states (B, T, N) of h_t = a * h_{t-1} + b_t, computed in chunks of ``chunk_size`` steps.

    ``a`` (N,) decays in [0, 1]; ``b`` (B, T, N) inputs; ``h0`` (B, N) the state before
    step 0 (zeros if None). The last state ``out[:, -1]`` is the state to carry on with.
    T need not be a multiple of ``chunk_size``.
    """
    _check(a, b, h0)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    B, T, N = b.shape
    if T == 0:
        return b.float()
    with torch.autocast(b.device.type, enabled=False):
        a, b = a.float(), b.float()
        L = min(chunk_size, T)
        C = -(-T // L)
        if C * L != T:
            b = torch.nn.functional.pad(b, (0, 0, 0, C * L - T))  # zero inputs past the end change nothing before it
        chunks = b.view(B, C, L, N)  # (B, C, L, N)
        K = decay_kernel(a, L)  # (L, L, N)
        local = torch.einsum("tsn,bcsn->bctn", K, chunks)  # (B, C, L, N): states from a zero start
        carry_decay = K[:, 0]  # (L, N): a^t for t = 0 .. L-1
        a_pow_L = carry_decay[-1] * a  # (N,): a^L
        h_in = torch.zeros(B, N, device=b.device) if h0 is None else h0.float()
        carried = []
        for c in range(C):
            carried.append(h_in)
            h_in = local[:, c, -1] + a_pow_L * h_in
        h_in_all = torch.stack(carried, dim=1)  # (B, C, N): state entering each chunk
        # Step t of a chunk sees the entering state decayed t+1 times.
        states = local + (carry_decay * a)[None, None] * h_in_all[:, :, None, :]  # (B, C, L, N)
        return states.reshape(B, C * L, N)[:, :T]  # (B, T, N)
