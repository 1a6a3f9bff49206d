"""The hierarchical SSM for Hugging Face ``transformers``: the remote code of an exported model.

``babyssm export`` copies this file verbatim into the exported folder as
``modeling_babyssm.py`` and names its classes in ``config.json``'s ``auto_map``, so that

    AutoModelForCausalLM.from_pretrained(HF_DIR, trust_remote_code=True)

works on a machine without babyssm (the BabyLM evaluation pipeline's). It therefore
imports only torch and transformers, never babyssm, and re-implements the forward
pass of ``babyssm.models.hierarchical.HierarchicalSSM`` (equations in ``babyssm.models.levels``); the
weights keep babyssm's names (``level1.weight``, ``level2.w_in1``, ...), so the export
copies the state dict unchanged. It loads under transformers 4.51.3 (the BabyLM
2025 pipeline's pin) and 5.x; tests check both against babyssm's own scores.

Symbols: B batch, T time (tokens = characters), V vocabulary (128), D d_model,
N d_state, R rank, L chunk_size, a a per-channel decay, E the (V, D) character codes,
c_t the input symbol at step t.

Forward (``levels`` 2: level 2 alone; 3: with level 3's gated correction):

    E = normalise(W)                                   level 1: unit-norm centred codes
    h_t = a2 h_{t-1} + (1 - a2) (x_t W_in1 W_in2)      x_t = sqrt(D) E[c_t]
    z_t = gelu(h_t W_c + x_t W_d) * sigmoid(h_t W_g)   (R wide)
    y2_t = z_t W_out / sqrt(D)
    u_t = rms(h_t)  (level3_input "state")  or  rms(z_t)  ("features"; W_in is then R x N)
    v_t = u_t W_in + b_in
    a3_t = sigmoid(decay_logit)  (level3_decay "fixed")  or  sigmoid(decay_logit + u_t W_decay)  ("selective")
    s_t = a3_t s_{t-1} + (1 - a3_t) v_t     (level3_rate "char": at every step;
                                             "word": where c_t is a space (32) or newline (10),
                                             s_t = s_{t-1} elsewhere: a3_t = 1, no input)
    r_t = s_t  ("char")  or  s_t + v_t  ("word")
    y_t = y2_t + sigmoid(r_t W_gate + b_gate) * (gelu(r_t) W_out + b_out) / sqrt(D)
    logits_t = -||y_t - E_c||^2 / tau    (soft nearest neighbour, the ||y||^2 term dropped)

The three level-3 switches (``LEVEL3_SWITCHES``, seed value first) are babyssm's
``ModelConfig`` fields of the same names; ``babyssm export`` refuses any value this
file does not list, and an export written before they existed loads with the seed values.

Both recurrences run in float32 through ``linear_scan``: a plain loop on CPU (the
same fused multiply-add as babyssm's CPU kernel), blocks of L steps on a GPU
(``chunked_scan``, a few large kernels instead of T small ones); a test checks
that they agree. The decay is (N,) or, for a selective or word-rate level 3,
(B, T, N). ``attention_mask`` zeroes the recurrences' inputs at padded positions,
and where level 3's decay varies in time it is 1 there as well (a padded position
is never a word boundary), so a padded position leaves level 3's state untouched.
Left padding thus leaves the states at zero until the first real token: a
left-padded row scores exactly like the unpadded one (right padding never reaches
a real position in a causal model anyway).

Generation: ``forward`` returns ``ssm_state``, the two recurrent states after the
last position together with the ids (and mask) that produced them. The state is
a function of those ids alone, so ``prepare_inputs_for_generation`` reuses it
whenever the new ``input_ids`` start with exactly those ids and feeds only the
new tokens; otherwise (beam reordering, a new prompt) it recomputes from the
start. That is exact whatever the decoding method, and independent of the cache
classes, which differ between transformers versions. ``BabySSMModel`` (the
``AutoModel`` entry, for fine-tuning heads) returns the combined prediction y
(B, T, D) as ``last_hidden_state``.

>>> config = BabySSMConfig(d_model=8, d_state=8, rank=4)
>>> model = BabySSMForCausalLM(config).eval()
>>> out = model(torch.tensor([[0, 72, 105]]))
>>> tuple(out.logits.shape), tuple(out.ssm_state.h2.shape)
((1, 3, 128), (1, 8))

A word-rate level 3 holds its state between words: "Hi" moves it only at the space.

>>> config = BabySSMConfig(d_model=8, d_state=8, rank=4, level3_input="features", level3_rate="word")
>>> model = BabySSMForCausalLM(config).eval()
>>> tuple(model.level3.w_in.shape)  # R x N: level 3 reads level 2's activations z
(4, 8)
>>> s = [model(torch.tensor([[0, 72, 105, 32][:t]])).ssm_state.s3 for t in (1, 3, 4)]
>>> bool((s[0] == 0).all()), torch.equal(s[0], s[1]), torch.equal(s[1], s[2])
(True, True, False)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput
from transformers.utils import ModelOutput

LEVEL3_SWITCHES = {  # config attribute -> the values this file implements, the seed's first
    "level3_input": ("state", "features"),
    "level3_decay": ("fixed", "selective"),
    "level3_rate": ("char", "word"),
}
WORD_BOUNDARY_IDS = (32, 10)  # space, newline: where a word-rate level 3 moves


class BabySSMConfig(PretrainedConfig):
    model_type = "babyssm"
    attribute_map = {"hidden_size": "d_model"}  # what fine-tuning heads read

    def __init__(self, vocab_size: int = 128, d_model: int = 512, d_state: int = 512, rank: int = 256,
                 chunk_size: int = 32, rms_eps: float = 1e-6, levels: int = 3, scan_kernel: str = "auto",
                 level3_input: str = "state", level3_decay: str = "fixed", level3_rate: str = "char",
                 use_cache: bool = True, bos_token_id: int = 0, eos_token_id: int = 3, pad_token_id: int = 4, **kwargs):
        switches = {"level3_input": level3_input, "level3_decay": level3_decay, "level3_rate": level3_rate}
        for name, value in switches.items():
            if value not in LEVEL3_SWITCHES[name]:
                raise ValueError(f"BabySSMConfig.{name} must be one of {LEVEL3_SWITCHES[name]}, got {value!r}: "
                                 "this modeling file does not implement it")
        self.vocab_size = vocab_size  # V: symbols, id = 7-bit ASCII code, 0 = BOS
        self.d_model = d_model  # D: width of a character code and of a prediction
        self.d_state = d_state  # N: width of both recurrent states
        self.rank = rank  # R: inner width of level 2's low-rank factors
        self.chunk_size = chunk_size  # L: steps per block of the chunked scan
        self.rms_eps = rms_eps  # floor inside level 3's RMS norm of its input u
        self.levels = levels  # 2: level 2 alone; 3: with level 3 (once stage 3 is trained)
        self.scan_kernel = scan_kernel  # "auto" (loop on CPU, chunks on GPU), "sequential", "chunked"
        self.level3_input = level3_input  # level 3 reads level 2's state h ("state") or activations z ("features")
        self.level3_decay = level3_decay  # level 3's decays: constants ("fixed") or input-dependent ("selective")
        self.level3_rate = level3_rate  # level 3 moves every character ("char") or at word boundaries ("word")
        self.use_cache = use_cache  # return ssm_state, which generation reuses
        kwargs.setdefault("tie_word_embeddings", False)  # the logits reuse E, but no matrix is tied
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id, **kwargs)


@dataclass
class SSMState:
    """Both recurrent states after reading ``ids`` (B, T) under ``mask`` (B, T; 1 = real token)."""

    h2: torch.Tensor  # (B, N)
    s3: torch.Tensor  # (B, N)
    ids: torch.Tensor  # (B, T)
    mask: torch.Tensor

    def continues(self, input_ids: torch.Tensor, mask: torch.Tensor | None) -> bool:
        """True when ``input_ids`` extends ``ids`` (same rows, same mask): the state is theirs."""
        T = self.ids.shape[1]
        if input_ids.shape[0] != self.ids.shape[0] or input_ids.shape[1] <= T:
            return False
        if not torch.equal(input_ids[:, :T], self.ids):
            return False
        new = mask[:, :T].long() if mask is not None else torch.ones_like(self.ids)
        return torch.equal(self.mask, new)


@dataclass
class BabySSMCausalLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    ssm_state: SSMState | None = None


def sequential_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """All states (B, T, N) of h_t = a_t * h_{t-1} + b_t, one step at a time; ``a`` (N,) or (B, T, N)."""
    states, h = [], h0
    for t in range(b.shape[1]):
        h = torch.addcmul(b[:, t], a[:, t] if a.dim() == 3 else a, h)
        states.append(h)
    return torch.stack(states, dim=1)


def chunked_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """The same states in blocks of L steps: a causal (L, L, N) decay kernel inside a block
    (K[t, s] = a^(t-s); per row and block, exp(A_t - A_s) with A_t = sum_{r<=t} log a_r, when
    the decay varies in time), the entering state carried from block to block."""
    B, T, N = b.shape
    L = max(1, min(chunk_size, T))
    C = -(-T // L)
    b = F.pad(b, (0, 0, 0, C * L - T)).view(B, C, L, N)  # zero inputs past the end change nothing before it
    steps = torch.arange(L, device=b.device)
    causal = (steps[:, None] >= steps[None, :])[..., None]  # (L, L, 1): s <= t
    if a.dim() == 3:
        a = F.pad(a, (0, 0, 0, C * L - T), value=1.0)  # (B, C * L, N)
        log_a = torch.log(a.clamp_min(1e-30)).view(B, C, L, N).cumsum(2)  # (B, C, L, N): A_t
        # K (B, C, L, L, N). A_t - A_s <= 0 below the diagonal; masking the exponent above it keeps exp() finite.
        K = torch.exp((log_a[:, :, :, None] - log_a[:, :, None, :]).masked_fill(~causal, 0.0)) * causal
        local = torch.einsum("bctsn,bcsn->bctn", K, b)  # (B, C, L, N): from a zero start
        carry = torch.exp(log_a)  # (B, C, L, N): prod_{r<=t} a_r inside the block
    else:
        lags = (steps[:, None] - steps[None, :]).clamp_min(0)[..., None].to(a.dtype)  # (L, L, 1): t - s
        K = torch.exp(lags * torch.log(a.clamp_min(1e-30))) * causal  # (L, L, N)
        local = torch.einsum("tsn,bcsn->bctn", K, b)  # (B, C, L, N): from a zero start
        carry = (K[:, 0] * a).expand(B, C, L, N)  # a^(t+1)
    entering, h = [], h0
    for c in range(C):
        entering.append(h)
        h = local[:, c, -1] + carry[:, c, -1] * h
    states = local + carry * torch.stack(entering, dim=1)[:, :, None, :]  # (B, C, L, N)
    return states.reshape(B, C * L, N)[:, :T]  # (B, T, N)


def linear_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor, chunk_size: int, kernel: str) -> torch.Tensor:
    if kernel == "chunked" or (kernel == "auto" and b.device.type != "cpu"):
        return chunked_scan(a, b, h0, chunk_size)
    return sequential_scan(a, b, h0)


def _matrix(fan_in: int, fan_out: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(fan_in, fan_out) / math.sqrt(fan_in))


def _decays(cfg: BabySSMConfig) -> nn.Parameter:
    """babyssm's initial decay logits (time constants 1 .. 1000 characters); loading overwrites them."""
    a = torch.exp(-1.0 / torch.logspace(0.0, 3.0, cfg.d_state))
    return nn.Parameter(torch.log(a) - torch.log1p(-a))


