"""The hierarchical model's configuration (presets: ``babyssm.models.presets``).

Symbols: V vocabulary (128), D d_model (code width), N d_state (SSM state width),
R rank (low-rank factor width), L chunk_size (scan chunk).

One ``ModelConfig`` describes all three levels (see ``babyssm.models.levels`` for the
equations); the parameter count per level is in ``babyssm.models.presets``.

>>> ModelConfig(level3_loss="mix", level3_mix=(1.0, 0.0, 0.5)).level3_weights
(1.0, 0.0, 0.5)
>>> ModelConfig(rank=0)
Traceback (most recent call last):
    ...
ValueError: ModelConfig.rank must be a positive integer, got 0

This module imports only the standard library: ``babyssm export`` ships it with the
model's equations (``babyssm.models.levels``), and the exported model rebuilds its
``ModelConfig`` from config.json with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

LEVEL3_LOSSES = ("mse", "cosine", "softnn", "mix")
LEVEL3_CHOICES = {  # switch -> (seed value, the alternative): equations in babyssm.models.levels
    "level3_input": ("state", "features"),
    "level3_decay": ("fixed", "selective"),
    "level3_rate": ("char", "word"),
}


def check_positive_ints(config: object, names: tuple[str, ...], error: type[Exception] = ValueError) -> None:
    """The one positive-integer check of babyssm's config dataclasses: ``error`` names the
    first field of ``names`` that is not a positive int (a bool is not one)."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise error(f"{type(config).__name__}.{name} must be a positive integer, got {value!r}")


def check_rates(config: object, lr_names: tuple[str, ...] = ("lr",)) -> None:
    """The optimizer fields of a whole-model config: each learning rate in (0, 1),
    ``weight_decay`` in [0, 1) and ``min_lr_frac`` in [0, 1], so a hand-edited config.json fails naming the field
    instead of inside AdamW. The comparisons are False for NaN, so NaN is refused too."""
    for name in lr_names:
        if not 0 < getattr(config, name) < 1:
            raise ValueError(f"{type(config).__name__}.{name} must be in (0, 1), got {getattr(config, name)!r}")
    if not 0 <= config.weight_decay < 1:
        raise ValueError(f"{type(config).__name__}.weight_decay must be in [0, 1), got {config.weight_decay!r}")
    if not 0 <= config.min_lr_frac <= 1:
        raise ValueError(f"{type(config).__name__}.min_lr_frac must be in [0, 1], got {config.min_lr_frac!r}")


