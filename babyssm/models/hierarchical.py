"""``HierarchicalSSM``: the three-level character model behind the ``CharLM`` contract.

Symbols: B batch, T time, V vocabulary (128), D d_model, N d_state.

The levels (equations in ``babyssm.models.levels``) are trained one after another, each on
top of the frozen levels below it:

=====  =========================  ===================================================
stage  trains                     ``stage_loss``
=====  =========================  ===================================================
1      level 1 (the code map E)   diffusion denoising MSE (targets unused)
2      level 2 (tinySSM)          cross-entropy of level 2's soft-NN distribution
3      level 3 (mainSSM)          ``config.level3_loss``: mse / cosine / softnn / mix
4      all levels, end to end     cross-entropy of the final distribution
=====  =========================  ===================================================

Stage 4 runs only when ``config.finetune_fraction`` > 0 (``babyssm.training.plan.default_stages``):
frozen lower levels cannot learn the features the level above would need from them;
fine-tuning everything together afterwards lets them.

Whatever the stage, the model's distribution over the next character is the soft
nearest-neighbour distribution of a predicted code y_t: level 2's own prediction
(``levels=2``) or the gated combination with level 3 (``levels=3``, the default),
both scored with level 2's temperature. ``forward`` returns its logits and the mean
cross-entropy in nats per character; ``step`` runs the same recurrences one character
at a time from ``init_state`` and gives the same logits.

The forward pass itself is ``babyssm.models.levels.HierarchicalLevels`` (torch only,
shipped verbatim by ``babyssm export``: ``hf_export``); this class adds what training,
evaluation and the registry need. The recurrent state is a tuple (h2 (B, N), s3 (B, N));
with ``levels=2`` only h2 advances, so keep one ``levels`` value per sequence. ``forward_from`` continues a
sequence from a carried state (e.g. to score two continuations of a shared prefix).

>>> import torch
>>> from babyssm.models.presets import get_preset
>>> model = HierarchicalSSM(get_preset("tiny"))
>>> idx = torch.tensor([[0, 72, 105, 33]])
>>> logits, loss = model(idx, targets=torch.tensor([[72, 105, 33, 10]]))
>>> logits.shape, loss.shape
(torch.Size([1, 4, 128]), torch.Size([]))
>>> state = model.init_state(1)
>>> step_logits, state = model.step(idx[:, 0], state)
>>> torch.allclose(step_logits, logits[:, 0], atol=1e-4)
True
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from babyssm.errors import BabySSMError
from babyssm.models.config import ModelConfig
from babyssm.models.levels import HierarchicalLevels, State
from babyssm.models.lm import CharLM, HFExport, register_model

STAGE_LEVELS = {1: (1,), 2: (2,), 3: (3,), 4: (1, 2, 3)}  # stage -> the levels it trains


def _resolve_levels(levels: int | None) -> int:
    if levels is None:
        return 3
    if levels not in (2, 3):
        raise BabySSMError(f"levels must be 2 (tinySSM alone) or 3 (with mainSSM), got {levels!r}")
    return levels


@register_model
class HierarchicalSSM(HierarchicalLevels, CharLM):
    model_type = "hierarchical_ssm"
    config_class = ModelConfig
    stages = (1, 2, 3, 4)
    hf_export = HFExport(remote_code="modeling_babyssm", modules=("config", "scan", "levels"), model_type="babyssm",
                         auto_map={"AutoConfig": "BabySSMConfig", "AutoModel": "BabySSMModel",
                                   "AutoModelForCausalLM": "BabySSMForCausalLM"})

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.build_levels(config)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, levels: int | None = None):
        y, codes, _, _ = self.predict(idx, None, _resolve_levels(levels))
        logits = self.logits(y, codes)  # (B, T, V)
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss

    def forward_from(self, idx: torch.Tensor, state: State, levels: int | None = None):
        """Logits (B, T, V) of ``idx`` (B, T) continuing from ``state``, and the state after it."""
        y, codes, state, _ = self.predict(idx, state, _resolve_levels(levels))
        return self.logits(y, codes), state

    def stage_loss(self, stage: int, idx: torch.Tensor, targets: torch.Tensor):
        if stage == 1:
            return self.level1.diffusion_loss(idx)
        if stage in (2, 4):
            y, codes, _, _ = self.predict(idx, None, 2 if stage == 2 else 3)
            loss = F.cross_entropy(self.logits(y, codes).flatten(0, 1), targets.flatten())
            return loss, {"ce": loss.detach(), "tau": self.level2.log_tau.detach().exp()}
        if stage == 3:
            y, codes, _, gate = self.predict(idx, None, 3)
            ce = F.cross_entropy(self.logits(y, codes).flatten(0, 1), targets.flatten())
            w_mse, w_cos, w_nn = self.config.level3_weights
            with torch.autocast(idx.device.type, enabled=False):
                target_codes = codes[targets].float()  # (B, T, D)
                with torch.set_grad_enabled(torch.is_grad_enabled() and w_mse > 0):
                    mse = (y.float() - target_codes).pow(2).sum(-1).mean()
                with torch.set_grad_enabled(torch.is_grad_enabled() and w_cos > 0):
                    cosine = (1 - F.cosine_similarity(y.float(), target_codes, dim=-1)).mean()
            loss = w_nn * ce + (w_mse * mse if w_mse > 0 else 0) + (w_cos * cosine if w_cos > 0 else 0)
            metrics = {"ce": ce.detach(), "mse": mse.detach(), "cosine": cosine.detach(), "gate": gate.detach().mean()}
            return loss, metrics
        raise BabySSMError(f"HierarchicalSSM has stages {self.stages}, got stage {stage!r}")

    def level(self, number: int) -> nn.Module:
        return {1: self.level1, 2: self.level2, 3: self.level3}[number]

    def stage_parameters(self, stage: int) -> list[nn.Parameter]:
        """Unfreeze the levels ``stage`` trains (stage 4: every level) and return their parameters."""
        if stage not in self.stages:
            raise BabySSMError(f"HierarchicalSSM has stages {self.stages}, got stage {stage!r}")
        for number in (1, 2, 3):
            self.level(number).requires_grad_(number in STAGE_LEVELS[stage])
        return [p for p in self.parameters() if p.requires_grad]

    def stage_weight_prefixes(self, stages_completed: list[int]) -> tuple[str, ...]:
        return tuple(f"level{n}." for n in self.trained_levels(stages_completed))

    @classmethod
    def trained_levels(cls, stages_completed: Iterable[int]) -> tuple[int, ...]:
        return tuple(sorted({n for s in stages_completed for n in STAGE_LEVELS.get(s, ())}))

    @classmethod
    def default_levels(cls, stages_completed: Iterable[int]) -> int:
        """3 once level 3 is trained (stage 3, or stage 4 which trains every level), else 2."""
        return 3 if 3 in cls.trained_levels(stages_completed) else 2

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        N = self.config.d_state
        return (torch.zeros(batch_size, N, device=device), torch.zeros(batch_size, N, device=device))

    def step(self, idx_t: torch.Tensor, state: State, levels: int | None = None):
        return self.step_levels(idx_t, state, _resolve_levels(levels))
