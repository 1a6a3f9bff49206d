"""The exported model for Hugging Face ``transformers``: a thin wrapper around babyssm's own modules.

``babyssm export`` copies this file verbatim into the exported folder, beside
``config.py``, ``scan.py`` and ``levels.py`` copied verbatim from ``babyssm/models/``
(``HierarchicalSSM.hf_export``), and names its classes in ``config.json``'s
``auto_map``, so that

    AutoModelForCausalLM.from_pretrained(HF_DIR, trust_remote_code=True)

works on a machine without babyssm (the BabyLM evaluation pipeline's) and runs the
very equations babyssm trains and scores with: this file holds none of them. It
imports torch, transformers and, by relative import, those modules (transformers
copies the files a remote-code file imports that way); inside the babyssm package
``babyssm.hf`` maps the same names to ``babyssm.models``. The weights keep babyssm's
names (``level1.weight``, ``level2.w_in1``, ...), so the export copies the state dict
unchanged. It loads under transformers 4.51.3 (the BabyLM 2025 pipeline's pin) and
5.x; tests check both against babyssm's own scores.

Symbols: B batch, T time (tokens = characters), V vocabulary (128), D d_model, N d_state.

``config.json`` carries every ``ModelConfig`` field (fields an older export lacks take
babyssm's defaults, and ``ModelConfig`` itself rejects a value it does not know),
plus ``levels`` (2: level 2 alone; 3: with level 3) and ``scan_kernel`` ("auto": a
loop on CPU, blocks on a GPU; "sequential"; "chunked"). ``attention_mask`` marks
padding, which the levels handle as their docstring says: a left-padded row scores
exactly like the unpadded one.

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

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput
from transformers.utils import ModelOutput

from .config import ModelConfig
from .levels import HierarchicalLevels
from .scan import KERNELS

MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.init)


class BabySSMConfig(PretrainedConfig):
    model_type = "babyssm"
    attribute_map = {"hidden_size": "d_model"}  # what fine-tuning heads read

    def __init__(self, levels: int = 3, scan_kernel: str = "auto", use_cache: bool = True, bos_token_id: int = 0,
                 eos_token_id: int = 3, pad_token_id: int = 4, **kwargs):
        # ModelConfig validates the fields and fills in those an older export lacks.
        model_config = ModelConfig(**{name: kwargs.pop(name) for name in MODEL_FIELDS if name in kwargs})
        for name in MODEL_FIELDS:
            setattr(self, name, getattr(model_config, name))
        if levels not in (2, 3) or scan_kernel not in KERNELS:
            raise ValueError(f"BabySSMConfig: levels must be 2 or 3 and scan_kernel one of {KERNELS}, "
                             f"got {levels!r}, {scan_kernel!r}")
        self.levels = levels  # 2: level 2 alone; 3: with level 3 (once it is trained)
        self.scan_kernel = scan_kernel  # "auto" (loop on CPU, chunks on GPU), "sequential", "chunked"
        self.use_cache = use_cache  # return ssm_state, which generation reuses
        kwargs.setdefault("tie_word_embeddings", False)  # the logits reuse E, but no matrix is tied
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id, **kwargs)

    def model_config(self) -> ModelConfig:
        return ModelConfig(**{name: getattr(self, name) for name in MODEL_FIELDS})


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


class BabySSMPreTrainedModel(HierarchicalLevels, PreTrainedModel):
    config_class = BabySSMConfig
    base_model_prefix = "babyssm"  # no module has this name: every class loads the same flat keys
    main_input_name = "input_ids"

    def __init__(self, config: BabySSMConfig):
        super().__init__(config)
        self.build_levels(config.model_config())
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Nothing to do: the levels set babyssm's initial values and loading replaces them."""

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the recurrent state travels as ``ssm_state``, not in a key-value cache

    def run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
            state: SSMState | None = None):
        """Predicted codes y (B, T, D), codes E and the state after the last position."""
        T = input_ids.shape[1]
        padded = None
        if attention_mask is not None and not bool(attention_mask[:, -T:].all()):
            padded = attention_mask[:, -T:, None] == 0  # (B, T, 1); generation passes the whole history's mask
        carried = (state.h2, state.s3) if state is not None else None
        y, codes, (h2, s3), _ = self.predict(input_ids, carried, self.config.levels, padded, self.config.scan_kernel)
        real = attention_mask[:, -T:].long() if attention_mask is not None else torch.ones_like(input_ids)
        ids = input_ids if state is None else torch.cat([state.ids, input_ids], dim=1)  # (B, T_seen)
        real = real if state is None else torch.cat([state.mask, real], dim=1)  # (B, T_seen)
        return y, codes, SSMState(h2, s3, ids, real)


class BabySSMModel(BabySSMPreTrainedModel):
    """The ``AutoModel`` entry: the combined prediction y (B, T, D) as ``last_hidden_state``."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                return_dict: bool | None = None, **kwargs):
        y, _, _ = self.run(input_ids, attention_mask)
        return BaseModelOutput(last_hidden_state=y) if return_dict is not False else (y,)


class BabySSMForCausalLM(BabySSMPreTrainedModel, GenerationMixin):
    """Next-character logits (B, T, V) of the hierarchical SSM; ``labels`` give the mean
    cross-entropy of the shifted targets (the transformers convention)."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, ssm_state: SSMState | None = None,
                use_cache: bool | None = None, return_dict: bool | None = None, **kwargs):
        y, codes, state = self.run(input_ids, attention_mask, ssm_state)
        logits = self.logits(y, codes)  # (B, T, V)
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
