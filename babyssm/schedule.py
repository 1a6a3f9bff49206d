"""The training plan: stage and run configs, the learning-rate schedule, batches, dev scoring.

Symbols: B batch (windows per step and rank), T time (characters per window),
c_i the character at position i of a split's .bin.

Stages are data: a ``StageConfig`` per stage (its share of the budget, learning
rate, warm-up, floor, weight decay) and ``default_stages(model)`` the plan for a
model (levels 1/2/3 of the hierarchical model get 5/55/40 % of the budget; a
baseline, stage 0, gets it all). ``select_stages`` keeps one stage for ``--stage N``
and gives it the whole budget. ``TrainConfig`` holds everything else about a run;
``resumed_train_config`` rebuilds it from a checkpoint for ``--resume``.

Schedule (``lr_at``, a pure function): linear warm-up over the first
``warmup_frac`` of a stage, then a cosine from ``lr`` down to ``lr * min_lr_frac``.
Under a char budget it is fed (steps done, steps in the stage); under a time budget,
where the step count is unknown in advance, (seconds spent, seconds in the stage);
with both, whichever is further along (see ``babyssm.train``).

Batches (``get_batch``): B random windows of T characters; a window is fed as
x = [BOS, c_i .. c_{i+T-2}] to predict y = [c_i .. c_{i+T-1}], from a fresh zero
state. No state is carried across windows: random windows decorrelate consecutive
batches, and BOS then means "start of context", which is how evaluation scores a
sentence (from BOS). ``dev_windows`` is the fixed dev subset: evenly spaced windows
of dev.bin, so every source is represented; ``evaluate`` scores it: the stage's own
objective (``dev_loss``) and, where the stage trains a language model, bits per
character (``dev_bpc``: stage 0 the model, stage 2 level 2 alone, stage 3 levels 2+3;
stage 1 trains the character encoder, which has no next-character distribution),
under a forked RNG with a fixed seed: the same noise at every evaluation, and
training's random streams are left untouched.

Words (the BabyLM budget unit): ``get_batch(..., with_words=True)`` also counts the
words that start in the batch, exactly: a character that is neither space nor
newline and follows one (the character before a window is read from the corpus,
and the corpus start counts as a newline). Summed over training, that is the
number of word tokens (whitespace-separated, as BabyLM counts its 10M words) whose
first character was trained on; a full pass over train.bin counts exactly its
word total. The strict-small rules (BabyLM 2025) allow ``STRICT_SMALL_MAX_WORDS``
(100M: 10 epochs of 10M) and ask for checkpoints at ``BABYLM_WORD_MILESTONES`` (every
1M words up to 10M, then every 10M up to 100M): ``TrainConfig.word_milestones``
(``parse_milestones``) saves one when training first reaches each.

>>> lr_at(0, 100, 1e-3, 0.1, 0.1), lr_at(10, 100, 1e-3, 0.1, 0.1), lr_at(100, 100, 1e-3, 0.1, 0.1)
(9.090909090909092e-05, 0.001, 0.0001)
>>> [s.budget_fraction for s in select_stages([StageConfig(1, 0.05), StageConfig(2, 0.55)], "2")]
[1.0]
>>> x, y = get_batch(np.frombuffer(b"hello world", np.uint8), 1, 4, torch.Generator().manual_seed(0), "cpu")
>>> x.tolist(), y.tolist()
([[0, 111, 32, 119]], [[111, 32, 119, 111]])
>>> count_words(np.frombuffer(b"o wo", np.uint8)[None], np.frombuffer(b"l", np.uint8))  # "o" ends "hello"
1
>>> [milestone_name(n) for n in (500, 2000, 1_000_000, 20_000_000)], parse_milestones("1k,2k")
(['500', '2k', '1M', '20M'], (1000, 2000))
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from babyssm.errors import BabySSMError
from babyssm.lm import CharLM
from babyssm.vocab import BOS_ID, NEWLINE_ID, SPACE_ID

STRICT_SMALL_MAX_WORDS = 100_000_000  # BabyLM 2025 strict-small: at most 10 epochs of 10M words
BABYLM_WORD_MILESTONES = (*range(1_000_000, 10_000_001, 1_000_000), *range(20_000_000, 100_000_001, 10_000_000))
_UNITS = {"k": 1_000, "M": 1_000_000}


@dataclass
class StageConfig:
    stage: int  # 0: a baseline LM trained whole; 1, 2, 3: a level of the hierarchical model
    budget_fraction: float = 1.0  # share of the run's char/time budget (renormalised over run stages)
    lr: float = 3e-3  # peak learning rate of AdamW
    warmup_frac: float = 0.02  # share of the stage spent warming up linearly to lr
    min_lr_frac: float = 0.1  # the cosine decays to lr * min_lr_frac at the end of the stage
    weight_decay: float = 0.0  # AdamW decay, applied to matrices only (never to vectors or scalars)


def default_stages(model: CharLM) -> list[StageConfig]:
    """The stage plan for ``model``: three levels get 5/55/40 % of the budget; a baseline all.

    A hierarchical model whose config sets ``finetune_fraction`` f > 0 gives stage 4
    (end-to-end fine-tuning) the share f; stages 2 and 3 split what stage 1 leaves,
    0.95 - f, in the seed's 55 : 40 proportion. The learning rates are starting points,
    not tuned results.

    >>> from babyssm.config import ModelConfig
    >>> from babyssm.model import HierarchicalSSM
    >>> [round(s.budget_fraction, 3) for s in default_stages(HierarchicalSSM(ModelConfig(finetune_fraction=0.6)))]
    [0.05, 0.203, 0.147, 0.6]
    """
    if tuple(model.stages) == (1, 2, 3, 4):
        f = model.config.finetune_fraction
        rest = (0.95 - f) / 0.95  # stages 2 and 3 keep their proportion
        plan = [
            StageConfig(1, 0.05, lr=1e-2, warmup_frac=0.05),  # 65k parameters, a smooth MSE objective
            StageConfig(2, 0.55 * rest, lr=3e-3, weight_decay=0.01),
            StageConfig(3, 0.40 * rest, lr=2e-3, weight_decay=0.01),
        ]
        if f > 0:
            plan.append(StageConfig(4, f, lr=model.config.finetune_lr, weight_decay=0.01))
        return plan
    if tuple(model.stages) == (0,):
        return [StageConfig(0, 1.0, lr=2e-3, weight_decay=0.1)]
    return [StageConfig(s, 1.0 / len(model.stages)) for s in model.stages]


def select_stages(stages: list[StageConfig], which: str) -> list[StageConfig]:
    """Keep ``which`` ("all", a stage number or several: "1,2"), renormalising the budget fractions."""
    if which == "all":
        chosen = stages
    else:
        wanted = {w.strip() for w in str(which).split(",")}
        chosen = [s for s in stages if str(s.stage) in wanted]
        if len(chosen) != len(wanted):  # a stage the plan does not have
            raise BabySSMError(f"--stage {which}: the plan has stages {[s.stage for s in stages]}")
    total = sum(s.budget_fraction for s in chosen)
    return [dataclasses.replace(s, budget_fraction=s.budget_fraction / total) for s in chosen]


@dataclass
class TrainConfig:
    batch_size: int = 32  # B: windows per optimizer step on each rank
    seq_len: int = 256  # T: characters per window (BOS + T-1 context characters)
    max_chars: int | None = None  # budget: characters trained on, all ranks and stages together
    max_minutes: float | None = None  # budget: wall-clock minutes; at least one budget must be set
    eval_every: int = 100  # steps between dev evaluations (and always at the end of a stage)
    eval_chars: int = 65536  # size of the fixed dev subset; 0 turns evaluation off
    log_every: int = 10  # steps between metrics.jsonl rows
    ckpt_every: int = 250  # steps between checkpoints (and always at the end of a stage)
    grad_clip: float = 1.0  # max global gradient norm
    seed: int = 0  # seeds the model init (CLI), the batch windows and the stage noise
    device: str = "cpu"  # "cpu" or "cuda" (bf16 autocast); DDP picks cuda:LOCAL_RANK
    halt_after_steps: int | None = None  # end this invocation (checkpointed) after N steps; --resume goes on
    word_milestones: tuple[int, ...] = ()  # save RUN_DIR/milestones/words_<n>/ on first reaching n words
    # Derived: characters one rank reads per step.
    window_chars: int = field(init=False)

    def __post_init__(self) -> None:
        for name in ("batch_size", "seq_len", "eval_every", "log_every", "ckpt_every"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise BabySSMError(f"TrainConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.seq_len < 2:
            raise BabySSMError(f"TrainConfig.seq_len must be at least 2, got {self.seq_len}")
        if self.max_chars is None and self.max_minutes is None:
            raise BabySSMError("no training budget: pass --max-chars N or --max-minutes M")
        if self.max_chars is not None and self.max_chars < 1:
            raise BabySSMError(f"TrainConfig.max_chars must be positive, got {self.max_chars}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise BabySSMError(f"TrainConfig.max_minutes must be positive, got {self.max_minutes}")
        if self.eval_chars < 0 or not self.grad_clip > 0:
            raise BabySSMError("TrainConfig.eval_chars must be >= 0 and grad_clip > 0")
        if self.device.split(":")[0] not in ("cpu", "cuda"):
            raise BabySSMError(f"TrainConfig.device must be cpu or cuda, got {self.device!r}")
        if any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in self.word_milestones):
            raise BabySSMError(f"TrainConfig.word_milestones must be positive word counts, got {self.word_milestones}")
        self.word_milestones = tuple(sorted(set(self.word_milestones)))  # JSON gives a list back
        self.window_chars = self.batch_size * self.seq_len


def resumed_train_config(saved: dict[str, Any], given: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of a resumed run: the ``saved`` one (a checkpoint's ``train_config``
    dict) with the options ``given`` now on top. ``halt_after_steps`` belongs to one
    invocation, so it is never inherited; the derived fields are computed afresh."""
    fields = {f.name for f in dataclasses.fields(TrainConfig) if f.init} - {"halt_after_steps"}
    return TrainConfig(**{**{k: v for k, v in saved.items() if k in fields}, **given})


