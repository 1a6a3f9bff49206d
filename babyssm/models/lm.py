"""The base class every trainable babyssm language model derives from.

A ``CharLM`` maps symbol ids to next-symbol logits over the 128-symbol vocabulary
and can be trained in stages, decoded step by step and scored. The hierarchical
SSM (``babyssm.models.hierarchical``) and the GRU and transformer baselines
(``babyssm.models.gru``, ``babyssm.models.transformer``) all share this interface, so one
training loop, one generator and one evaluation harness serve them all. A new model
family registers itself (``@register_model``) from a module listed in ``_MODEL_MODULES``.

Symbols: B batch, T time (characters), V vocabulary (128).

Contract (subclasses implement the abstract methods):

- ``forward(idx (B, T) long, targets (B, T) long | None) -> (logits (B, T, V), loss)``:
  logits of the model's final distribution; ``loss`` is the mean cross-entropy in
  nats per character (None without targets). ``levels`` picks the levels of a
  hierarchical model; baselines ignore it.
- ``stages``: the training stages the model has, in order (e.g. ``(1, 2, 3)``; a
  baseline has ``(0,)``). ``stage_loss(stage, idx, targets) -> (loss, metrics)`` is
  the objective of that stage, ``metrics`` a dict of detached 0-dim tensors (no
  ``.item()``: a step needs no host sync, and a compiled step no graph break, until
  the loop logs them); ``stage_parameters(stage)`` freezes everything else and
  returns the parameters it trains.
- ``init_state(batch_size) -> state`` and ``step(idx_t (B,), state) -> (logits (B, V),
  state)``: recurrent decoding at constant cost per character. ``step`` from
  ``init_state`` over a sequence gives the same logits as ``forward`` on it.
- ``forward_from(idx (B, T), state) -> (logits (B, T, V), state)``: the parallel
  forward continuing from a carried state, returning the state after the last
  position; it never modifies ``state`` in place, so one prefix state can feed
  several continuations (how evaluation scores a minimal pair's shared prefix once).
- ``trained_levels(stages_completed)`` and ``default_levels(stages_completed)``
  (class methods, so a report can ask without building the model): the levels a run
  trained and the ``levels`` evaluation, generation and export use by default; the
  one place that maps stages to levels.
- ``config``: a dataclass instance; ``model_type``: the registry name. Together
  they rebuild the model: ``build_model(model_type, asdict(config))``.
"""

from __future__ import annotations

import dataclasses
import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn as nn

from babyssm.data.vocab import BOS_ID, TEXT_IDS, VOCAB_SIZE
from babyssm.errors import BabySSMError

@dataclasses.dataclass(frozen=True)
class HFExport:
    """How ``babyssm export`` ships a model family as Hugging Face remote code.

    The export copies ``babyssm/hf/<remote_code>.py`` (a thin transformers wrapper) and
    each of ``modules`` (``babyssm/models/<name>.py``: torch and the standard library
    only, importing each other relatively) verbatim into the exported folder. The wrapper
    imports every one of ``modules`` by relative import (``from .levels import ...``):
    transformers copies exactly the files a remote-code file imports that way.
    """

    remote_code: str  # module of babyssm/hf/, also the file name in the export
    modules: tuple[str, ...]  # modules of babyssm/models/ the exported model runs
    model_type: str  # config.json's model_type (the wrapper's config class says the same)
    auto_map: dict[str, str]  # Auto class -> class name in remote_code


_REGISTRY: dict[str, type[CharLM]] = {}
# Modules that define registered models; imported on first lookup.
_MODEL_MODULES = ("babyssm.models.hierarchical", "babyssm.models.gru", "babyssm.models.transformer",
                  "babyssm.models.transformerpp", "babyssm.models.hlru")


def register_model(cls: type[CharLM]) -> type[CharLM]:
    """Class decorator: make ``cls`` buildable by its ``model_type`` name."""
    _REGISTRY[cls.model_type] = cls
    return cls


