"""Linear recurrences over a whole sequence, with a hand-written backward.

Symbols: B batch, T time, N channels, L chunk length, C number of chunks (ceil(T / L)).

Both SSM levels need every state of

    h_t = a * h_{t-1} + b_t,        t = 0 .. T-1,  h_{-1} = h0 (zeros by default)

with a per-channel decay ``a`` (N,) in [0, 1] that does not depend on time. Unrolled,
h_t = sum_{s<=t} a^(t-s) b_s + a^(t+1) h0. Level 3's selective and word-rate variants
need a decay that does (``a`` (B, T, N): h_t = a_t * h_{t-1} + b_t, Mamba's selective
recurrence without the discretisation); every kernel takes either. Two kernels:

- ``chunked_scan``: blocks of L steps. Inside a chunk, one causal L x L decay matrix
  per channel, K[t, s, n] = a_n^(t-s) for s <= t (0 above the diagonal), applied in
  one einsum (the chunk's states as if it started from zero); between chunks the
  entering state is carried: step t of a chunk adds a^(t+1) h_in[c], and
  h_in[c+1] = (zero-start state at step L-1) + a^L h_in[c]. A few large kernels
  instead of T small ones: the way to go where launches are expensive (GPUs).
  With a time-varying decay the kernel is per batch row and chunk,
  K[t, s] = exp(A_t - A_s) with A_t = sum_{r<=t} log a_r inside the chunk (the
  differences stay <= 0, so nothing overflows, however small a gets).
- ``sequential_scan``: one fused multiply-add per time step into a preallocated
  output. The work is memory-bound, and this reads b and writes h exactly once.

``linear_scan``, the entry the model uses, wraps a kernel in an autograd Function
whose backward is the same recurrence run backwards in time (no T-step graph):

    g_t = dL/dh_t + a * g_{t+1}  (g_T = 0),   dL/db_t = g_t,   dL/dh0 = a * g_0,
    dL/da = sum over batch and t of g_t * h_{t-1}

(time-varying: g_t = dL/dh_t + a_{t+1} g_{t+1}, dL/da_t = g_t * h_{t-1}, dL/dh0 = a_0 g_0).

It picks ``sequential_scan`` on CPU and ``chunked_scan`` elsewhere (on a GPU the
loop would be T kernel launches; not measured here: no GPU). Measured on this
project's 2-core CPU, one thread (B 32, T 256, N 512, float32, forward + backward,
``benchmarks/train_speed.py --threads 1``): sequential with the hand-written backward
31 ms, the plain autograd loop 41 ms, chunked (L 32) 233 ms: its einsum needs
N-major transposes that cost more than the whole loop. Forward alone:
``torch._higher_order_ops.associative_scan`` (generic mode) 260 ms against 15 ms.

``reference_scan`` is the plain autograd loop kept beside them; tests check that all
agree in values and gradients. Everything runs in float32 or wider with autocast off:
in bfloat16 a decay of 0.999 rounds to 1.0 and a thousand-step memory never fades.

>>> a = torch.tensor([0.5, 1.0])
>>> b = torch.ones(1, 3, 2)
>>> linear_scan(a, b)[0]
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
KERNELS = ("auto", "sequential", "chunked")


def _check(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None) -> None:
    if b.dim() != 3 or a.shape not in (b.shape[-1:], b.shape):
        raise ValueError(f"scan expects a (N,) or (B, T, N) and b (B, T, N); got a {tuple(a.shape)}, b {tuple(b.shape)}")
    if h0 is not None and h0.shape != (b.shape[0], b.shape[2]):
        raise ValueError(f"scan expects h0 (B, N) = {(b.shape[0], b.shape[2])}; got {tuple(h0.shape)}")


def _wide(x: torch.Tensor) -> torch.Tensor:
    """float32, or float64 if given (gradcheck); half precision is widened."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def reference_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """All states (B, T, N), one time step at a time through autograd (slow, obviously right)."""
    _check(a, b, h0)
    with torch.autocast(b.device.type, enabled=False):
        a, b = _wide(a), _wide(b)
        h = torch.zeros_like(b[:, 0]) if h0 is None else _wide(h0)
        states = []
        for t, b_t in enumerate(b.unbind(1)):
            h = (a if a.dim() == 1 else a[:, t]) * h + b_t
            states.append(h)
        return torch.stack(states, dim=1)


def sequential_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None,
                    reverse: bool = False) -> torch.Tensor:
    """All states (B, T, N): a fused multiply-add per step, written in place (no autograd graph).

    ``reverse`` runs from t = T-1 down to 0 (h_t = a_t * h_{t+1} + b_t), as the backward pass needs.
    """
    out = torch.empty_like(b)
    h = torch.zeros_like(b[:, 0]) if h0 is None else h0
    # The per-step views come from one unbind each: at B x N = 32 x 144, three Python-level
    # index operations per step cost about as much as the multiply-add they feed.
    decays = a.unbind(1) if a.dim() == 3 else (a,) * b.shape[1]
    steps = list(zip(b.unbind(1), decays, out.unbind(1)))
    for b_t, a_t, out_t in reversed(steps) if reverse else steps:
        h = torch.addcmul(b_t, a_t, h, out=out_t)
    return out


def decay_kernel(a: torch.Tensor, length: int) -> torch.Tensor:
    """K (L, L, N): K[t, s] = a^(t-s) for s <= t, else 0."""
    steps = torch.arange(length, device=a.device)
    lags = steps[:, None] - steps[None, :]  # (L, L): t - s
    log_a = torch.log(a.clamp_min(_MIN_DECAY))  # (N,)
    # Masking the exponent (not the result) keeps exp() from overflowing above the diagonal.
    powers = torch.exp(lags.clamp_min(0)[..., None].to(a.dtype) * log_a)  # (L, L, N)
    return powers * (lags >= 0)[..., None]


def chunked_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None,
                 chunk_size: int = 32) -> torch.Tensor:
    """All states (B, T, N) in chunks of ``chunk_size`` steps (differentiable by autograd too)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    B, T, N = b.shape
    L = max(1, min(chunk_size, T))
    C = -(-T // L)
    if C * L != T:
        b = torch.nn.functional.pad(b, (0, 0, 0, C * L - T))  # zero inputs past the end change nothing before it
    b = b.view(B, C, L, N)  # (B, C, L, N)
    if a.dim() == 3:
        local, carry = _varying_chunks(a, b, T)
    else:
        K = decay_kernel(a, L)  # (L, L, N)
        local = torch.einsum("tsn,bcsn->bctn", K, b)  # (B, C, L, N): states from a zero start
        carry = (K[:, 0] * a).expand(B, C, L, N)  # a^(t+1), the same in every chunk (a view)
    h_in = torch.zeros(B, N, device=b.device, dtype=b.dtype) if h0 is None else h0
    entering = []
    for c in range(C):
        entering.append(h_in)
        h_in = local[:, c, -1] + carry[:, c, -1] * h_in
    states = local + carry * torch.stack(entering, dim=1)[:, :, None, :]  # (B, C, L, N)
    return states.reshape(B, C * L, N)[:, :T]  # (B, T, N)


def _varying_chunks(a: torch.Tensor, b: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For decays a (B, T, N) and inputs b (B, C, L, N): each chunk's states from a zero start
    and carry[t] = prod_{r<=t} a_r, the decay of the entering state (both (B, C, L, N))."""
    B, C, L, N = b.shape
    if C * L != T:
        a = torch.nn.functional.pad(a, (0, 0, 0, C * L - T), value=1.0)
    log_a = torch.log(a.clamp_min(_MIN_DECAY)).view(B, C, L, N).cumsum(2)  # (B, C, L, N): A_t
    lags = torch.arange(L, device=a.device)
    causal = (lags[:, None] >= lags[None, :])[..., None]  # (L, L, 1): s <= t
    # Masking the exponent keeps exp() from overflowing above the diagonal, as in decay_kernel.
    K = torch.exp((log_a[:, :, :, None] - log_a[:, :, None, :]).masked_fill(~causal, 0.0)) * causal  # (B, C, L, L, N)
    return torch.einsum("bctsn,bcsn->bctn", K, b), torch.exp(log_a)


def _run(kernel: str, a, b, h0, chunk_size: int, reverse: bool = False) -> torch.Tensor:
    if kernel == "sequential":
        return sequential_scan(a, b, h0, reverse)
    if reverse:
        return chunked_scan(a.flip(1) if a.dim() == 3 else a, b.flip(1), h0, chunk_size).flip(1)
    return chunked_scan(a, b, h0, chunk_size)


class _LinearScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, h0, chunk_size: int, kernel: str):
        states = _run(kernel, a, b, h0, chunk_size)
        ctx.save_for_backward(a, states, h0)
        ctx.chunk_size, ctx.kernel = chunk_size, kernel
        return states

    @staticmethod
    def backward(ctx, grad_states):
        a, states, h0 = ctx.saved_tensors
        varying = a.dim() == 3
        # The gradient flows backwards in time through the same recurrence; step t's
        # gradient reaches t-1 through a_t, so a time-varying decay is shifted one step.
        a_back = torch.nn.functional.pad(a[:, 1:], (0, 0, 0, 1)) if varying else a  # (B, T, N): a_{t+1}
        g = _run(ctx.kernel, a_back, grad_states.contiguous(), None, ctx.chunk_size, reverse=True)  # (B, T, N)
        grad_a = grad_h0 = None
        if ctx.needs_input_grad[0]:
            before = torch.nn.functional.pad(states[:, :-1], (0, 0, 1, 0)) if h0 is None else \
                torch.cat([h0[:, None], states[:, :-1]], dim=1)  # (B, T, N): h_{t-1}
            grad_a = g * before if varying else (g * before).sum((0, 1))
        if h0 is not None and ctx.needs_input_grad[2]:
            grad_h0 = (a[:, 0] if varying else a) * g[:, 0]
        return grad_a, g if ctx.needs_input_grad[1] else None, grad_h0, None, None


def linear_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None, chunk_size: int = 32,
                kernel: str = "auto") -> torch.Tensor:
    """All states (B, T, N) of h_t = a * h_{t-1} + b_t, differentiable in ``a``, ``b`` and ``h0``.

    ``a`` (N,) or (B, T, N) decays in [0, 1]; ``b`` (B, T, N) inputs; ``h0`` (B, N) the state before
    step 0 (zeros if None); ``out[:, -1]`` is the state to carry on with. T need not
    be a multiple of ``chunk_size``. ``kernel``: "sequential", "chunked" or "auto"
    (sequential on CPU, chunked elsewhere). The result is float32 (float64 if given).
    """
    _check(a, b, h0)
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel == "auto":
        kernel = "sequential" if b.device.type == "cpu" else "chunked"
    if b.shape[1] == 0:
        return _wide(b)
    with torch.autocast(b.device.type, enabled=False):
        dtype = torch.promote_types(b.dtype, torch.float32)
        h0 = None if h0 is None else h0.to(dtype)
        apply = _sequential_apply if kernel == "sequential" else _LinearScan.apply
        return apply(a.to(dtype).contiguous(), b.to(dtype).contiguous(), h0, chunk_size, kernel)


@torch.compiler.disable
def _sequential_apply(*args):
    """``_LinearScan.apply`` kept out of torch.compile's graph (``--compile``): traced, its T-step
    loop would unroll into a T-node graph, and each step is already one fused operation; the
    graph breaks around it and the elementwise work on either side is still fused."""
    return _LinearScan.apply(*args)