def lr_at(step: float, total_steps: float, base_lr: float, warmup_frac: float, min_lr_frac: float) -> float:
    """Linear warm-up over the first ``warmup_frac`` of the stage, then cosine to
    ``min_lr_frac * base_lr``. ``step``/``total_steps`` may be seconds (time budgets)."""
    warmup = warmup_frac * total_steps
    if step < warmup:
        return base_lr * (step + 1) / (warmup + 1)  # never exactly 0: the first step counts
    p = min(1.0, (step - warmup) / max(total_steps - warmup, 1e-9))
    return base_lr * (min_lr_frac + (1 - min_lr_frac) * 0.5 * (1 + math.cos(math.pi * p)))


def stage_steps(budget_fraction: float, max_chars: int, step_chars: int) -> int:
    """Optimizer steps of a stage under a char budget: its share, in whole steps, rounded up."""
    # The tolerance keeps 0.55 * 40 = 22.000000000000004 at 22 steps.
    return max(1, math.ceil(budget_fraction * max_chars / step_chars - 1e-9))


def get_batch(data: np.ndarray, batch_size: int, seq_len: int, generator: torch.Generator,
              device: torch.device, with_words: bool = False):
    """x (B, T) = [BOS, window[:-1]], y (B, T) = window, for B random windows of ``data``;
    ``with_words`` adds the number of words starting in the windows (``count_words``)."""
    starts = torch.randint(len(data) - seq_len + 1, (batch_size,), generator=generator).tolist()
    windows = np.stack([data[i:i + seq_len] for i in starts])  # (B, T) uint8
    win = torch.from_numpy(windows.astype(np.int64))  # (B, T)
    x = torch.cat([torch.full((batch_size, 1), BOS_ID, dtype=torch.long), win[:, :-1]], dim=1)  # (B, T)
    x, y = x.to(device, non_blocking=True), win.to(device, non_blocking=True)
    if not with_words:
        return x, y
    before = np.array([data[i - 1] if i > 0 else NEWLINE_ID for i in starts], dtype=np.uint8)  # (B,)
    return x, y, count_words(windows, before)


