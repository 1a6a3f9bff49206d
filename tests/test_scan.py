"""The scan kernels and the hand-written backward agree with the step-by-step autograd reference."""

import pytest
import torch

from babyssm.models.scan import chunked_scan, decay_kernel, linear_scan, reference_scan, sequential_scan

B, N = 3, 16


def _inputs(T: int, seed: int, with_h0: bool, dtype=torch.float32, varying: bool = False):
    """Decays (N,), or (B, T, N) if ``varying``, with the extremes 0 and 1 included."""
    g = torch.Generator().manual_seed(seed)
    shape = (B, T, N) if varying else (N,)
    a = torch.rand(shape, generator=g, dtype=dtype)
    a[..., :4] = 1 - torch.rand(a[..., :4].shape, generator=g, dtype=dtype) * 1e-3  # memories of thousands of steps
    a[..., 4] = 1.0
    a[..., 5] = 0.0
    if varying:  # word-rate level 3: hold (a = 1) except at some steps
        a[..., 6] = torch.where(torch.rand(B, T, generator=g) < 0.2, 0.5, 1.0).to(dtype)
    b = torch.randn(B, T, N, generator=g, dtype=dtype)
    h0 = torch.randn(B, N, generator=g, dtype=dtype) if with_h0 else None
    return a, b, h0


@pytest.mark.parametrize("T", [1, 7, 64, 100])
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("varying", [False, True])
def test_kernels_match_reference(T, with_h0, varying):
    a, b, h0 = _inputs(T, seed=T, with_h0=with_h0, varying=varying)
    slow = reference_scan(a, b, h0)
    assert slow.shape == (B, T, N)
    torch.testing.assert_close(sequential_scan(a, b, h0), slow, atol=1e-5, rtol=1e-5)
    for chunk_size in (1, 8, 32):
        torch.testing.assert_close(chunked_scan(a, b, h0, chunk_size), slow, atol=1e-5, rtol=1e-5)
    for kernel in ("auto", "sequential", "chunked"):
        torch.testing.assert_close(linear_scan(a, b, h0, 8, kernel), slow, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("T", [7, 100])
@pytest.mark.parametrize("kernel", ["sequential", "chunked"])
@pytest.mark.parametrize("varying", [False, True])
def test_gradients_match_reference(T, kernel, varying):
    a0, b0, h00 = _inputs(T, seed=7, with_h0=True, varying=varying)
    a0 = a0.clamp(1e-3, 1 - 1e-4)  # the reference's gradient wrt a is finite only inside (0, 1)
    weights = torch.randn(B, T, N, generator=torch.Generator().manual_seed(1))
    grads = []
    for scan in (lambda a, b, h0: linear_scan(a, b, h0, 16, kernel), reference_scan):
        a, b, h0 = (t.clone().requires_grad_(True) for t in (a0, b0, h00))
        (scan(a, b, h0) * weights).sum().backward()
        grads.append((a.grad, b.grad, h0.grad))
    for fast, slow in zip(*grads):
        torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kernel", ["sequential", "chunked"])
@pytest.mark.parametrize("varying", [False, True])
def test_gradcheck_float64(kernel, varying):
    a, b, h0 = _inputs(9, seed=5, with_h0=True, dtype=torch.float64, varying=varying)
    a = a.clamp(0.05, 0.95).requires_grad_(True)
    b.requires_grad_(True)
    h0.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b, h0: linear_scan(a, b, h0, 4, kernel), (a, b, h0))
    assert torch.autograd.gradcheck(lambda a, b: linear_scan(a, b, None, 4, kernel), (a, b))


@pytest.mark.parametrize("varying", [False, True])
def test_state_carries_across_calls(varying):
    a, b, _ = _inputs(50, seed=3, with_h0=False, varying=varying)
    a_first, a_rest = (a[:, :21], a[:, 21:]) if varying else (a, a)
    whole = linear_scan(a, b)
    first = linear_scan(a_first, b[:, :21])
    rest = linear_scan(a_rest, b[:, 21:], first[:, -1])
    torch.testing.assert_close(torch.cat([first, rest], 1), whole, atol=1e-5, rtol=1e-5)


def test_known_values_and_kernel():
    a = torch.tensor([0.5])
    K = decay_kernel(a, 3)[..., 0]
    assert torch.equal(K, torch.tensor([[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.25, 0.5, 1.0]]))
    b = torch.tensor([[[1.0], [0.0], [2.0], [0.0]]])
    expected = torch.tensor([1.0, 0.5, 2.25, 1.125])
    for kernel in ("sequential", "chunked"):
        assert torch.allclose(linear_scan(a, b, chunk_size=2, kernel=kernel)[0, :, 0], expected)


def test_bfloat16_inputs_and_autocast_keep_long_memories():
    a = torch.tensor([0.999])
    b = torch.zeros(1, 2000, 1, dtype=torch.bfloat16)
    b[0, 0, 0] = 1.0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for kernel in ("sequential", "chunked"):
            out = linear_scan(a, b, chunk_size=32, kernel=kernel)
            assert out.dtype == torch.float32
            # a bfloat16 decay would round 0.999 to 1.0 and never forget
            assert abs(float(out[0, -1, 0]) - 0.999**1999) < 1e-4


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="a \\(N,\\) or \\(B, T, N\\) and b \\(B, T, N\\)"):
        linear_scan(torch.rand(4), torch.rand(2, 5, 3))
    with pytest.raises(ValueError, match="got a \\(2, 4, 3\\)"):
        linear_scan(torch.rand(2, 4, 3), torch.rand(2, 5, 3))
    with pytest.raises(ValueError, match="h0"):
        linear_scan(torch.rand(3), torch.rand(2, 5, 3), torch.rand(3, 3))
    with pytest.raises(ValueError, match="kernel"):
        linear_scan(torch.rand(3), torch.rand(2, 5, 3), kernel="fft")
