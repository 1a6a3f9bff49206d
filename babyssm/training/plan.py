"""The training plan: stage configs, the run config, stage lengths and word milestones.

Stages are data: a ``StageConfig`` per stage (its share of the budget, learning
rate, warm-up, floor, weight decay) and ``default_stages(model)`` the plan for a
model (levels 1/2/3 of the hierarchical model get 5/55/40 % of the budget; a
baseline, stage 0, gets it all). ``select_stages`` keeps one stage for ``--stage N``
and gives it the whole budget. ``TrainConfig`` holds everything else about a run;
``resumed_train_config`` rebuilds it from a checkpoint for ``--resume``.

Words (the BabyLM budget unit) are counted in ``babyssm.training.batches``. The
strict-small rules (BabyLM 2025) allow ``STRICT_SMALL_MAX_WORDS`` (100M: 10 epochs of
10M) and ask for checkpoints at ``BABYLM_WORD_MILESTONES`` (every 1M words up to 10M,
then every 10M up to 100M): ``TrainConfig.word_milestones`` (``parse_milestones``)
saves one when training first reaches each.

>>> [s.budget_fraction for s in select_stages([StageConfig(1, 0.05), StageConfig(2, 0.55)], "2")]
[1.0]
>>> [milestone_name(n) for n in (500, 2000, 1_000_000, 20_000_000)], parse_milestones("1k,2k")
(['500', '2k', '1M', '20M'], (1000, 2000))
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from babyssm.data.utterances import WINDOW_MODES, check_mode
from babyssm.errors import BabySSMError
from babyssm.models.config import check_positive_ints
from babyssm.models.lm import CharLM

STRICT_SMALL_MAX_WORDS = 100_000_000  # BabyLM 2025 strict-small: at most 10 epochs of 10M words
BABYLM_WORD_MILESTONES = (*range(1_000_000, 10_000_001, 1_000_000), *range(20_000_000, 100_000_001, 10_000_000))
_UNITS = {"k": 1_000, "M": 1_000_000}
PRECISIONS = ("auto", "float32", "bfloat16")


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
    0.95 - f, in the seed's 55 : 40 proportion. The learning rates come from the model's
    config (``stage_lrs`` and ``finetune_lr``; a baseline's ``lr``) and are starting points,
    not tuned results. A whole model's cross-entropy stage also takes its config's AdamW
    ``weight_decay`` and the schedule's floor ``min_lr_frac``.

    >>> from babyssm.models.config import ModelConfig
    >>> from babyssm.models.hierarchical import HierarchicalSSM
    >>> [round(s.budget_fraction, 3) for s in default_stages(HierarchicalSSM(ModelConfig(finetune_fraction=0.6)))]
    [0.05, 0.203, 0.147, 0.6]
    """
    if tuple(model.stages) == (1, 2, 3, 4):
        f = model.config.finetune_fraction
        rest = (0.95 - f) / 0.95  # stages 2 and 3 keep their proportion
        lr1, lr2, lr3 = model.config.stage_lrs
        plan = [
            StageConfig(1, 0.05, lr=lr1, warmup_frac=0.05),  # 65k parameters, a smooth MSE objective
            StageConfig(2, 0.55 * rest, lr=lr2, weight_decay=0.01),
            StageConfig(3, 0.40 * rest, lr=lr3, weight_decay=0.01),
        ]
        if f > 0:
            plan.append(StageConfig(4, f, lr=model.config.finetune_lr, weight_decay=0.01))
        return plan
    if tuple(model.stages) == (0,):
        return [_cross_entropy_stage(model.config, 1.0)]
    if tuple(model.stages) == (1, 0):  # a character map trained by diffusion first (babyssm.models.hlru)
        return [StageConfig(1, 0.05, lr=model.config.map_lr, warmup_frac=0.05),
                _cross_entropy_stage(model.config, 0.95)]
    return [StageConfig(s, 1.0 / len(model.stages)) for s in model.stages]


def _cross_entropy_stage(config: Any, budget_fraction: float) -> StageConfig:
    """Stage 0 of a whole model: its config's peak rate, schedule floor and AdamW decay."""
    return StageConfig(0, budget_fraction, lr=config.lr, min_lr_frac=config.min_lr_frac,
                       weight_decay=config.weight_decay)


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