@dataclass
class ModelConfig:
    vocab_size: int = 128  # symbols (babyssm.data.vocab: 7-bit ASCII, id 0 = BOS)
    d_model: int = 512  # D: width of a character code (level-1 embedding) and of predictions
    d_state: int = 512  # N: width of the level-2 and level-3 recurrent states
    rank: int = 256  # R: inner width of level 2's low-rank factors
    chunk_size: int = 32  # L: time steps per block of the chunked parallel scan
    # Level 1 (diffusion character encoder): noise levels drawn log-uniformly in this range.
    # Codes have norm 1, so at sigma ~0.7 neighbouring codes start to blur.
    diffusion_sigma_min: float = 0.1  # almost clean: the posterior is nearly one-hot
    diffusion_sigma_max: float = 2.0  # mostly noise: the denoiser leans on the context prior
    diffusion_prior_scale: float = 1.0  # weight of <E_c, E[prev] + E[next]> in the denoiser
    # Decays of both recurrences start with time constants log-spaced over this range (chars).
    decay_min_timescale: float = 1.0  # a = exp(-1/1) ~ 0.37: last character only
    decay_max_timescale: float = 1000.0  # a ~ 0.999: a few hundred words
    init_log_tau: float = 0.0  # level 2's soft nearest-neighbour temperature starts at exp(0) = 1
    gate_bias_init: float = -2.0  # level-3 gate starts at sigmoid(-2) ~ 0.12: yields to level 2
    rms_eps: float = 1e-6  # floor inside the parameter-free RMS norm of level 2's state
    level3_loss: str = "softnn"  # one of LEVEL3_LOSSES
    level3_mix: tuple[float, float, float] = (0.25, 0.25, 1.0)  # "mix": weights of mse, cosine, softnn
    level3_input: str = "state"  # what level 3 reads: level 2's state h ("state") or activations z ("features")
    level3_decay: str = "fixed"  # level 3's decays: learned constants ("fixed") or input-dependent ("selective")
    level3_rate: str = "char"  # level 3's state moves every character ("char") or once per word ("word")
    # Share of the training budget for stage 4, all levels fine-tuned end to end by
    # cross-entropy after the staged training (taken from stages 2 and 3 in proportion);
    # 0 keeps the seed's three stages.
    finetune_fraction: float = 0.0
    finetune_lr: float = 1e-3  # stage 4's peak learning rate
    # Peak learning rates of stages 1, 2 and 3 (level 1 has 65k parameters and a smooth MSE objective).
    stage_lrs: tuple[float, float, float] = (1e-2, 3e-3, 2e-3)
    # Derived: weights of (mse, cosine, softnn) that the level-3 loss actually uses.
    level3_weights: tuple[float, float, float] = field(init=False)

    def __post_init__(self) -> None:
        check_positive_ints(self, ("vocab_size", "d_model", "d_state", "rank", "chunk_size"))
        for name in FLOAT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"ModelConfig.{name} must be a number, got {value!r}")
            setattr(self, name, float(value))  # JSON writes 2.0 as 2 in some hands: a whole number is fine
        for name in ("level3_loss", *LEVEL3_CHOICES):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"ModelConfig.{name} must be a string, got {getattr(self, name)!r}")
        for low, high in (("diffusion_sigma_min", "diffusion_sigma_max"),
                          ("decay_min_timescale", "decay_max_timescale")):
            lo, hi = getattr(self, low), getattr(self, high)
            if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
                raise ValueError(f"ModelConfig.{low} and .{high} must satisfy 0 < {low} <= {high}, got {lo}, {hi}")
        for name in ("diffusion_prior_scale", "init_log_tau", "gate_bias_init"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"ModelConfig.{name} must be a finite number, got {getattr(self, name)}")
        if not self.rms_eps > 0:
            raise ValueError(f"ModelConfig.rms_eps must be positive, got {self.rms_eps}")
        if self.level3_loss not in LEVEL3_LOSSES:
            raise ValueError(f"ModelConfig.level3_loss must be one of {LEVEL3_LOSSES}, got {self.level3_loss!r}")
        given = self.level3_mix
        numbers = (isinstance(given, (list, tuple)) and
                   all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in given))
        mix = tuple(float(w) for w in given) if numbers else ()  # JSON round trips turn tuples into lists
        if len(mix) != 3 or any(not (w >= 0 and math.isfinite(w)) for w in mix) or sum(mix) <= 0:
            raise ValueError(
                f"ModelConfig.level3_mix must be 3 non-negative weights (mse, cosine, softnn) "
                f"with a positive sum, got {self.level3_mix!r}"
            )
        self.level3_mix = mix
        for name, choices in LEVEL3_CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"ModelConfig.{name} must be one of {choices}, got {getattr(self, name)!r}")
        lrs = tuple(float(lr) for lr in self.stage_lrs)  # JSON gives a list back
        if len(lrs) != 3 or not all(0 < lr < 1 for lr in (*lrs, self.finetune_lr)):
            raise ValueError(f"ModelConfig.stage_lrs (3 rates) and .finetune_lr must be in (0, 1), "
                             f"got {self.stage_lrs!r}, {self.finetune_lr!r}")
        self.stage_lrs = lrs
        if not 0 <= self.finetune_fraction < 0.95:  # stage 1 keeps its 5 %, stages 2 and 3 a little
            raise ValueError(f"ModelConfig.finetune_fraction must be in [0, 0.95), got {self.finetune_fraction!r}")
        one_hot = {"mse": (1.0, 0.0, 0.0), "cosine": (0.0, 1.0, 0.0), "softnn": (0.0, 0.0, 1.0)}
        self.level3_weights = one_hot.get(self.level3_loss, mix)


FLOAT_FIELDS = tuple(f.name for f in fields(ModelConfig) if f.type == "float")  # checked in __post_init__
