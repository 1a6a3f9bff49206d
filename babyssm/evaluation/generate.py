"""The inference probe: stream text from a trained model, one character at a time.

Symbols: V vocabulary (128), c a symbol id, k top-k, tau temperature.

``babyssm generate --ckpt RUN_DIR --prompt TEXT`` cleans the prompt exactly as the
training text was cleaned (``babyssm.data.clean.clean_text``: ASCII folding, whitespace
normalisation), encodes it, feeds BOS + prompt through the model's recurrent ``step``
and then samples: p(c) = softmax(logits / tau) restricted to the k likeliest symbols
(tau 0 is greedy decoding). Each sampled character is written to stdout and flushed
at once. Decoding costs the same for every character (a recurrent state, no
attention over the past), so long outputs do not slow down.

The model is the run's own: ``levels`` defaults to 3 once stage 3 has completed,
else 2 (``info["default_levels"]``). Only symbols that cleaned text can hold are
sampled (``CharLM.generate`` masks BOS and the unused control codes), so exactly
``--max-chars`` characters follow the prompt.

Example (a run trained by ``babyssm train``; prints the cleaned prompt, then 40
sampled characters, the same ones for the same seed)::

    $ babyssm generate --ckpt work/run --prompt "Once upon a time" --max-chars 40 --seed 0

>>> import torch
>>> from babyssm.models.presets import get_preset
>>> from babyssm.models.hierarchical import HierarchicalSSM
>>> _ = torch.manual_seed(0)
>>> model = HierarchicalSSM(get_preset("tiny"))
>>> len("".join(generate_text(model, "Hi", new_chars=5, temperature=0)))
5
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from babyssm.errors import BabySSMError
from babyssm.models.lm import CharLM
from babyssm.data.vocab import encode


def clean_prompt(prompt: str) -> list[int]:
    """Clean ``prompt`` the way the corpus was cleaned and encode it to symbol ids."""
    from babyssm.data.clean import clean_text

    return encode(clean_text(prompt))


def generate_text(
    model: CharLM,
    prompt: str,
    new_chars: int,
    temperature: float = 0.8,
    top_k: int | None = 20,
    seed: int = 0,
    levels: int | None = None,
) -> Iterator[str]:
    """Yield ``new_chars`` sampled characters continuing the cleaned ``prompt``."""
    if new_chars < 0:
        raise BabySSMError(f"--new-chars must be >= 0, got {new_chars}")
    if not temperature >= 0:
        raise BabySSMError(f"--temperature must be >= 0 (0 is greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise BabySSMError(f"--top-k must be at least 1, got {top_k}")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    model.eval()
    ids = clean_prompt(prompt)
    # A plain function returning a generator: bad arguments fail here, before any output.
    return (chr(i) for i in model.generate(ids, new_chars, temperature=temperature, top_k=top_k,
                                              generator=generator, levels=levels))