class BabySSMPreTrainedModel(PreTrainedModel):
    config_class = BabySSMConfig
    base_model_prefix = "babyssm"  # no module has this name: every class loads the same flat keys
    main_input_name = "input_ids"

    def __init__(self, config: BabySSMConfig):
        super().__init__(config)
        D, N, R, V = config.d_model, config.d_state, config.rank, config.vocab_size
        self.level1 = nn.Module()
        self.level1.weight = nn.Parameter(torch.randn(V, D))
        self.level2 = nn.Module()
        for name, shape in (("w_in1", (D, R)), ("w_in2", (R, N)), ("w_c", (N, R)), ("w_d", (D, R)),
                            ("w_g", (N, R)), ("w_out", (R, D))):
            setattr(self.level2, name, _matrix(*shape))
        self.level2.decay_logit = _decays(config)
        self.level2.log_tau = nn.Parameter(torch.zeros(()))
        self.level3 = nn.Module()
        width = R if config.level3_input == "features" else N  # of level 3's input u
        self.level3.w_in, self.level3.w_out, self.level3.w_gate = _matrix(width, N), _matrix(N, D), _matrix(N, D)
        if config.level3_decay == "selective":
            self.level3.w_decay = nn.Parameter(torch.zeros(width, N))
        self.level3.b_in, self.level3.b_out = nn.Parameter(torch.zeros(N)), nn.Parameter(torch.zeros(D))
        self.level3.decay_logit = _decays(config)
        self.level3.b_gate = nn.Parameter(torch.full((D,), -2.0))
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Nothing to do: ``__init__`` sets babyssm's initial values and loading replaces them."""

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the recurrent state travels as ``ssm_state``, not in a key-value cache

    def codes(self) -> torch.Tensor:
        """E (V, D): level 1's weight centred over symbols, each row scaled to norm 1."""
        w = self.level1.weight.float()
        centred = w - w.mean(0, keepdim=True)
        return centred / centred.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def predict(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                state: SSMState | None = None):
        """Predicted codes y (B, T, D), codes E and the state after the last position."""
        cfg, p2 = self.config, self.level2
        B, T = input_ids.shape
        padded = None
        if attention_mask is not None and not bool(attention_mask[:, -T:].all()):
            padded = attention_mask[:, -T:, None] == 0  # (B, T, 1); generation passes the whole history's mask
        codes = self.codes()
        x = codes * math.sqrt(cfg.d_model)  # (V, D)
        a2 = torch.sigmoid(p2.decay_logit.float())
        u = F.embedding(input_ids, x @ p2.w_in1.float() @ p2.w_in2.float() * (1 - a2))  # (B, T, N)
        zeros = torch.zeros(B, cfg.d_state, device=input_ids.device)
        h = linear_scan(a2, u if padded is None else u.masked_fill(padded, 0.0), state.h2 if state else zeros,
                        cfg.chunk_size, cfg.scan_kernel)  # (B, T, N)
        x_d = F.embedding(input_ids, x @ p2.w_d.float())  # (B, T, R)
        z = F.gelu(h @ p2.w_c.float() + x_d) * torch.sigmoid(h @ p2.w_g.float())  # (B, T, R)
        y = z @ (p2.w_out.float() / math.sqrt(cfg.d_model))  # (B, T, D)
        s_last = state.s3 if state else zeros
        if cfg.levels == 3:
            y, s_last = self._level3(y, h, z, input_ids, padded, s_last)
        real = attention_mask[:, -T:].long() if attention_mask is not None else torch.ones_like(input_ids)
        ids = input_ids if state is None else torch.cat([state.ids, input_ids], dim=1)  # (B, T_seen)
        real = real if state is None else torch.cat([state.mask, real], dim=1)  # (B, T_seen)
        return y, codes, SSMState(h[:, -1], s_last, ids, real)

    def _level3(self, y2: torch.Tensor, h: torch.Tensor, z: torch.Tensor, input_ids: torch.Tensor,
                padded: torch.Tensor | None, s0: torch.Tensor):
        """Level 3's gated correction of y2 (B, T, D), and its state after the last position."""
        cfg, p3 = self.config, self.level3
        u = z if cfg.level3_input == "features" else h  # (B, T, R) or (B, T, N)
        u = u * torch.rsqrt(u.pow(2).mean(-1, keepdim=True) + cfg.rms_eps)
        v = u @ p3.w_in.float() + p3.b_in.float()  # (B, T, N)
        if cfg.level3_decay == "selective":
            a3 = torch.sigmoid(p3.decay_logit.float() + u @ p3.w_decay.float())  # (B, T, N)
        else:
            a3 = torch.sigmoid(p3.decay_logit.float())  # (N,)
        held = padded  # (B, T, 1): True where the state must not move
        if cfg.level3_rate == "word":
            boundary = (input_ids == WORD_BOUNDARY_IDS[0]) | (input_ids == WORD_BOUNDARY_IDS[1])
            held = ~boundary[..., None] if held is None else held | ~boundary[..., None]
        b = (1 - a3) * v
        if held is not None:
            b = b.masked_fill(held, 0.0)
            if a3.dim() == 3 or cfg.level3_rate == "word":
                # A time-varying decay is 1 where the state holds. A fixed one stays (N,) for the
                # faster kernels: left padding, what the mask is for, precedes every real token,
                # so s is still 0 there and the decay cannot change it.
                a3 = torch.where(held, torch.ones_like(b), a3)  # (B, T, N)
        s = linear_scan(a3, b, s0, cfg.chunk_size, cfg.scan_kernel)  # (B, T, N)
        r = s + v if cfg.level3_rate == "word" else s  # the words so far plus the current character
        scale = 1 / math.sqrt(cfg.d_model)
        y3 = F.gelu(r) @ (p3.w_out.float() * scale) + p3.b_out.float() * scale
        return y2 + torch.sigmoid(r @ p3.w_gate.float() + p3.b_gate.float()) * y3, s[:, -1]