def _setting(default: Any, help: str, **cli: Any) -> Any:
    """A TrainConfig field: its default, its help text and how its flag reads (babyssm.commands.args)."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class TrainConfig:
    """Every setting of a training run; ``babyssm train`` and ``babyssm baseline`` generate
    their flags from these fields (``babyssm.commands.args.add_config_flags``)."""

    batch_size: int = _setting(32, "B: windows per optimizer step on each rank", metavar="B", parse="count")
    seq_len: int = _setting(256, "T: characters per window (BOS + T-1 context characters)", metavar="T",
                            parse="count")
    max_chars: int | None = _setting(None, "budget: characters trained on, all ranks and stages together "
                                     "(e.g. 20e6)", metavar="N", parse="count", group="budget")
    max_minutes: float | None = _setting(None, "budget: wall-clock minutes (one budget must be given)",
                                         metavar="M", group="budget")
    eval_every: int = _setting(100, "steps between dev evaluations (and at the end of every stage)",
                               metavar="STEPS", parse="count")
    eval_chars: int = _setting(65536, "characters of the fixed dev subset; 0: no evaluation", metavar="N")
    log_every: int = _setting(10, "steps between metrics.jsonl rows", metavar="STEPS", parse="count")
    ckpt_every: int = _setting(250, "steps between checkpoints (and at the end of every stage)", metavar="STEPS",
                               parse="count")
    grad_clip: float = _setting(1.0, "largest global gradient norm", metavar="NORM")
    seed: int = _setting(0, "seed of the initial weights, the batch windows and the stages' noise", metavar="S")
    device: str = _setting("cpu", "cpu or cuda (bf16 autocast; under torchrun each rank takes cuda:LOCAL_RANK)",
                           choices=["cpu", "cuda"])
    halt_after_steps: int | None = _setting(None, "stop after this many steps (checkpointed); --resume continues "
                                            "(for time-sliced jobs)", metavar="STEPS", parse="count")
    word_milestones: tuple[int, ...] = _setting((), "save RUN_DIR/milestones/words_<n>/ when training first "
                                                "reaches n words: BabyLM's 1M..10M, 20M..100M without a value, "
                                                "else e.g. 500k,1M (see docs/BABYLM.md)",
                                                flag="--save-word-milestones", metavar="N,N,...", nargs="?",
                                                const="babylm", parse="milestones")
    windows: str = _setting("utterance", "where training windows start: utterance (at utterance starts, read "
                            "from BOS) or offset (anywhere, the earlier behaviour; for ablations)",
                            choices=list(WINDOW_MODES))
    compile: bool = _setting(False, "torch.compile the training step's forward and backward (fuses elementwise "
                             "work: hlru trains 1.2-1.5x faster on one CPU thread, benchmarks/train_speed.py "
                             "--compile); compiling takes a minute or two at the start of a run and of each stage")
    precision: str = _setting("auto", "dtype of the matrix products (torch.autocast; weights, optimizer state, "
                              "scans and losses stay float32): float32, bfloat16, or auto (bfloat16 on CUDA, "
                              "float32 on CPU). On a CPU with AMX or AVX512-BF16 units bfloat16 trains hlru "
                              "1.5-1.7x faster (benchmarks/train_speed.py --precision bfloat16); elsewhere it is "
                              "emulated and slower", choices=list(PRECISIONS))
    # Derived: characters one rank reads per step.
    window_chars: int = field(init=False)

    def __post_init__(self) -> None:
        check_positive_ints(self, ("batch_size", "seq_len", "eval_every", "log_every", "ckpt_every"), BabySSMError)
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
        check_mode(self.windows, "TrainConfig.windows")
        if self.precision not in PRECISIONS:
            raise BabySSMError(f"TrainConfig.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        self.window_chars = self.batch_size * self.seq_len


def resumed_train_config(saved: dict[str, Any], given: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of a resumed run: the ``saved`` one (a checkpoint's ``train_config``
    dict) with the options ``given`` now on top. ``halt_after_steps`` belongs to one
    invocation, so it is never inherited; the derived fields are computed afresh. A run
    saved before ``windows`` existed drew its windows at arbitrary offsets ("offset")."""
    fields = {f.name for f in dataclasses.fields(TrainConfig) if f.init} - {"halt_after_steps"}
    return TrainConfig(**{"windows": "offset", **{k: v for k, v in saved.items() if k in fields}, **given})


def resolve_precision(precision: str, device: str) -> str:
    """The dtype a run's matrix products use: "auto" is bfloat16 on CUDA and float32 on CPU (so
    that runs made before the option existed resume as they trained); the others as given.

    >>> resolve_precision("auto", "cuda:1"), resolve_precision("auto", "cpu"), resolve_precision("bfloat16", "cpu")
    ('bfloat16', 'float32', 'bfloat16')
    """
    if precision != "auto":
        return precision
    return "bfloat16" if device.startswith("cuda") else "float32"


def stage_steps(budget_fraction: float, max_chars: int, step_chars: int) -> int:
    """Optimizer steps of a stage under a char budget: its share, in whole steps, rounded up."""
    # The tolerance keeps 0.55 * 40 = 22.000000000000004 at 22 steps.
    return max(1, math.ceil(budget_fraction * max_chars / step_chars - 1e-9))


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
