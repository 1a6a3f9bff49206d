"""The exported hlru model for Hugging Face ``transformers``: a thin wrapper around babyssm's modules.

``babyssm export`` copies this file verbatim into the exported folder, beside
``hourglass.py``, ``lru.py``, ``attention.py``, ``levels.py``, ``config.py`` and ``scan.py`` copied verbatim
from ``babyssm/models/`` (``HLRU.hf_export``), and names its classes in ``config.json``'s
``auto_map``, so that

    AutoModelForCausalLM.from_pretrained(HF_DIR, trust_remote_code=True)

runs the very equations babyssm trains and scores with, on a machine without babyssm;
this file holds none of them. It imports torch, transformers and, by relative import,
those modules (transformers copies exactly the files a remote-code file imports that
way, hence one import from each). The weights keep babyssm's names.

Symbols: B batch, T time (tokens = characters), V vocabulary (128), D width (d_model).

``AutoModel`` gives ``HLRUModel``, whose ``last_hidden_state`` (B, T, D) is what the head
reads (``HourglassLRU.features_from``), for fine-tuning heads. ``config.json`` carries
every ``HLRUConfig`` field; ``scan_kernel`` ("auto": a loop on CPU, chunks on a GPU) may
be changed after loading. ``attention_mask``, masked positions get zero outputs:

- right padding (every row's tokens first, as the BabyLM pipeline and lm-eval score):
  a causal model's outputs at real positions never see the padding after them, so the
  batch runs as one forward; no ``hlru_state`` is returned, since its rows end at
  different positions;
- any other mask (left padding for batched generation, a state carried on): each row
  runs on its real tokens alone, so padding never enters a state and a padded row
  scores exactly like the unpadded one.

Generation reuses ``hlru_state`` (the recurrent state after ``ids``) whenever the new
``input_ids`` extend exactly those ids, else it recomputes from the start (exact for any
decoding method).

>>> model = HLRUForCausalLM(HLRUHFConfig(d_model=16, d_ff=24, d_word=12, d_word_ff=20)).eval()
>>> tuple(model(torch.tensor([[0, 72, 105, 32, 121]])).logits.shape)
(1, 5, 128)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput
from transformers.utils import ModelOutput

# One import from each shipped module: transformers copies the files the remote code imports relatively.
from .attention import LocalAttention  # noqa: F401
from .config import check_positive_ints  # noqa: F401
from .hourglass import HLRUConfig, HourglassLRU
from .levels import CharacterEncoder  # noqa: F401
from .lru import SCAN_KERNELS
from .scan import KERNELS  # noqa: F401

MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(HLRUConfig) if f.init)


class HLRUHFConfig(PretrainedConfig):
    model_type = "babyssm_hlru"
    attribute_map = {"hidden_size": "d_model"}

    def __init__(self, use_cache: bool = True, bos_token_id: int = 0, eos_token_id: int = 3, pad_token_id: int = 4,
                 **kwargs):
        model_config = HLRUConfig(**{name: kwargs.pop(name) for name in MODEL_FIELDS if name in kwargs})
        for name in MODEL_FIELDS:
            setattr(self, name, getattr(model_config, name))
        self.use_cache = use_cache  # return hlru_state, which generation reuses
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id, **kwargs)

    def model_config(self) -> HLRUConfig:
        return HLRUConfig(**{name: getattr(self, name) for name in MODEL_FIELDS})


def _rows(state: Any, fn) -> Any:
    """``fn`` applied to every tensor of a nested state (tuples and lists of (B, ...) tensors)."""
    if isinstance(state, torch.Tensor):
        return fn(state)
    return type(state)(_rows(s, fn) for s in state)


def _stack_rows(states: list[Any]) -> Any:
    """One batched state from B one-row states of the same structure."""
    if isinstance(states[0], torch.Tensor):
        return torch.cat(states, dim=0)
    return type(states[0])(_stack_rows(list(parts)) for parts in zip(*states))


@dataclass
class HLRUState:
    """The recurrent state after reading ``ids`` (B, T) under ``mask`` (B, T; 1 = real token)."""

    state: Any
    ids: torch.Tensor
    mask: torch.Tensor

    def continues(self, input_ids: torch.Tensor, mask: torch.Tensor | None) -> bool:
        T = self.ids.shape[1]
        if input_ids.shape[0] != self.ids.shape[0] or input_ids.shape[1] <= T:
            return False
        if not torch.equal(input_ids[:, :T], self.ids):
            return False
        new = mask[:, :T].long() if mask is not None else torch.ones_like(self.ids)
        return torch.equal(self.mask, new)


@dataclass
class HLRUCausalLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hlru_state: HLRUState | None = None


class HLRUPreTrainedModel(HourglassLRU, PreTrainedModel):
    """The modules, babyssm's weights under their own names, and ``run``: both entries' forward."""

    config_class = HLRUHFConfig
    base_model_prefix = "hlru"  # no module has this name: the flat babyssm keys load as they are
    main_input_name = "input_ids"

    def __init__(self, config: HLRUHFConfig):
        super().__init__(config)
        if config.scan_kernel not in SCAN_KERNELS:
            raise ValueError(f"scan_kernel must be one of {SCAN_KERNELS}, got {config.scan_kernel!r}")
        self.build_hourglass(config.model_config())
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Nothing to do: build_hourglass sets babyssm's initial values and loading replaces them."""

    def run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
            state: HLRUState | None = None, features: bool = False) -> tuple[torch.Tensor, HLRUState | None]:
        """Logits (B, T, V), or with ``features`` the features (B, T, D) under the head, and the state."""
        read = self.features_from if features else self.forward_from
        B, T = input_ids.shape
        carried = state.state if state is not None else self.init_state(B, input_ids.device)
        real = attention_mask[:, -T:].long() if attention_mask is not None else torch.ones_like(input_ids)
        if bool(real.all()):
            out, new = read(input_ids, carried)
        elif state is None and bool((real[:, 1:] <= real[:, :-1]).all()):
            # Right padding (how the BabyLM pipeline and lm-eval score): a causal model's outputs at
            # real positions never see the padding after them, so one batched forward is exact
            # there. Its rows end at different positions and no one state holds them all: none is
            # returned, and a later call recomputes from the ids (exact, as below).
            out, _ = read(input_ids, carried)
            return out.masked_fill(real[..., None] == 0, 0.0), None
        else:
            width = self.config.d_model if features else self.config.vocab_size
            out = torch.zeros(B, T, width, device=input_ids.device)
            rows = []
            for b in range(B):
                keep = real[b].bool()  # (T,)
                row = _rows(carried, lambda t: t[b:b + 1])
                if bool(keep.any()):
                    got, row = read(input_ids[b:b + 1, keep], row)
                    out[b, keep] = got[0].to(out.dtype)
                rows.append(row)
            new = _stack_rows(rows)
        ids = input_ids if state is None else torch.cat([state.ids, input_ids], dim=1)  # (B, T_seen)
        real = real if state is None else torch.cat([state.mask, real], dim=1)  # (B, T_seen)
        return out, HLRUState(new, ids, real)


