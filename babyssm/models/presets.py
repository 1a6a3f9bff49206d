"""Named presets of the hierarchical model and its parameter table per level.

Sizes of the ``seed`` preset (V 128, D 512, N 512, R 256):

=======  ============================================  ==========
level    parameters                                    count
=======  ============================================  ==========
1        W (V x D)                                         65,536
2        6 low-rank matrices (D x R / R x N / N x R),     786,945
         decay (N), log-temperature (1)
3        3 matrices (N x N, N x D, N x D), 4 vectors      788,480
=======  ============================================  ==========

>>> cfg = get_preset("tiny")
>>> cfg.d_model, cfg.rank, cfg.level3_weights
(64, 32, (0.0, 0.0, 1.0))
>>> {r["level"]: r["count"] for r in parameter_table(get_preset("seed")) if r["name"] == "level1.weight"}
{1: 65536}

``babyssm info --preset seed`` prints the parameter table per level.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from babyssm.errors import BabySSMError
from babyssm.models.config import ModelConfig
from babyssm.models.hierarchical import HierarchicalSSM

PRESETS: dict[str, ModelConfig] = {
    "seed": ModelConfig(),  # the original sizes and recipe: 1,640,961 parameters
    # The seed's sizes and parameter count; level 3 reads level 2's features once per word
    # with selective decay, and 90 % of the budget trains all levels together (docs/DESIGN.md).
    "deep": ModelConfig(level3_input="features", level3_decay="selective", level3_rate="word",
                        finetune_fraction=0.9, finetune_lr=3e-3),
    "tiny": ModelConfig(d_model=64, d_state=64, rank=32, chunk_size=16),  # tests and quick start
}
# What `babyssm train`, `babyssm info` and the quick start build without --preset: the hlru
# family's hierarchical preset (babyssm.models.hlru; docs/DESIGN.md says why).
DEFAULT_PRESET = "hlru"


def get_preset(name: str) -> ModelConfig:
    """A fresh copy of the named preset; BabySSMError lists the presets for an unknown name."""
    if name not in PRESETS:
        raise BabySSMError(f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}")
    preset = PRESETS[name]
    return ModelConfig(**{f.name: getattr(preset, f.name) for f in dataclasses.fields(preset) if f.init})


def parameter_table(cfg: ModelConfig) -> list[dict]:
    """Rows (level, name, shape, count) for every parameter of the model ``cfg`` builds."""
    model = HierarchicalSSM(cfg)
    rows = []
    for name, p in model.named_parameters():
        level = int(name.split(".")[0].removeprefix("level"))
        rows.append({"level": level, "name": name, "shape": list(p.shape), "count": p.numel()})
    return rows


def format_parameter_table(rows: list[dict]) -> str:
    """The table as aligned text, with a total per level and a grand total."""
    lines = [f"{'parameter':<24} {'shape':>12} {'count':>12}"]
    for level in sorted({r["level"] for r in rows}):
        level_rows = [r for r in rows if r["level"] == level]
        for r in level_rows:
            shape = " x ".join(str(s) for s in r["shape"]) or "scalar"
            lines.append(f"{r['name']:<24} {shape:>12} {r['count']:>12,}")
        lines.append(f"{f'level {level} total':<24} {'':>12} {sum(r['count'] for r in level_rows):>12,}")
        lines.append("")
    lines.append(f"{'total':<24} {'':>12} {sum(r['count'] for r in rows):>12,}")
    return "\n".join(lines)


def model_preset(name: str) -> tuple[str, Any]:
    """(model_type, config) of any named preset: the hierarchical model's or the hlru family's."""
    from babyssm.models.hlru import HLRU_PRESETS, get_hlru_preset

    if name in HLRU_PRESETS:
        return "hlru", get_hlru_preset(name)
    if name in PRESETS:
        return "hierarchical_ssm", get_preset(name)
    raise BabySSMError(f"unknown preset {name!r}; choose one of: {', '.join(sorted({**PRESETS, **HLRU_PRESETS}))}")


def seed_parameter_count() -> int:
    """Parameters of the seed hierarchical model (what the baselines are sized to)."""
    return HierarchicalSSM(get_preset("seed")).num_parameters()
