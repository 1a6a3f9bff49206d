"""The chunked parallel scan agrees with the step-by-step reference (values and gradients)."""

import pytest
import torch

from babyssm.scan import chunked_scan, decay_kernel, reference_scan


def _inputs(T: int, seed: int, with_h0: bool):
    g = torch.Generator().manual_seed(seed)
    B, N = 3, 16
    a = torch.rand(N, generator=g)
    a[:4] = 1 - torch.rand(4, generator=g) * 1e-3  # memories of thousands of steps
    a[4] = 1.0
    a[5] = 0.0
    b = torch.randn(B, T, N, generator=g)
    h0 = torch.randn(B, N, generator=g) if with_h0 else None
    return a, b, h0


@pytest.mark.parametrize("T", [1, 7, 64, 100])
@pytest.mark.parametrize("chunk_size", [1, 8, 32])
@pytest.mark.parametrize("with_h0", [False, True])
def test_chunked_matches_reference(T, chunk_size, with_h0):
    a, b, h0 = _inputs(T, seed=T * 31 + chunk_size, with_h0=with_h0)
    fast = chunked_scan(a, b, h0, chunk_size=chunk_size)
    slow = reference_scan(a, b, h0)
    assert fast.shape == (3, T, 16)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("T", [7, 100])
def test_gradients_match_reference(T):
    a0, b0, h00 = _inputs(T, seed=7, with_h0=True)
    a0 = a0.clamp(1e-3, 1 - 1e-4)  # the reference's gradient wrt a is finite only inside (0, 1)
    weights = torch.randn(3, T, 16, generator=torch.Generator().manual_seed(1))
    grads = []
    for scan in (lambda a, b, h0: chunked_scan(a, b, h0, chunk_size=16), reference_scan):
        a, b, h0 = (t.clone().requires_grad_(True) for t in (a0, b0, h00))
        (scan(a, b, h0) * weights).sum().backward()
        grads.append((a.grad, b.grad, h0.grad))
    for fast, slow in zip(*grads):
        torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-4)


def test_state_carries_across_calls():
    a, b, _ = _inputs(50, seed=3, with_h0=False)
    whole = chunked_scan(a, b, chunk_size=8)
    first = chunked_scan(a, b[:, :21], chunk_size=8)
    rest = chunked_scan(a, b[:, 21:], first[:, -1], chunk_size=8)
    torch.testing.assert_close(torch.cat([first, rest], 1), whole, atol=1e-5, rtol=1e-5)


def test_known_values_and_kernel():
    a = torch.tensor([0.5])
    K = decay_kernel(a, 3)[..., 0]
    assert torch.equal(K, torch.tensor([[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.25, 0.5, 1.0]]))
    out = chunked_scan(a, torch.tensor([[[1.0], [0.0], [2.0], [0.0]]]), chunk_size=2)
    assert torch.allclose(out[0, :, 0], torch.tensor([1.0, 0.5, 2.25, 1.125]))


def test_bfloat16_inputs_and_autocast_keep_long_memories():
    a = torch.tensor([0.999])
    b = torch.zeros(1, 2000, 1, dtype=torch.bfloat16)
    b[0, 0, 0] = 1.0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = chunked_scan(a, b, chunk_size=32)
    assert out.dtype == torch.float32
    # a bfloat16 decay would round 0.999 to 1.0 and never forget
    assert abs(float(out[0, -1, 0]) - 0.999**1999) < 1e-4


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="a \\(N,\\) and b \\(B, T, N\\)"):
        chunked_scan(torch.rand(4), torch.rand(2, 5, 3))
    with pytest.raises(ValueError, match="h0"):
        chunked_scan(torch.rand(3), torch.rand(2, 5, 3), torch.rand(3, 3))