def count_words(windows: np.ndarray, before: np.ndarray) -> int:
    """Words starting in ``windows`` (B, T): non-whitespace characters after a space or newline
    (``before`` (B,) holds the character preceding each window)."""
    text = np.concatenate([before[:, None], windows], axis=1)  # (B, T+1)
    space = (text == SPACE_ID) | (text == NEWLINE_ID)
    return int((space[:, :-1] & ~space[:, 1:]).sum())


def milestone_name(words: int) -> str:
    """1_000_000 -> "1M", 20_000 -> "20k", 1_500 -> "1500" (folder words_<name>, revision chck_<name>)."""
    for unit, size in reversed(_UNITS.items()):
        if words % size == 0:
            return f"{words // size}{unit}"
    return str(words)


def parse_milestones(text: str) -> tuple[int, ...]:
    """"babylm" -> BABYLM_WORD_MILESTONES; else comma-separated counts such as "500,1k,2M"."""
    if text == "babylm":
        return BABYLM_WORD_MILESTONES
    counts = []
    for part in text.split(","):
        part = part.strip()
        size = _UNITS.get(part[-1:], 1)
        number = part[:-1] if part[-1:] in _UNITS else part
        if not number.isdigit() or int(number) == 0:
            raise BabySSMError(f"word milestone {part!r} is not a positive count such as 500, 2k or 1M")
        counts.append(int(number) * size)
    return tuple(sorted(set(counts)))


