"""The three levels of the hierarchical SSM, each with its own objective.

Symbols: B batch, T time, V vocabulary (128), D d_model (code width), N d_state
(state width), R rank, c a symbol, t a time step, sigma a noise level, tau a temperature.

Level 1, ``CharacterEncoder`` (diffusion character encoder; W is V x D):
    E_c = (W_c - mean_c' W_c') / ||W_c - mean_c' W_c'||        (``normalise_codes``)
Every code has norm exactly 1, so no norm can explode or shrink away, and the
centred rows sum to zero, so they cannot all point one way: the codes can never all
be equal, whatever W does. Objective (CDCD, Dieleman et al. 2022, score
interpolation) on a window of characters:
    x0_t = E[c_t],   sigma_t ~ log-uniform(sigma_min, sigma_max),   x_t = x0_t + sigma_t eps
    logits_tc = -||x_t - E_c||^2 / (2 sigma_t^2) + prior_scale <E_c, E[c_{t-1}] + E[c_{t+1}]>
    x0_hat_t = softmax(logits_t) @ sg(E),   loss = mean_t ||x0_hat_t - sg(x0_t)||^2
The denoiser has no parameters of its own: it is the posterior over the V codes
given the noisy vector and a prior from the clean neighbours, so characters that
share contexts are drawn to share geometry. sg is stop-gradient: the MSE is lowered
only by making the posterior right (codes that noise cannot confuse, contexts that
predict the character), never by moving the target codes onto each other. Without
it, MSE is lowered by partial collapse: on the seed corpus the letters shrank into
a ball of radius ~0.1 while the unused control codes kept the spread. Confusing two
codes costs their squared distance, so the map keeps confusable characters close
(geometry) and separates what context cannot tell apart. Guessing 0 scores about 1.

Level 2, ``TinySSM`` (six low-rank matrices, the decay logits, one log-temperature):
    x_t = sqrt(D) E[c_t]                       (frozen codes, rescaled to unit-size entries)
    u_t = x_t W_in1 W_in2                      (D -> R -> N)
    h_t = a * h_{t-1} + (1 - a) * u_t,  a = sigmoid(decay_logit)   (``babyssm.models.scan``)
    z_t = gelu(h_t W_c + x_t W_d) * sigmoid(h_t W_g)              (N, D -> R)
    y_t = z_t W_out / sqrt(D)                  (R -> D: the predicted code of c_{t+1})
Since x_t is one of V codes, x_t W_in1 W_in2 and x_t W_d are rows of V-row tables:
the parallel forward computes the tables once and looks rows up.
Soft nearest neighbour (``soft_nn_logits``): p(c_{t+1} = c) = softmax_c(-||y_t - E_c||^2 / tau),
tau = exp(log_tau): a proper distribution, trained by cross-entropy; the term ||y_t||^2
is the same for every c and is left out of the logits.

Level 3, ``MainSSM`` (the seed recipe: N x N, N x D, N x D matrices; vectors b_in,
decay_logit, b_out, b_gate):
    u_t = rms(h_t)                             (level 2's state, RMS-normalised, no parameters)
    v_t = u_t W_in + b_in
    s_t = a3 * s_{t-1} + (1 - a3) * v_t,  a3 = sigmoid(decay_logit)
    y3_t = (gelu(s_t) W_out + b_out) / sqrt(D)
    g_t = sigmoid(s_t W_gate + b_gate)         (b_gate starts negative: level 3 starts by yielding)
    y_t = y2_t + g_t * y3_t                    (the combined prediction: a gated correction)
The model's distribution is always the soft nearest-neighbour distribution of the
combined y_t, with level 2's (frozen) tau. Where g_t -> 0 level 3 yields to level 2.
Since logits_c = <y_t, 2 E_c / tau> + const, the correction g_t * y3_t adds
<g_t y3_t, 2 E_c / tau> to level 2's logits: a residual in logit space (a product of
experts with level 2), and the codes span all V logit directions (D >= V - 1).
Why a correction and not the interpolation y2 + g (y3 - y2): level 2 learns to
express confidence through the length of y2 (the ||y||^2 term cancels in the softmax,
so a long y2 is a sharp distribution, |y2| ~ 15-25 after training), and to take over
by interpolation level 3 must first reproduce that scale. Measured on the tiny preset
(cbt text, 1,600 stage-3 steps of 16 x 256 from a level 2 at 2.898 dev bpc): 2.823 bpc
by interpolation, 2.766 by correction.

Level 3 variants (``ModelConfig`` switches; docs/DESIGN.md measures each):
- ``level3_input="features"``: u_t = rms(z_t), level 2's gated non-linear activations
  (R wide, W_in is R x N) instead of its state. The state h_t is a linear filter of the
  characters, so a recurrence over it only filters them again; z_t is a non-linear
  function of them, which makes levels 2-3 a two-layer (deep) SSM.
- ``level3_decay="selective"``: a3_t = sigmoid(decay_logit + u_t W_a) (W_a in_width x N,
  starting at 0: the fixed decays), so level 3 decides per character what to keep
  and what to forget (Mamba's selection, Gu & Dao 2023; minGRU's gate, Feng et al. 2024):
  s_t = a3_t * s_{t-1} + (1 - a3_t) * v_t.
- ``level3_rate="word"``: s_t changes only where c_t is a space or newline, i.e. once
  per word, when h_t has read the whole word (a3_t = 1 and no input elsewhere); the
  state thus counts words, not characters (SpaceByte, Slagle 2024; hierarchical
  multiscale RNNs, Chung et al. 2017). It is fed back into the character stream: the
  readout sees r_t = s_t + v_t, the words so far plus the current character, in place
  of s_t in y3_t and g_t.

Every matrix is initialised with std 1/sqrt(fan-in) and sees inputs with entries of
about unit size (hence the sqrt(D) rescaling of the unit-norm codes in and out).
Decays start with time constants log-spaced from ``decay_min_timescale`` to
``decay_max_timescale`` characters: a_n = exp(-1 / timescale_n).

Padding (``padded`` (B, T, 1), True at a padded position; the Hugging Face export's
``attention_mask``): a padded position gives both recurrences no input, and where level
3's decay varies in time it is 1 there as well (a padded position is never a word
boundary), so it leaves level 3's state untouched. Left padding thus leaves the states
at zero until the first real token: a left-padded row scores exactly like the unpadded
one (right padding never reaches a real position in a causal model anyway).

This module and the ones it imports (``config``, ``scan``, by relative import) use only
torch and the standard library: ``babyssm export`` copies them verbatim beside the
Hugging Face remote code (``babyssm/hf/modeling_babyssm.py``), so an exported model runs
these very equations.

>>> from .config import ModelConfig
>>> enc = CharacterEncoder(ModelConfig(d_model=64, d_state=64, rank=32))
>>> E = enc.codes().detach()
>>> E.shape, bool(torch.allclose(E.norm(dim=1), torch.ones(128)))
(torch.Size([128, 64]), True)
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig
from .scan import linear_scan


def normalise_codes(weight: torch.Tensor) -> torch.Tensor:
    """E (V, D): ``weight`` centred over symbols, each row scaled to norm 1."""
    centred = weight - weight.mean(0, keepdim=True)  # (V, D)
    # The clamp only guards a row equal to the mean, which gradient steps cannot reach:
    # the gradient through a row's normalisation is orthogonal to it, so it never shrinks it.
    return centred / centred.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def soft_nn_logits(y: torch.Tensor, codes: torch.Tensor, log_tau: torch.Tensor) -> torch.Tensor:
    """Logits (..., V) of softmax_c(-||y - E_c||^2 / tau), up to a per-position constant."""
    with torch.autocast(y.device.type, enabled=False):  # a V-wide matmul: keep distances in float32
        inv_tau = torch.exp(-log_tau.float())
        codes = codes.float()
        # The factors go on the (V, D) codes, not on the (B, T, ...) activations: cheaper.
        return y.float() @ (codes * (2 * inv_tau)).T - (codes**2).sum(-1) * inv_tau


def rms_norm(h: torch.Tensor, eps: float) -> torch.Tensor:
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)


def decay_logits_init(cfg: ModelConfig) -> torch.Tensor:
    """(N,) logits whose decays a = exp(-1/timescale) span the configured time constants."""
    timescales = torch.logspace(
        math.log10(cfg.decay_min_timescale), math.log10(cfg.decay_max_timescale), cfg.d_state
    )
    a = torch.exp(-1.0 / timescales)
    return torch.log(a) - torch.log1p(-a)


def _matrix(fan_in: int, fan_out: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(fan_in, fan_out) / math.sqrt(fan_in))


class CharacterEncoder(nn.Module):
    """Level 1: the normalised character code map E and its diffusion objective."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.weight = nn.Parameter(torch.randn(cfg.vocab_size, cfg.d_model))  # W; used only as E

    def codes(self) -> torch.Tensor:
        return normalise_codes(self.weight)

    def denoise(self, noisy: torch.Tensor, sigma: torch.Tensor, idx: torch.Tensor, codes: torch.Tensor):
        """Posterior logits (B, T, V) over the clean code and its mean x0_hat (B, T, D)."""
        clean = codes[idx]  # (B, T, D)
        # Neighbours' clean codes; zeros past either end of the window.
        context = F.pad(clean[:, :-1], (0, 0, 1, 0)) + F.pad(clean[:, 1:], (0, 0, 0, 1))  # (B, T, D)
        likelihood = (noisy @ codes.T - 0.5 * (codes**2).sum(-1)) / sigma**2  # (B, T, V)
        logits = likelihood + self.cfg.diffusion_prior_scale * (context @ codes.T)
        return logits, logits.softmax(-1) @ codes

    def sample_sigma(self, shape: tuple[int, ...], device, generator: torch.Generator | None = None):
        lo, hi = math.log(self.cfg.diffusion_sigma_min), math.log(self.cfg.diffusion_sigma_max)
        u = torch.rand(shape, device=device, generator=generator)
        return torch.exp(lo + (hi - lo) * u)

    def diffusion_loss(self, idx: torch.Tensor, sigma: torch.Tensor | None = None,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Denoising MSE on windows ``idx`` (B, T); ``sigma`` (B, T, 1) fixed or sampled per position."""
        with torch.autocast(idx.device.type, enabled=False):  # 1/sigma^2 up to 400: keep float32
            codes = self.codes()
            clean = codes[idx]  # (B, T, D)
            if sigma is None:
                sigma = self.sample_sigma((*idx.shape, 1), idx.device, generator)
            noise = torch.randn(clean.shape, device=idx.device, generator=generator)
            logits, _ = self.denoise(clean + sigma * noise, sigma, idx, codes)
            x0_hat = logits.softmax(-1) @ codes.detach()  # (B, T, D); sg(E): see the module docstring
            loss = (x0_hat - clean.detach()).pow(2).sum(-1).mean()
            accuracy = (logits.argmax(-1) == idx).float().mean()
        return loss, {"mse": loss.detach(), "denoise_acc": accuracy}


class TinySSM(nn.Module):
    """Level 2: a low-rank linear recurrence over the codes that predicts the next code."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D, N, R = cfg.d_model, cfg.d_state, cfg.rank
        self.cfg = cfg
        self.w_in1 = _matrix(D, R)
        self.w_in2 = _matrix(R, N)
        self.decay_logit = nn.Parameter(decay_logits_init(cfg))
        self.w_c = _matrix(N, R)
        self.w_d = _matrix(D, R)
        self.w_g = _matrix(N, R)
        self.w_out = _matrix(R, D)
        self.log_tau = nn.Parameter(torch.tensor(cfg.init_log_tau))

    def _output(self, h: torch.Tensor, x_d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = F.gelu(h @ self.w_c + x_d) * torch.sigmoid(h @ self.w_g)
        return z @ (self.w_out / math.sqrt(self.cfg.d_model)), z  # scaling the (R, D) weight is cheaper than y

    def forward(self, idx: torch.Tensor, codes: torch.Tensor, h0: torch.Tensor | None = None,
                padded: torch.Tensor | None = None, kernel: str = "auto"):
        """Predictions y (B, T, D), states h (B, T, N) and activations z (B, T, R) for ``idx`` (B, T);
        ``padded`` (B, T, 1), True at padding, gives those positions no input (module docstring)."""
        x = codes * math.sqrt(self.cfg.d_model)  # (V, D)
        a = torch.sigmoid(self.decay_logit)
        u_table = x @ self.w_in1 @ self.w_in2 * (1 - a)  # (V, N): rows of (1 - a) * u
        b = F.embedding(idx, u_table)  # (B, T, N)
        if padded is not None:
            b = b.masked_fill(padded, 0.0)
        h = linear_scan(a, b, h0, self.cfg.chunk_size, kernel)  # (B, T, N)
        y, z = self._output(h, F.embedding(idx, x @ self.w_d))
        return y, h, z

    def step(self, idx_t: torch.Tensor, codes: torch.Tensor, h: torch.Tensor):
        """One character ``idx_t`` (B,): prediction y (B, D), the new state (B, N), activations z (B, R)."""
        x = codes[idx_t] * math.sqrt(self.cfg.d_model)  # (B, D)
        a = torch.sigmoid(self.decay_logit)
        h = a * h + (1 - a) * (x @ self.w_in1 @ self.w_in2).float()
        y, z = self._output(h, x @ self.w_d)
        return y, h, z


WORD_BOUNDARY_IDS = (ord(" "), ord("\n"))  # a symbol's id is its ASCII code (babyssm.data.vocab)


def word_boundaries(idx: torch.Tensor) -> torch.Tensor:
    """True (same shape as ``idx``) where the symbol ends a word: a space or a newline."""
    return (idx == WORD_BOUNDARY_IDS[0]) | (idx == WORD_BOUNDARY_IDS[1])


class MainSSM(nn.Module):
    """Level 3: a recurrence over level 2's state or activations, gated into its prediction."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D, N = cfg.d_model, cfg.d_state
        self.cfg = cfg
        width = self.input_width(cfg)
        self.w_in = _matrix(width, N)
        self.b_in = nn.Parameter(torch.zeros(N))
        self.decay_logit = nn.Parameter(decay_logits_init(cfg))
        if cfg.level3_decay == "selective":
            self.w_decay = nn.Parameter(torch.zeros(width, N))  # starts as the fixed decays
        self.w_out = _matrix(N, D)
        self.b_out = nn.Parameter(torch.zeros(D))
        self.w_gate = _matrix(N, D)
        self.b_gate = nn.Parameter(torch.full((D,), cfg.gate_bias_init))

    @staticmethod
    def input_width(cfg: ModelConfig) -> int:
        return cfg.rank if cfg.level3_input == "features" else cfg.d_state

    def _inputs(self, h2: torch.Tensor, z2: torch.Tensor, idx: torch.Tensor, padded: torch.Tensor | None = None):
        """The recurrence's decay a3 ((N,) or (..., N)), input b = (1 - a3) v and v itself."""
        u = rms_norm(z2 if self.cfg.level3_input == "features" else h2, self.cfg.rms_eps)
        v = u @ self.w_in + self.b_in  # (..., N)
        if self.cfg.level3_decay == "selective":
            a = torch.sigmoid(self.decay_logit + u @ self.w_decay)  # (..., N)
        else:
            a = torch.sigmoid(self.decay_logit)  # (N,)
        held = padded  # (..., 1): True where the state must not move
        if self.cfg.level3_rate == "word":
            between = ~word_boundaries(idx)[..., None]  # (..., 1): hold between words
            held = between if held is None else held | between
        b = (1 - a) * v
        if held is None:
            return a, b, v
        if a.dim() == v.dim() or self.cfg.level3_rate == "word":
            # A time-varying decay is 1 where the state holds. A fixed one stays (N,) for the
            # faster kernels: left padding precedes every real token, so s is still 0 there.
            a = torch.where(held, torch.ones_like(v), a)  # (..., N)
        return a, b.masked_fill(held, 0.0), v

    def _combine(self, s: torch.Tensor, v: torch.Tensor, y2: torch.Tensor):
        r = s + v if self.cfg.level3_rate == "word" else s
        scale = 1 / math.sqrt(self.cfg.d_model)
        y3 = F.gelu(r) @ (self.w_out * scale) + self.b_out * scale
        gate = torch.sigmoid(r @ self.w_gate + self.b_gate)
        return y2 + gate * y3, gate

    def forward(self, h2: torch.Tensor, z2: torch.Tensor, y2: torch.Tensor, idx: torch.Tensor,
                s0: torch.Tensor | None = None, padded: torch.Tensor | None = None, kernel: str = "auto"):
        """Combined prediction y (B, T, D), gate (B, T, D) and states s (B, T, N), from level 2's
        states h2 (B, T, N), activations z2 (B, T, R), prediction y2 (B, T, D) and symbols idx (B, T)."""
        a, b, v = self._inputs(h2, z2, idx, padded)
        s = linear_scan(a, b, s0, self.cfg.chunk_size, kernel)  # (B, T, N)
        y, gate = self._combine(s, v, y2)
        return y, gate, s

    def step(self, h2: torch.Tensor, z2: torch.Tensor, y2: torch.Tensor, idx_t: torch.Tensor, s: torch.Tensor):
        """One step from level 2's state h2 (B, N), activations z2 (B, R), prediction y2 (B, D)."""
        a, b, v = self._inputs(h2, z2, idx_t)
        s = a * s + b.float()
        y, gate = self._combine(s, v, y2)
        return y, gate, s


State = tuple[torch.Tensor, torch.Tensor]  # (h2 (B, N), s3 (B, N))


class HierarchicalLevels:
    """The three levels composed: the forward pass of every wrapper of the model.

    A mixin for an ``nn.Module`` (``babyssm.models.hierarchical.HierarchicalSSM``, and the
    Hugging Face remote code of an export): ``build_levels`` adds ``level1``..``level3``
    (so the weights keep the names ``level1.weight``, ``level2.w_in1``, ...), ``predict``
    runs them over a sequence and ``step`` over one character. ``levels`` 2 is level 2
    alone, 3 adds level 3's gated correction; with 2 only h2 advances.
    """

    level1: CharacterEncoder
    level2: TinySSM
    level3: MainSSM

    def build_levels(self, cfg: ModelConfig) -> None:
        self.level1 = CharacterEncoder(cfg)
        self.level2 = TinySSM(cfg)
        self.level3 = MainSSM(cfg)

    def predict(self, idx: torch.Tensor, state: State | None = None, levels: int = 3,
                padded: torch.Tensor | None = None, kernel: str = "auto"):
        """Predicted codes y (B, T, D), the codes E (V, D), the state after the last position and
        level 3's gate (B, T, D) (None for ``levels`` 2); ``padded`` (B, T, 1) as in the docstring."""
        codes = self.level1.codes()
        h2_0, s3_0 = state if state is not None else (None, None)
        y, h2, z2 = self.level2(idx, codes, h2_0, padded, kernel)
        gate, s3_last = None, s3_0
        if levels == 3:
            y, gate, s3 = self.level3(h2, z2, y, idx, s3_0, padded, kernel)
            s3_last = s3[:, -1]
        if s3_last is None:
            s3_last = torch.zeros_like(h2[:, -1])
        return y, codes, (h2[:, -1], s3_last), gate

    def logits(self, y: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Next-symbol logits (..., V) of predicted codes y: soft nearest neighbour at level 2's tau."""
        return soft_nn_logits(y, codes, self.level2.log_tau)

    def step_levels(self, idx_t: torch.Tensor, state: State, levels: int = 3):
        """Logits (B, V) after one character ``idx_t`` (B,) and the new state."""
        h2, s3 = state
        codes = self.level1.codes()
        y, h2, z2 = self.level2.step(idx_t, codes, h2)
        if levels == 3:
            y, _, s3 = self.level3.step(h2, z2, y, idx_t, s3)
        return self.logits(y, codes), (h2, s3)
