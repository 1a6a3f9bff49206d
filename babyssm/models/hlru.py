"""``HLRU``: the hlru family behind the ``CharLM`` contract, and its presets.

Symbols: B batch, T time (characters), V vocabulary (128).

The equations (character blocks around a word-level middle) are
``babyssm.models.hourglass.HourglassLRU``, torch only and shipped verbatim by
``babyssm export`` (``hf_export``); this class adds what training, evaluation and the
registry need. Training is one cross-entropy stage (``stages = (0,)``), unless the
character map comes from level 1's diffusion objective first (``char_map`` "init" or
"frozen": ``stages = (1, 0)``, stage 1 training the map alone for 5 % of the budget,
``babyssm.training.plan.default_stages``).

Presets (``babyssm info --preset NAME``): ``hlru`` (1,648,288 parameters, about the
seed's 1,640,961), ``hlru-attn`` (1,640,752: five character blocks, the word level mixing
by attention over words), ``hlru-flat`` (1,634,848: no word level), ``hlru-16m`` (about
10x, for GPUs), ``hlru-tiny`` (tests).

>>> model = HLRU(get_hlru_preset("hlru-tiny"))
>>> idx = torch.tensor([[0, 72, 105, 32, 121, 111]])
>>> logits, loss = model(idx, targets=torch.tensor([[72, 105, 32, 121, 111, 117]]))
>>> logits.shape, loss.shape, model.stages
(torch.Size([1, 6, 128]), torch.Size([]), (0,))
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from babyssm.errors import BabySSMError
from babyssm.models.hourglass import HLRUConfig, HourglassLRU
from babyssm.models.lm import CharLM, HFExport, register_model

HLRU_PRESETS: dict[str, HLRUConfig] = {
    # 1,648,288 parameters (the seed's 1,640,961): 2 + 2 character blocks of 144 around 1 word block of 224.
    "hlru": HLRUConfig(),
    # 1,640,752: 2 + 3 character blocks of 152 around 1 word block of 128 that mixes by attention over
    # the last 64 words instead of a recurrence (babyssm.models.attention; docs/DESIGN.md). lr 8e-3: the best of
    # 2e-3 / 4e-3 / 8e-3 at 5M characters (docs/RESULTS.md).
    "hlru-attn": HLRUConfig(d_model=152, d_ff=408, d_word=128, d_word_ff=256, n_decoder=3, word_attention=1, lr=8e-3),
    # 1,634,848: no word level, 5 character blocks of 160 (docs/DESIGN.md: what the word level costs).
    "hlru-flat": HLRUConfig(d_model=160, d_ff=448, n_encoder=2, n_word=0, n_decoder=3),
    # About 10x (16.0M): for users with a GPU (constructs, trains and exports in the tests).
    "hlru-16m": HLRUConfig(d_model=320, d_ff=832, d_word=640, d_word_ff=1920, n_encoder=2, n_word=2,
                           n_decoder=2),
    "hlru-tiny": HLRUConfig(d_model=32, d_ff=64, d_word=48, d_word_ff=96, n_encoder=1, n_word=2, n_decoder=2,
                            chunk_size=8),  # tests
}


def get_hlru_preset(name: str) -> HLRUConfig:
    """A fresh copy of the named preset."""
    if name not in HLRU_PRESETS:
        raise BabySSMError(f"unknown hlru preset {name!r}; choose one of: {', '.join(sorted(HLRU_PRESETS))}")
    return dataclasses.replace(HLRU_PRESETS[name])


@register_model
class HLRU(HourglassLRU, CharLM):
    model_type = "hlru"
    config_class = HLRUConfig
    hf_export = HFExport(remote_code="modeling_hlru",
                         modules=("config", "scan", "levels", "attention", "lru", "hourglass"),
                         model_type="babyssm_hlru",
                         auto_map={"AutoConfig": "HLRUHFConfig", "AutoModel": "HLRUModel",
                                   "AutoModelForCausalLM": "HLRUForCausalLM"})

    def __init__(self, config: HLRUConfig):
        super().__init__()
        self.config = config
        self.stages = (0,) if config.char_map == "none" else (1, 0)
        self.build_hourglass(config)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, levels: int | None = None):
        logits, _ = self.forward_from(idx, self.init_state(idx.size(0), idx.device))
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        return logits, loss

    def stage_loss(self, stage: int, idx: torch.Tensor, targets: torch.Tensor):
        if stage not in self.stages:
            raise BabySSMError(f"HLRU (char_map {self.config.char_map}) has stages {self.stages}, got stage {stage!r}")
        if stage == 1:
            return self.level1.diffusion_loss(idx)
        _, loss = self(idx, targets)
        return loss, {"ce": loss.detach()}

    def stage_parameters(self, stage: int) -> list[nn.Parameter]:
        """Stage 1: the map alone; stage 0: everything, except a "frozen" map."""
        for name, p in self.named_parameters():
            is_map = name.startswith("level1.")
            p.requires_grad_(is_map if stage == 1 else not (is_map and self.config.char_map == "frozen"))
        return [p for p in self.parameters() if p.requires_grad]

    def stage_weight_prefixes(self, stages_completed: list[int]) -> tuple[str, ...]:
        return ("",) if 0 in stages_completed else tuple("level1." for s in stages_completed if s == 1)