def dev_windows(dev: np.ndarray, eval_chars: int, seq_len: int) -> torch.Tensor:
    """The fixed dev subset: evenly spaced windows (N, T) of ``dev``, covering every source."""
    n = max(1, eval_chars // seq_len)
    starts = np.linspace(0, len(dev) - seq_len, n).astype(np.int64)
    return torch.from_numpy(np.stack([dev[i:i + seq_len] for i in starts]).astype(np.int64))  # (N, T)


_LEVELS_FOR_STAGE = {0: None, 2: 2, 3: 3, 4: 3}  # the forward() levels whose bpc a stage improves


@torch.no_grad()
def evaluate(model: CharLM, windows: torch.Tensor, stage: int, batch_size: int, device: torch.device,
             autocast: Any, seed: int = 0) -> dict[str, float]:
    """Mean stage objective and bits per character on ``windows``, with fixed noise."""
    was_training = model.training
    model.eval()
    losses, ces = [], []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # the stage-1 noise is the same at every evaluation
        for w in windows.split(batch_size):
            y = w.to(device)  # (b, T)
            x = torch.cat([torch.full_like(y[:, :1], BOS_ID), y[:, :-1]], dim=1)  # (b, T)
            with autocast():
                losses.append(float(model.stage_loss(stage, x, y)[0]) * len(w))
                if stage in _LEVELS_FOR_STAGE:
                    ces.append(float(model(x, y, levels=_LEVELS_FOR_STAGE[stage])[1]) * len(w))
    model.train(was_training)
    out = {"dev_loss": sum(losses) / len(windows)}
    if ces:
        out["dev_bpc"] = sum(ces) / len(windows) / math.log(2)
    return out


def make_optimizer(params: list[torch.nn.Parameter], sc: StageConfig) -> torch.optim.AdamW:
    """AdamW for one stage; weight decay on matrices only (nanoGPT's betas: 0.9, 0.95)."""
    decay = [p for p in params if p.dim() >= 2]
    rest = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": sc.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=sc.lr, betas=(0.9, 0.95))