class BabySSMModel(BabySSMPreTrainedModel):
    """The ``AutoModel`` entry: the combined prediction y (B, T, D) as ``last_hidden_state``."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                return_dict: bool | None = None, **kwargs):
        y, _, _ = self.predict(input_ids, attention_mask)
        return BaseModelOutput(last_hidden_state=y) if return_dict is not False else (y,)


class BabySSMForCausalLM(BabySSMPreTrainedModel, GenerationMixin):
    """Next-character logits (B, T, V) of the hierarchical SSM; ``labels`` give the mean
    cross-entropy of the shifted targets (the transformers convention)."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, ssm_state: SSMState | None = None,
                use_cache: bool | None = None, return_dict: bool | None = None, **kwargs):
        y, codes, state = self.predict(input_ids, attention_mask, ssm_state)
        inv_tau = torch.exp(-self.level2.log_tau.float())
        logits = y @ (codes * (2 * inv_tau)).T - (codes**2).sum(-1) * inv_tau  # (B, T, V)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        state = state if use_cache else None
        if return_dict is False:
            return tuple(v for v in (loss, logits, state) if v is not None)
        return BabySSMCausalLMOutput(loss=loss, logits=logits, ssm_state=state)

    def prepare_inputs_for_generation(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                                      ssm_state: SSMState | None = None, use_cache: bool | None = None, **kwargs):
        """Feed only the new tokens when ``ssm_state`` belongs to a prefix of ``input_ids``."""
        if ssm_state is not None and ssm_state.continues(input_ids, attention_mask):
            input_ids = input_ids[:, ssm_state.ids.shape[1]:]
        else:
            ssm_state = None
        return {"input_ids": input_ids, "attention_mask": attention_mask, "ssm_state": ssm_state,
                "use_cache": use_cache}

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, *args, **kwargs):
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)
        model_kwargs["ssm_state"] = outputs.get("ssm_state") if isinstance(outputs, dict) else None
        return model_kwargs
