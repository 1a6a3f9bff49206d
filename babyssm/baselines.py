"""Baselines for the hierarchical SSM: a GRU, a small transformer and a character n-gram.

The neural baselines are ``CharLM``s (``babyssm.lm``) with one training stage
(``stages = (0,)``: the whole model, cross-entropy), trained by the same loop
(``babyssm.train.train``) on the same windows and sized to the seed model's
parameter count (``gru_config_for_params``, ``transformer_config_for_params``), so
a comparison differs in the architecture only. The n-gram (``babyssm.ngram``) is
counted, not trained, and scored through its own ``token_logprobs``.

Symbols: B batch, T time (characters), P cached (past) positions, D d_model,
F d_ff (transformer MLP width), H heads, E head width (D / H), L n_layers,
V vocabulary (128), W block_size (the transformer's attention window).

GRULM: x_t = Emb[c_t]; h_t = GRU_L(x_t, h_{t-1}) (torch.nn.GRU, L stacked layers);
logits_t = h_t W_head + b_head. Parameters: 2VD + V + L(6D^2 + 6D).

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

>>> cfg = gru_config_for_params(1_640_961)
>>> cfg.d_model, abs(GRULM(cfg).num_parameters() / 1_640_961 - 1) < 0.02
(502, True)
>>> cfg = transformer_config_for_params(1_640_961)
>>> cfg.d_model, cfg.n_layers, abs(TransformerLM(cfg).num_parameters() / 1_640_961 - 1) < 0.02
(184, 4, True)

Command line::

    babyssm baseline ngram --data work/prepared --out work/ngram5 --order 5
    babyssm baseline gru --data work/prepared --out work/gru --max-minutes 30
    babyssm baseline transformer --data work/prepared --out work/tf --max-chars 20e6 --device cuda
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from babyssm.errors import BabySSMError
from babyssm.lm import CharLM, build_model, register_model
from babyssm.ngram import NGramConfig, NGramLM, load_ngram
from babyssm.vocab import VOCAB_SIZE

__all__ = [
    "GRUConfig", "GRULM", "TransformerConfig", "TransformerLM", "NGramConfig", "NGramLM", "load_ngram",
    "gru_config_for_params", "transformer_config_for_params", "seed_parameter_count",
]


class _WholeModelLM(CharLM):
    """What the neural baselines share: one stage (the whole model, cross-entropy) and
    ``step`` as a one-character ``forward_from``."""

    stages = (0,)

    def stage_loss(self, stage: int, idx: torch.Tensor, targets: torch.Tensor):
        if stage not in self.stages:
            raise BabySSMError(f"{type(self).__name__} has stages {self.stages}, got stage {stage!r}")
        _, loss = self(idx, targets)
        return loss, {"ce": loss.item()}

    def step(self, idx_t: torch.Tensor, state, levels: int | None = None):
        logits, state = self.forward_from(idx_t[:, None], state)  # (B, 1, V)
        return logits[:, 0], state


# -- GRU ------------------------------------------------------------------------------------------
@dataclass
class GRUConfig:
    vocab_size: int = VOCAB_SIZE  # V: fixed character vocabulary
    d_model: int = 502  # D: embedding and hidden width (502: the seed model's parameter count)
    n_layers: int = 1  # L: stacked GRU layers (one, like the SSM's single recurrent state per level)

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"GRUConfig.{name} must be a positive integer, got {getattr(self, name)!r}")


@register_model
class GRULM(_WholeModelLM):
    model_type = "gru"
    config_class = GRUConfig

    def __init__(self, config: GRUConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.rnn = nn.GRU(config.d_model, config.d_model, num_layers=config.n_layers, batch_first=True)
        self.head = nn.Linear(config.d_model, config.vocab_size)

    def forward_from(self, idx: torch.Tensor, state: torch.Tensor, levels: int | None = None):
        """Logits (B, T, V) of ``idx`` (B, T) continuing from ``state`` (L, B, D), and the new state."""
        y, state = self.rnn(self.embed(idx), state)  # y: (B, T, D)
        return self.head(y), state

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, levels: int | None = None):
        y, _ = self.rnn(self.embed(idx))  # (B, T, D), from a zero state
        logits = self.head(y)  # (B, T, V)
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
        return torch.zeros(self.config.n_layers, batch_size, self.config.d_model, device=device)


def gru_param_count(vocab_size: int, d_model: int, n_layers: int) -> int:
    V, D, L = vocab_size, d_model, n_layers
    return 2 * V * D + V + L * (6 * D * D + 6 * D)


def gru_config_for_params(n: int, n_layers: int = 1, vocab_size: int = VOCAB_SIZE) -> GRUConfig:
    """The GRUConfig whose parameter count is closest to ``n`` (the width moves in steps of ~12D)."""
    a, b, c = 6 * n_layers, 2 * vocab_size + 6 * n_layers, vocab_size - n
    d = max(1, round((-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)))
    return GRUConfig(vocab_size=vocab_size, d_model=d, n_layers=n_layers)


# -- Transformer --------------------------------------------------------------------------------
@dataclass
class TransformerConfig:
    vocab_size: int = VOCAB_SIZE  # V: fixed character vocabulary
    d_model: int = 184  # D: residual width (184 with d_ff 730: the seed model's parameter count)
    n_layers: int = 4  # L: pre-LN blocks
    n_heads: int = 4  # H: attention heads; D / H must be even for the rotary pairs
    d_ff: int = 730  # F: MLP hidden width, ~4D (tunes the parameter count finely)
    block_size: int = 256  # W: attention window in characters (= TrainConfig.seq_len)
    rope_base: float = 10000.0  # rotary wavelength base (RoFormer's default)
    head_dim: int = dataclasses.field(init=False)  # E = D / H, derived

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "block_size"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"TransformerConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
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
        H, E, W = self.config.n_heads, self.config.head_dim, self.config.block_size
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
class TransformerLM(_WholeModelLM):
    model_type = "transformer"
    config_class = TransformerConfig

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(config.d_model, bias=False)
        # GPT-2 init: N(0, 0.02), residual outputs scaled by 1/sqrt(2L) so the stream's variance stays O(1).
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * config.n_layers) if name.endswith(("proj.weight", "out.weight")) else 0.02
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
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss

    def init_state(self, batch_size: int, device: torch.device | str | None = None):
        c = self.config
        dtype = self.embed.weight.dtype
        empty = torch.zeros(batch_size, c.n_heads, 0, c.head_dim, device=device, dtype=dtype)  # (B, H, 0, E)
        return 0, [(empty, empty) for _ in range(c.n_layers)]


def transformer_param_count(vocab_size: int, d_model: int, n_layers: int, d_ff: int) -> int:
    V, D, L, Fw = vocab_size, d_model, n_layers, d_ff
    return V * D + L * (4 * D * D + 2 * D * Fw + 2 * D) + D


def transformer_config_for_params(n: int, n_layers: int = 4, n_heads: int = 4, block_size: int = 256,
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
                             d_ff=d_ff, block_size=block_size)


def seed_parameter_count() -> int:
    """Parameters of the seed hierarchical model (what the baselines are sized to)."""
    from babyssm.config import get_preset
    from babyssm.model import HierarchicalSSM

    return HierarchicalSSM(get_preset("seed")).num_parameters()


# -- command line ---------------------------------------------------------------------------------
def _cmd_ngram(args: argparse.Namespace) -> int:
    from babyssm.checkpoint import run_info
    from babyssm.data import load_meta, load_split

    if args.max_minutes is not None:
        raise BabySSMError("--max-minutes applies to gru and transformer; n-gram counting takes seconds "
                           "(limit it with --max-chars)")
    try:
        config = NGramConfig(order=args.order or 5, window=args.seq_len or 256)
    except ValueError as e:
        raise BabySSMError(f"--order {args.order}: {e}") from None
    train = load_split(args.data, "train")
    train = train[: args.max_chars] if args.max_chars else train
    start = time.perf_counter()
    lm = NGramLM.fit(train, config)
    seconds = time.perf_counter() - start
    record = {"chars_seen": len(train), "train_seconds": round(seconds, 2), "data": str(args.data),
              "commands": [args.invocation]}
    if "dev" in load_meta(args.data)["splits"]:
        dev = load_split(args.data, "dev")
        record["dev_bpc"] = float(-lm.stream_logprobs(dev).mean() / math.log(2))
    lm.save(args.out, {**record, "run_info": run_info(args.seed or 0)})
    print(json.dumps({"n_grams": lm.num_ngrams, **record}, indent=2))
    return 0


def _cmd_neural(args: argparse.Namespace) -> int:
    from babyssm.checkpoint import read_config
    from babyssm.train import TrainConfig, resumed_train_config, train

    flags = {k: getattr(args, k) for k in ("batch_size", "seq_len", "max_chars", "max_minutes", "eval_every",
                                           "eval_chars", "seed", "device") if getattr(args, k) is not None}
    if args.resume:
        saved = read_config(args.out)
        if saved["model_type"] != args.kind:
            raise BabySSMError(f"{args.out} holds a {saved['model_type']} run, not {args.kind}")
        model = build_model(saved["model_type"], saved["config"])
        config = resumed_train_config(saved["train_config"], flags)
    else:
        config = TrainConfig(**flags)
        n = args.params or seed_parameter_count()
        if args.kind == "gru":
            cfg = gru_config_for_params(n, n_layers=args.layers or 1)
        else:
            cfg = transformer_config_for_params(n, n_layers=args.layers or 4, block_size=config.seq_len)
        torch.manual_seed(config.seed)  # the initial weights
        model = build_model(args.kind, dataclasses.asdict(cfg))
        print(f"{args.kind}: {model.num_parameters():,} parameters (target {n:,}), config {dataclasses.asdict(cfg)}")
    summary = train(model, args.data, args.out, config, resume=args.resume, command=args.invocation)
    print(json.dumps(summary, indent=2))
    return 0


_NEURAL_ONLY = ("params", "layers", "batch_size", "eval_every", "eval_chars", "device", "resume")


def _cmd_baseline(args: argparse.Namespace) -> int:
    if args.kind == "ngram":
        given = [f"--{k.replace('_', '-')}" for k in _NEURAL_ONLY if getattr(args, k) not in (None, False)]
        if given:
            raise BabySSMError(f"{', '.join(given)} apply to gru and transformer, not the ngram baseline")
        return _cmd_ngram(args)
    if args.order is not None:
        raise BabySSMError(f"--order applies to the ngram baseline, not {args.kind}")
    return _cmd_neural(args)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    from babyssm.train_cli import positive_count

    p = subparsers.add_parser(
        "baseline", help="count an n-gram or train a GRU / transformer baseline",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Baselines on PREPARED_DIR: a character n-gram with interpolated Kneser-Ney "
        "(counted from train.bin in seconds), or a GRU / small transformer with the seed model's "
        "parameter count, trained by the `babyssm train` loop.",
        epilog="examples:\n"
        "  babyssm baseline ngram --data work/prepared --out work/ngram5 --order 5\n"
        "  babyssm baseline gru --data work/prepared --out work/gru --max-minutes 30\n"
        "  babyssm baseline transformer --data work/prepared --out work/tf --max-chars 20e6",
    )
    p.add_argument("kind", choices=["ngram", "gru", "transformer"], help="which baseline")
    p.add_argument("--data", required=True, metavar="PREPARED_DIR", help="output folder of `babyssm prepare`")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder for the model and its record")
    p.add_argument("--order", type=int, metavar="N", help="ngram: order, 1..9 (default 5)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--max-chars", type=positive_count, metavar="N",
                        help="ngram: count only the first N training characters; gru/transformer: train on N")
    budget.add_argument("--max-minutes", type=float, metavar="M", help="gru/transformer: budget in minutes")
    p.add_argument("--params", type=positive_count, metavar="N",
                   help="gru/transformer size (default: the seed model's)")
    p.add_argument("--layers", type=positive_count, metavar="L",
                   help="gru (default 1) / transformer (default 4) layers")
    p.add_argument("--seq-len", type=positive_count, metavar="T",
                   help="characters per window (default 256): training windows, the transformer's "
                   "attention window, the ngram's counting windows")
    p.add_argument("--batch-size", type=positive_count, metavar="B",
                   help="gru/transformer: windows per step (default 32)")
    p.add_argument("--eval-every", type=positive_count, metavar="STEPS",
                   help="gru/transformer: steps between dev evaluations")
    p.add_argument("--eval-chars", type=int, metavar="N", help="gru/transformer: size of the fixed dev subset "
                   "(default 65536); 0: no evaluation")
    p.add_argument("--device", choices=["cpu", "cuda"], help="gru/transformer: cpu (default) or cuda")
    p.add_argument("--seed", type=int, help="seed of the initial weights and batches (default 0)")
    p.add_argument("--resume", action="store_true", help="gru/transformer: continue the run in RUN_DIR")
    p.set_defaults(func=_cmd_baseline)