class HLRUModel(HLRUPreTrainedModel):
    """The ``AutoModel`` entry: the features under the head (B, T, D) as ``last_hidden_state``
    (``config.hidden_size`` = d_model), what the pipeline's fine-tuning heads read."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                return_dict: bool | None = None, **kwargs):
        h, _ = self.run(input_ids, attention_mask, features=True)
        return BaseModelOutput(last_hidden_state=h) if return_dict is not False else (h,)


class HLRUForCausalLM(HLRUPreTrainedModel, GenerationMixin):
    """Next-character logits (B, T, V); ``labels`` give the mean cross-entropy of the shifted targets."""

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the recurrent state travels as ``hlru_state``, not in a key-value cache

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, hlru_state: HLRUState | None = None,
                use_cache: bool | None = None, return_dict: bool | None = None, **kwargs):
        logits, state = self.run(input_ids, attention_mask, hlru_state)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        state = state if (self.config.use_cache if use_cache is None else use_cache) else None
        if return_dict is False:
            return tuple(v for v in (loss, logits, state) if v is not None)
        return HLRUCausalLMOutput(loss=loss, logits=logits, hlru_state=state)

    def prepare_inputs_for_generation(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                                      hlru_state: HLRUState | None = None, use_cache: bool | None = None, **kwargs):
        """Feed only the new tokens when ``hlru_state`` belongs to a prefix of ``input_ids``."""
        if hlru_state is not None and hlru_state.continues(input_ids, attention_mask):
            input_ids = input_ids[:, hlru_state.ids.shape[1]:]
        else:
            hlru_state = None
        return {"input_ids": input_ids, "attention_mask": attention_mask, "hlru_state": hlru_state,
                "use_cache": use_cache}

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, *args, **kwargs):
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)
        model_kwargs["hlru_state"] = outputs.get("hlru_state") if isinstance(outputs, dict) else None
        return model_kwargs