def model_class(model_type: str) -> type[CharLM]:
    """The registered class of ``model_type``; KeyError lists the known names."""
    if model_type not in _REGISTRY:
        for name in _MODEL_MODULES:
            importlib.import_module(name)
    if model_type not in _REGISTRY:
        raise KeyError(f"unknown model_type {model_type!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[model_type]


def registered_models() -> list[type[CharLM]]:
    """Every registered model class (importing the modules that define them)."""
    for name in _MODEL_MODULES:
        importlib.import_module(name)
    return list(_REGISTRY.values())


def config_of(model_type: str, config: dict[str, Any]) -> Any:
    """The config dataclass of ``model_type`` from a saved dict: a renamed field (the config
    class's ``RENAMED``) under its new name, derived fields dropped, fields added since at
    their defaults."""
    config_class = model_class(model_type).config_class
    fields = {f.name for f in dataclasses.fields(config_class) if f.init}
    renamed = getattr(config_class, "RENAMED", {})
    config = {renamed.get(k, k): v for k, v in config.items()}
    return config_class(**{k: v for k, v in config.items() if k in fields})


def build_model(model_type: str, config: dict[str, Any]) -> CharLM:
    """Rebuild a registered model from its type name and config dict (as saved in JSON)."""
    cfg = config_of(model_type, config)
    if getattr(cfg, "vocab_size", VOCAB_SIZE) != VOCAB_SIZE:  # every model reads and writes these symbols
        raise ValueError(f"{type(cfg).__name__}.vocab_size must be {VOCAB_SIZE} (the character vocabulary, "
                         f"babyssm.data.vocab), got {cfg.vocab_size}")
    return model_class(model_type)(cfg)


class CharLM(nn.Module, ABC):
    model_type: str = ""
    config_class: type = object
    stages: tuple[int, ...] = (0,)
    hf_export: HFExport | None = None  # None: `babyssm export` refuses the model

    @abstractmethod
    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, levels: int | None = None):
        ...

    @abstractmethod
    def stage_loss(self, stage: int, idx: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        ...

    def stage_parameters(self, stage: int) -> list[nn.Parameter]:
        """Parameters trained in ``stage``; the default trains everything."""
        for p in self.parameters():
            p.requires_grad_(True)
        return list(self.parameters())

    @abstractmethod
    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> Any:
        ...

    @abstractmethod
    def forward_from(self, idx: torch.Tensor, state: Any, levels: int | None = None) -> tuple[torch.Tensor, Any]:
        ...

    @abstractmethod
    def step(self, idx_t: torch.Tensor, state: Any, levels: int | None = None) -> tuple[torch.Tensor, Any]:
        ...

    def stage_weight_prefixes(self, stages_completed: list[int]) -> tuple[str, ...]:
        """Names (prefixes) of the parameters that ``stages_completed`` trained; all by default."""
        return ("",)

    @classmethod
    def trained_levels(cls, stages_completed: Iterable[int]) -> tuple[int, ...]:
        """The levels that ``stages_completed`` trained, ascending; () for a model without levels."""
        return ()

    @classmethod
    def default_levels(cls, stages_completed: Iterable[int]) -> int | None:
        """The ``levels`` that evaluation, generation and export use by default after
        ``stages_completed``; None for a model without levels (``levels`` is ignored)."""
        return None

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def generate(
        self,
        prompt: list[int],
        max_new_chars: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        levels: int | None = None,
    ) -> Iterator[int]:
        """Yield sampled symbol ids one at a time, after feeding BOS + ``prompt``.

        ``temperature`` 0 means greedy decoding; ``top_k`` keeps the k likeliest symbols.
        Only symbols that cleaned text can hold are sampled: BOS and the unused control
        codes carry a little probability in an untrained model but never form text.
        """
        device = next(self.parameters()).device
        never = torch.ones(VOCAB_SIZE, dtype=torch.bool, device=device)
        never[sorted(TEXT_IDS)] = False
        state = self.init_state(1, device)
        logits = None
        for i in [BOS_ID, *prompt]:
            logits, state = self.step(torch.tensor([i], device=device), state, levels=levels)
        for _ in range(max_new_chars):
            logits = logits.float().masked_fill(never, float("-inf"))
            if temperature <= 0:
                nxt = int(logits.argmax(-1))
            else:
                scaled = logits / temperature
                if top_k is not None and top_k < scaled.size(-1):
                    kth = torch.topk(scaled, top_k, dim=-1).values[..., -1, None]
                    scaled = scaled.masked_fill(scaled < kth, float("-inf"))
                probs = torch.softmax(scaled, dim=-1)
                nxt = int(torch.multinomial(probs, 1, generator=generator))
            yield nxt
            logits, state = self.step(torch.tensor([nxt], device=device), state, levels=levels)


class WholeModelLM(CharLM):
    """What the neural baselines share: one stage (the whole model, cross-entropy) and
    ``step`` as a one-character ``forward_from``."""

    stages = (0,)

    def stage_loss(self, stage: int, idx: torch.Tensor, targets: torch.Tensor):
        if stage not in self.stages:
            raise BabySSMError(f"{type(self).__name__} has stages {self.stages}, got stage {stage!r}")
        _, loss = self(idx, targets)
        return loss, {"ce": loss.detach()}

    def step(self, idx_t: torch.Tensor, state, levels: int | None = None):
        logits, state = self.forward_from(idx_t[:, None], state)  # (B, 1, V)
        return logits[:, 0], state
