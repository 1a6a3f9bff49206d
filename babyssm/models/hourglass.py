"""The hlru family's equations: character blocks around a word-level middle (torch only).

Symbols: B batch, T time (characters), M words in a window (boundaries), V vocabulary
(128), D d_model (character width), E d_word (word width), F / G MLP widths, K conv
width, c_t the input symbol at position t (c_0 = BOS), k(t) the number of
boundaries at or before t.

::

    x_t   = sqrt(D) Ê[c_t]                             Ê: unit-norm, centred rows of the (V, D) map
    e_t   = Enc(x)_t                                   n_encoder character blocks (babyssm.models.lru)
    boundaries: positions b_1 < b_2 < ... where c_b is BOS, a space or a newline (and
                 with ``boundaries`` "punct" one of . , ! ? ; :)
    w_j   = Word(rms(e_{b_j}) W_down)_j                n_word word blocks, once per word (E wide)
                                                       (the last ``word_attention`` of them mix by
                                                       attention over words: babyssm.models.attention)
    o_t   = Dec(e + (w_{k(t)} W_up))_t                 n_decoder character blocks (the first
                                                       ``char_attention`` of them mix by attention)
    logits_t = rms(o_t) W_head + b_head                ("linear" head)
             = -||rms(o_t) - Ê_c||^2 / tau             ("softnn": tied to the map, level 3's head)

The word level reads the encoder's output at each boundary: the character
recurrences have already pooled the word that boundary closes, and pooling by a
learned recurrence costs nothing extra. Its output w_j joins the residual stream
of every character after b_j up to and including the next boundary, so the word
"cat" reaches the decoder only from the space after it: at position t the model
sees c_0..c_t and predicts c_{t+1}, and w_{k(t)} depends on c_0..c_{b_k(t)} with
b_k(t) <= t. Strictly causal (tested by changing one character). The word blocks run
M ~ T/5 steps instead of T, which is where the family's speed comes from: they
can be wider than the character blocks at a fifth of the cost per parameter
(Hourglass, Nawrot et al. 2022; SpaceByte, Slagle 2024; H-Net, Hwang et al. 2025).

W_up starts at zero (``word_up_init`` "zero"), so an untrained model is exactly its
character stack and the word level joins as it learns something, rather than adding
random output to every character's residual stream from step 0 ("normal": N(0, 0.02),
the first version). Measured: 0.035 bits per character better at 1M characters with
the first sizes, 0.010 worse at 5M with the current ones (seeds differ by 0.007);
docs/RESULTS.md.

The character map: ``char_map`` "none" learns Ê with the rest by cross-entropy
(stages (0,)); "init" and "frozen" first train it by level 1's denoising diffusion
objective (``babyssm.models.levels.CharacterEncoder``, stage 1), then train everything
else by cross-entropy with the map trained further ("init") or fixed ("frozen").

State (``init_state``, ``forward_from``, ``step``): the encoder's, word level's and
decoder's block states and the last word vector w W_up (B, D): at the start, zeros.
A batch's rows close words at different positions; the word level runs on the M
boundaries of the row with most, padded at the end (padding follows every real word,
so it never reaches one), and each row's state is taken after its own last word.

``HourglassLRU`` holds the modules and the three forms (``forward_from``, ``step``,
``init_state``; ``features_from`` is ``forward_from`` stopped before the head, for the
export's fine-tuning entry); ``babyssm.models.hlru.HLRU`` adds training and the registry, and
``babyssm export`` ships this module, ``lru.py``, ``attention.py``, ``levels.py``, ``config.py``
and ``scan.py`` verbatim beside the Hugging Face wrapper (``babyssm/hf/modeling_hlru.py``).
It imports only torch, the standard library and those modules.

>>> from babyssm.models.hlru import HLRU
>>> model = HLRU(HLRUConfig(d_model=32, d_ff=64, d_word=48, d_word_ff=96, chunk_size=8))
>>> idx = torch.tensor([[0, 72, 105, 32, 121, 111]])
>>> logits, _ = model.forward_from(idx, model.init_state(1))
>>> state, steps = model.init_state(1), []
>>> for t in range(idx.size(1)):
...     out, state = model.step(idx[:, t], state)
...     steps.append(out)
>>> torch.allclose(torch.stack(steps, 1), logits, atol=1e-5)
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from .attention import AttentionState
from .config import check_positive_ints, check_rates
from .levels import CharacterEncoder, soft_nn_logits
from .lru import SCAN_KERNELS, Block, BlockState, RMSNorm, init_weights

# Symbols that close a word (babyssm.data.vocab's ids are the ASCII codes): BOS, newline and space;
# "punct" adds sentence and clause punctuation, so "cat." closes "cat" at the full stop and the
# space after it closes "." as a word of its own, as a word tokenizer would split them.
BOUNDARIES = {"space": (0, 10, 32), "punct": (0, 10, 32, *map(ord, ".,!?;:"))}
HEADS = ("linear", "softnn")
CHAR_MAPS = ("none", "init", "frozen")
WORD_UP_INITS = ("zero", "normal")


# The longest row's word count sets the word level's length, a shape only the data decides:
# under torch.compile the graph is cut here on purpose, without a graph-break warning.
@torch.compiler.disable
def _most_words(counts: torch.Tensor) -> int:
    return int(counts.max())


@dataclass
class HLRUConfig:
    vocab_size: int = 128  # V: babyssm.data.vocab's 7-bit ASCII symbols, id 0 = BOS
    d_model: int = 144  # D: character-level width (encoder and decoder blocks, the map, the head)
    d_ff: int = 384  # F: character blocks' SwiGLU width (~8/3 D)
    d_word: int = 224  # E: word-level width; the word blocks run ~5x less often than character ones
    d_word_ff: int = 512  # G: word blocks' SwiGLU width (~2.3 E)
    n_encoder: int = 2  # character blocks before the word level
    n_word: int = 1  # word blocks; 0 turns the word level off (a plain stack of character blocks)
    n_decoder: int = 2  # character blocks after the word level
    word_attention: int = 0  # the last N word blocks mix by attention over words (models.attention), not the LRU
    word_window: int = 64  # words such a query sees, itself included (its cache holds the 63 before)
    char_attention: int = 0  # the first N decoder blocks mix by attention over characters instead of the LRU
    char_window: int = 256  # characters such a query sees, itself included (= TrainConfig.seq_len)
    n_heads: int = 4  # H: heads of every attention mixer (d_word / H or d_model / H channels each)
    word_up_init: str = "zero"  # "zero": W_up starts at 0, the word level silent (see above); "normal": N(0, 0.02)
    boundaries: str = "space"  # BOUNDARIES: "space" (BOS, space, newline) or "punct" (also . , ! ? ; :)
    conv_size: int = 4  # K: causal depthwise conv in front of each recurrence; 1 = none (a per-channel scale)
    d_state: int = 1  # N: each recurrence's heads carry N x N matrix states (babyssm.models.lru); 1 = diagonal
    char_timescale: float = 64.0  # character decays start log-spaced over 1..64 characters
    word_timescale: float = 32.0  # word decays start log-spaced over 1..32 words
    head: str = "linear"  # "linear": untied head; "softnn": soft nearest neighbour tied to the map
    char_map: str = "none"  # "none" / "init" / "frozen": the diffusion-trained map (stage 1), see above
    scan_kernel: str = "auto"  # babyssm.models.lru.SCAN_KERNELS: auto = sequential on CPU, chunked elsewhere
    chunk_size: int = 32  # L: steps per block of the chunked scan
    norm_eps: float = 1e-6  # RMSNorm floor
    lr: float = 4e-3  # peak learning rate of the cross-entropy stage (better than 8e-3 at 5M characters)
    weight_decay: float = 0.1  # AdamW decay of the matrices in the cross-entropy stage (babyssm.training.plan)
    min_lr_frac: float = 0.1  # the cross-entropy stage's cosine ends at lr * min_lr_frac (0: decays to zero)
    map_lr: float = 1e-2  # peak learning rate of stage 1, the map's diffusion objective (char_map init/frozen)
    # Level 1's diffusion objective (stage 1, char_map "init"/"frozen"): babyssm.models.config.ModelConfig's values.
    diffusion_sigma_min: float = 0.1  # almost clean
    diffusion_sigma_max: float = 2.0  # mostly noise
    diffusion_prior_scale: float = 1.0  # weight of the neighbours' codes in the denoiser

    def __post_init__(self) -> None:
        check_positive_ints(self, ("vocab_size", "d_model", "d_ff", "d_word", "d_word_ff", "n_encoder", "n_decoder",
                                   "conv_size", "d_state", "chunk_size"))
        for name in ("n_word", "word_attention", "char_attention"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"HLRUConfig.{name} must be a non-negative integer, got {value!r}")
        check_positive_ints(self, ("n_heads", "word_window", "char_window"))
        for level, blocks, width, window in (("word", "n_word", "d_word", "word_window"),
                                             ("char", "n_decoder", "d_model", "char_window")):
            n = getattr(self, f"{level}_attention")
            if n > getattr(self, blocks):
                raise ValueError(f"HLRUConfig.{level}_attention ({n}) counts {blocks} blocks: at most "
                                 f"{blocks} ({getattr(self, blocks)})")
            if n and (getattr(self, width) % self.n_heads or getattr(self, window) < 2):
                raise ValueError(f"HLRUConfig: {level} attention needs {width} ({getattr(self, width)}) divisible "
                                 f"by n_heads ({self.n_heads}) and {window} >= 2, got {getattr(self, window)}")
        for name, choices in (("head", HEADS), ("char_map", CHAR_MAPS), ("scan_kernel", SCAN_KERNELS),
                              ("word_up_init", WORD_UP_INITS), ("boundaries", tuple(BOUNDARIES))):
            if getattr(self, name) not in choices:
                raise ValueError(f"HLRUConfig.{name} must be one of {choices}, got {getattr(self, name)!r}")
        for name in ("char_timescale", "word_timescale"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 1):
                raise ValueError(f"HLRUConfig.{name} must be a finite number >= 1, got {getattr(self, name)!r}")
        if not 0 < self.diffusion_sigma_min <= self.diffusion_sigma_max or not self.norm_eps > 0:
            raise ValueError("HLRUConfig: need 0 < diffusion_sigma_min <= diffusion_sigma_max and norm_eps > 0")
        for width in ("d_model",) + (("d_word",) if self.n_word > self.word_attention else ()):
            if getattr(self, width) % self.d_state:
                raise ValueError(f"HLRUConfig.d_state ({self.d_state}) must divide {width} ({getattr(self, width)}): "
                                 "each recurrence has width / d_state heads")
        check_rates(self, ("lr", "map_lr"))


State = tuple[list[BlockState], list[BlockState | AttentionState], list[BlockState | AttentionState], torch.Tensor]


class HourglassLRU:
    """The modules and the three forms of the equations above: a mixin for an ``nn.Module``
    (babyssm's ``HLRU``, the Hugging Face wrapper), which calls ``build_hourglass`` once and
    whose ``self.config`` has ``HLRUConfig``'s fields (read at run time: ``scan_kernel`` may change)."""

    def build_hourglass(self, config: HLRUConfig) -> None:
        c = config
        self.level1 = CharacterEncoder(c)  # the character map ("level 1"): weight (V, D); stage 1 trains it

        def blocks(n: int, width: int, hidden: int, timescale: float, attention: range = range(0), window: int = 0
                   ) -> nn.ModuleList:
            return nn.ModuleList(Block(width, hidden, c.conv_size, timescale, c.chunk_size, c.norm_eps,
                                       c.n_heads if i in attention else 0, window, c.d_state) for i in range(n))

        self.encoder = blocks(c.n_encoder, c.d_model, c.d_ff, c.char_timescale)
        if c.n_word:
            self.word_norm = RMSNorm(c.d_model, c.norm_eps)
            self.word_down = nn.Linear(c.d_model, c.d_word, bias=False)
            self.word = blocks(c.n_word, c.d_word, c.d_word_ff, c.word_timescale,
                               range(c.n_word - c.word_attention, c.n_word), c.word_window)
            self.word_up = nn.Linear(c.d_word, c.d_model, bias=False)
        self.decoder = blocks(c.n_decoder, c.d_model, c.d_ff, c.char_timescale, range(c.char_attention),
                              c.char_window)
        self.norm = RMSNorm(c.d_model, c.norm_eps)
        if c.head == "linear":
            self.head = nn.Linear(c.d_model, c.vocab_size)
        else:
            self.log_tau = nn.Parameter(torch.zeros(()))
        init_weights(self, c.n_encoder + c.n_word + c.n_decoder)
        nn.init.normal_(self.level1.weight)  # the map is normalised: its scale is irrelevant
        if c.n_word and c.word_up_init == "zero":
            nn.init.zeros_(self.word_up.weight)

    # -- pieces ---------------------------------------------------------------------------------
    def _embed(self, idx: torch.Tensor) -> torch.Tensor:
        return self.level1.codes()[idx] * math.sqrt(self.config.d_model)  # (B, T, D)

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        """Logits (..., V) of normalised features ``h`` (..., D)."""
        if self.config.head == "linear":
            return self.head(h)
        return soft_nn_logits(h / math.sqrt(self.config.d_model), self.level1.codes(), self.log_tau)

    def _boundary_ids(self, device) -> torch.Tensor:
        return torch.tensor(BOUNDARIES[self.config.boundaries], device=device)

    def _word_level(self, e: torch.Tensor, idx: torch.Tensor, states: list[BlockState | AttentionState],
                    last: torch.Tensor):
        """What the word level adds to each position (B, T, D), its states and the last word vector."""
        B, T, D = e.shape
        boundary = torch.isin(idx, self._boundary_ids(idx.device))  # (B, T)
        counts = boundary.sum(1)  # (B,)
        M = _most_words(counts)
        table = last[:, None].to(e.dtype)  # (B, 1, D): word vectors by k(t); 0 = the carried one
        if M:
            steps = torch.arange(T, device=idx.device)
            order = torch.where(boundary, steps, steps + T).argsort(dim=1)[:, :M]  # (B, M): boundaries first
            w = self.word_down(self.word_norm(e.gather(1, order[..., None].expand(B, M, D))))  # (B, M, E)
            new_states = []
            for block, state in zip(self.word, states):
                w, state = block(w, state, self.config.scan_kernel, lengths=counts)
                new_states.append(state)
            states = new_states
            table = torch.cat([table, self.word_up(w)], dim=1)  # (B, 1+M, D)
        k = boundary.long().cumsum(1)  # (B, T): k(t)
        added = table.gather(1, k[..., None].expand(B, T, D))  # (B, T, D)
        last = table.gather(1, counts[:, None, None].expand(B, 1, D))[:, 0]  # (B, D)
        return added, states, last

    def _run(self, blocks: nn.ModuleList, x: torch.Tensor, states: list[BlockState | AttentionState]):
        new = []
        for block, state in zip(blocks, states):
            x, state = block(x, state, self.config.scan_kernel)
            new.append(state)
        return x, new

    # -- the three forms ------------------------------------------------------------------------
    def forward_from(self, idx: torch.Tensor, state: State, levels: int | None = None):
        """Logits (B, T, V) of ``idx`` (B, T) continuing from ``state``, and the state after it."""
        h, state = self.features_from(idx, state)
        return self._head(h), state

    def features_from(self, idx: torch.Tensor, state: State):
        """The normalised features (B, T, D) the head reads, continuing from ``state``, and the state
        after them (the export's ``AutoModel`` output, for fine-tuning heads)."""
        enc_states, word_states, dec_states, last = state
        e, enc_states = self._run(self.encoder, self._embed(idx), enc_states)
        if self.config.n_word:
            added, word_states, last = self._word_level(e, idx, word_states, last)
            e = e + added
        o, dec_states = self._run(self.decoder, e, dec_states)
        return self.norm(o), (enc_states, word_states, dec_states, last)

    def step(self, idx_t: torch.Tensor, state: State, levels: int | None = None):
        """Logits (B, V) after one symbol per row ``idx_t`` (B,): constant cost per character."""
        enc_states, word_states, dec_states, last = state
        x = self._embed(idx_t)  # (B, D)
        new_enc = []
        for block, s in zip(self.encoder, enc_states):
            x, s = block.step(x, s)
            new_enc.append(s)
        if self.config.n_word:
            closes = torch.isin(idx_t, self._boundary_ids(idx_t.device))  # (B,)
            w = self.word_down(self.word_norm(x))  # (B, E); kept only where a word closes
            new_word = []
            for block, s in zip(self.word, word_states):
                w, s = block.step(w, s, advance=closes)
                new_word.append(s)
            word_states = new_word
            last = torch.where(closes[:, None], self.word_up(w), last)
            x = x + last
        new_dec = []
        for block, s in zip(self.decoder, dec_states):
            x, s = block.step(x, s)
            new_dec.append(s)
        return self._head(self.norm(x)), (new_enc, word_states, new_dec, last)

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        def states(blocks) -> list[BlockState | AttentionState]:
            return [b.init_state(batch_size, device) for b in blocks]

        word = states(self.word) if self.config.n_word else []
        last = torch.zeros(batch_size, self.config.d_model, device=device)
        return states(self.encoder), word, states(self.decoder), last
