"""Learning-rate schedules and the optimizer of a stage: small pure functions.

Schedule (``lr_at``, a pure function): linear warm-up over the first
``warmup_frac`` of a stage, then a cosine from ``lr`` down to ``lr * min_lr_frac``.
Under a char budget it is fed (steps done, steps in the stage); under a time budget,
where the step count is unknown in advance, (seconds spent, seconds in the stage);
with both, whichever is further along (see ``babyssm.training.loop``).

>>> lr_at(0, 100, 1e-3, 0.1, 0.1), lr_at(10, 100, 1e-3, 0.1, 0.1), lr_at(100, 100, 1e-3, 0.1, 0.1)
(9.090909090909092e-05, 0.001, 0.0001)
"""

from __future__ import annotations

import math

import torch

from babyssm.training.plan import StageConfig


def lr_at(step: float, total_steps: float, base_lr: float, warmup_frac: float, min_lr_frac: float) -> float:
    """Linear warm-up over the first ``warmup_frac`` of the stage, then cosine to
    ``min_lr_frac * base_lr``. ``step``/``total_steps`` may be seconds (time budgets)."""
    warmup = warmup_frac * total_steps
    if step < warmup:
        return base_lr * (step + 1) / (warmup + 1)  # never exactly 0: the first step counts
    p = min(1.0, (step - warmup) / max(total_steps - warmup, 1e-9))
    return base_lr * (min_lr_frac + (1 - min_lr_frac) * 0.5 * (1 + math.cos(math.pi * p)))


def make_optimizer(params: list[torch.nn.Parameter], sc: StageConfig) -> torch.optim.AdamW:
    """AdamW for one stage; weight decay on matrices only (nanoGPT's betas: 0.9, 0.95)."""
    decay = [p for p in params if p.dim() >= 2]
    rest = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": sc.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=sc.lr, betas=(0.9, 0.95))
