"""The training loop: stages in order, a char or time budget, exact resume, DDP.

Symbols: B batch (windows per step and rank), T time (characters per window),
W world size (DDP processes).

``train(model, data_dir, out_dir, config, stages)`` trains a model's stages in order
(the plan and configs: ``babyssm.training.plan``; the schedule:
``babyssm.training.schedule``; the batches: ``babyssm.training.batches``).
Each stage gets its share of the budget, a fresh AdamW
over ``model.stage_parameters(stage)`` (everything else frozen), gradient clipping
and its ``lr_at`` schedule. A char-budget run is exactly reproducible: the batch
windows come from a ``torch.Generator`` seeded by (seed, rank), and every checkpoint
holds it and the global RNG states, so ``resume=True`` continues as if never
stopped. A time-budget run depends on the machine's speed.

``config.compile`` (``--compile``) runs each step's ``stage_loss`` through ``torch.compile``,
which fuses the elementwise work between the matrix products (norms, gates, the
convolution, the loss); ``babyssm.models.scan`` keeps its sequential loop out of the
graph. The weights, checkpoints and evaluation are those of the eager model, and the
losses follow the eager run's (tests/test_hlru.py).

``config.precision`` (``--precision``, ``plan.resolve_precision``) runs the training step
and the dev evaluation under bfloat16 autocast (the default on CUDA; on CPU where asked):
the matrix products run in bfloat16, the weights, AdamW's state, the scans
(``babyssm.models.scan``) and the losses stay float32. The resolved dtype is recorded in
``run_info``.

Evaluation (``babyssm.training.batches.evaluate``): every ``eval_every`` steps and at the
end of each stage, on the fixed dev subset. Files in RUN_DIR: ``metrics.jsonl`` (a
JSON row per log step), ``loss_stage{S}.png`` per stage, after stage 1
``level1_report.json`` and ``embedding_pca.png`` (figures: ``babyssm.plots``), and the
checkpoint (``babyssm.training.checkpoint``), whose ``progress`` is a ``Progress``.

Guards (issue 12): rank 0 holds the run folder's lock (``babyssm.training.runfolder``)
for the whole call and first removes temporary files a killed write left. Each step
checks the loss and the gradient norm before the update (one host sync per step; the
ranks agree through an all-reduce); the end of a stage checks the weights and the dev
evaluation, stage 1 its character codes. Anything non-finite raises ``Diverged`` (one
line: step, stage, the last good checkpoint, which stays on disk; exit status 2) instead
of being stepped, logged or saved: a run stops rather than skip steps, since a skipped
step would silently change the trajectory that ``--resume`` reproduces. ``--resume``
verifies what it loads (``_verify_resumed``). Under DDP every such decision is collective
(``Ranks.agree``): rank 0 alone evaluates, so its verdict, or any rank's, reaches every
rank, and all ranks stop at the same point with the same message. Fault injection, for tests:
``BABYSSM_INJECT_NAN_AT_STEP=N`` makes step N's loss NaN (on every rank), and
``BABYSSM_INJECT_NAN_EVAL_AT_STEP=N`` the dev evaluation made at step N (rank 0's alone,
the one that evaluates).

Words (see ``babyssm.training.batches``): ``words_seen`` sums every rank's words; with
``word_milestones`` the first step at or past each count saves ``milestones/words_<n>/``
(weights + config.json); past BabyLM's 100M words it warns once.

DDP (``babyssm.training.distributed``): launched by torchrun, each rank draws its own
windows and the gradients are averaged after backward; rank 0 evaluates and writes
every file. The budget counts all ranks' characters: B x T x W per step.

Example (tests/test_train.py runs the same on a small corpus)::

    summary = train(model, "work/prepared", "work/run", TrainConfig(max_chars=2_000_000))
    summary["stages"]["2"]["dev_bpc"]

The command line (``babyssm train``) is ``babyssm.commands.train``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from tqdm import tqdm

from babyssm.data.prepared import load_split
from babyssm.data.utterances import split_starts
from babyssm.errors import BabySSMError
from babyssm.evaluation.level1 import level1_report
from babyssm.io import atomic_write_json
from babyssm.models.lm import CharLM, config_of
from babyssm.plots import plot_embedding_pca, plot_stage_losses
from babyssm.training import checkpoint as ckpt
from babyssm.training import runfolder
from babyssm.training.batches import dev_windows, evaluate, get_batch
from babyssm.training.distributed import Ranks
from babyssm.training.plan import (STRICT_SMALL_MAX_WORDS, StageConfig, TrainConfig, default_stages, milestone_name,
                                   resolve_precision, stage_steps)
from babyssm.training.schedule import lr_at, make_optimizer

# Fault injection (benchmarks/fault_injection.py, tests): the loss of this global step becomes NaN.
INJECT_NAN_ENV = "BABYSSM_INJECT_NAN_AT_STEP"
# Fault injection (tests/test_ddp.py): the dev evaluation made at this global step reports a NaN loss.
INJECT_NAN_EVAL_ENV = "BABYSSM_INJECT_NAN_EVAL_AT_STEP"
# Trajectory fields: changing one of these on --resume would not continue the same run.
_TRAJECTORY_FIELDS = ("batch_size", "seq_len", "max_chars", "max_minutes", "grad_clip", "seed", "windows")


def native_cpu_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AMX tiles or AVX512-BF16)."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # private: a torch release may lack them
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def warn_if_emulated_bfloat16(device_type: str) -> None:
    """One stderr line when bfloat16 autocast would run on a CPU without bfloat16 units (train and eval)."""
    if device_type == "cpu" and not native_cpu_bfloat16():
        print("babyssm: warning: --precision bfloat16 on a CPU without AMX or AVX512-BF16 units is emulated "
              "and slower than float32", file=sys.stderr)


def train(model: CharLM, data_dir: str | os.PathLike, out_dir: str | os.PathLike, config: TrainConfig,
          stages: list[StageConfig] | None = None, resume: bool = False,
          init_from: str | os.PathLike | None = None, command: str | None = None) -> dict[str, Any]:
    """Train ``model`` on PREPARED_DIR/train.bin through ``stages``; write RUN_DIR.

    ``resume`` continues the run saved in ``out_dir`` exactly (same config required);
    ``init_from`` starts from another run's weights and inherits its completed stages.
    Returns the summary (on rank 0): per-stage dev bpc, characters and seconds.
    """
    if resume and init_from is not None:
        raise BabySSMError("--init starts a new run from old weights, --resume continues a run: pick one")
    env = Ranks(config.device)
    try:
        with runfolder.RunLock(out_dir) if env.lead else contextlib.nullcontext():
            return _Run(model, Path(data_dir), Path(out_dir), config, stages, env).go(resume, init_from, command)
    finally:
        env.close()


@dataclasses.dataclass
class Progress:
    """Where a run stands: saved in every checkpoint (train_state.pt's "progress") and resumed."""

    stage_index: int = 0  # the stage being trained: an index into the plan
    stage_step: int = 0  # optimizer steps done in that stage
    global_step: int = 0  # optimizer steps done in the run
    stage_seconds: float = 0.0  # training time spent in the stage
    stage_chars: int = 0  # characters trained on in the stage, all ranks together
    chars_seen: int = 0  # characters trained on in the run (and the --init run before it), all ranks
    words_seen: int = 0  # words whose first character was trained on (BabyLM's budget unit)
    train_seconds: float = 0.0  # training time of the finished stages
    stage_results: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # per finished stage
    stages_completed: list[int] = dataclasses.field(default_factory=list)
    init_from: str | None = None  # the run whose weights this one started from
    commands: list[str] = dataclasses.field(default_factory=list)  # every command line that trained the run

    def start_stage(self, index: int) -> None:
        self.stage_index, self.stage_step, self.stage_seconds, self.stage_chars = index, 0, 0.0, 0


class Diverged(BabySSMError):
    """A non-finite loss, gradient, weight or evaluation: the run stops, its last checkpoint kept."""


class _Run:
    """One invocation of ``train``: state, files and the loop (split out for readability)."""

    def __init__(self, model, data_dir, out_dir, config, stages, env):
        self.model, self.out, self.config, self.env = model.to(env.device), out_dir, config, env
        self.stages = list(stages) if stages is not None else default_stages(model)
        for s in self.stages:
            if s.stage not in model.stages:
                raise BabySSMError(f"stage {s.stage} is not a stage of {model.model_type} (stages {model.stages})")
        self.train_data = load_split(data_dir, "train")
        if len(self.train_data) < config.seq_len:
            raise BabySSMError(f"{data_dir}/train.bin holds {len(self.train_data)} characters, "
                               f"fewer than --seq-len {config.seq_len}")
        # Utterance starts are a pure function of the data: a resumed run draws the same windows.
        self.train_starts = split_starts(data_dir, "train", self.train_data) if config.windows == "utterance" else None
        self.dev = None
        if config.eval_chars:
            dev = load_split(data_dir, "dev")
            if len(dev) < config.seq_len:
                raise BabySSMError(f"{data_dir}/dev.bin holds {len(dev)} characters, fewer than --seq-len "
                                   f"{config.seq_len}; pass --eval-chars 0 to train without evaluation")
            self.dev = dev_windows(dev, config.eval_chars, config.seq_len,
                                   split_starts(data_dir, "dev", dev) if config.windows == "utterance" else None)
        self.data_dir = data_dir
        self.gen = torch.Generator().manual_seed(config.seed * 1_000_003 + env.rank)
        self.precision = resolve_precision(config.precision, env.device.type)
        self.autocast = ((lambda: torch.autocast(env.device.type, dtype=torch.bfloat16))
                         if self.precision == "bfloat16" else contextlib.nullcontext)
        # Only the training step is compiled: evaluation and generation see other shapes and no
        # gradients, and would each cost a compilation for a few calls.
        self.stage_loss = torch.compile(self.model.stage_loss) if config.compile else self.model.stage_loss
        self.p = Progress()
        self.metrics = out_dir / "metrics.jsonl"
        self.lead = env.lead
        if self.precision == "bfloat16" and self.lead:
            warn_if_emulated_bfloat16(env.device.type)
        self.steps_run = 0  # optimizer steps in this invocation (for halt_after_steps)
        self.saved_step: int | None = None  # global step of the checkpoint on disk (for messages)
        self.inject_nan_at = int(os.environ.get(INJECT_NAN_ENV) or 0) or None
        self.inject_nan_eval_at = int(os.environ.get(INJECT_NAN_EVAL_ENV) or 0) or None

    # -- setup ---------------------------------------------------------------------------------
    def go(self, resume: bool, init_from, command: str | None = None) -> dict[str, Any]:
        if self.lead:
            stale = runfolder.remove_stale_temps(self.out)
            if stale:
                print(f"babyssm: removed {len(stale)} temporary file(s) left in {self.out} by an interrupted write: "
                      f"{', '.join(p.name for p in stale[:3])}", file=sys.stderr)
        saved = self._resume() if resume else self._fresh(init_from)
        self.run_info = {**ckpt.run_info(self.config.seed, self.env.world, str(self.env.device)),
                         "precision": self.precision}
        if saved is not None and self.lead:
            self._verify_resumed(saved)
        if command is not None:
            self.p.commands.append(command)
        self.model.train()
        for si in range(self.p.stage_index, len(self.stages)):
            if not self._stage(si, saved if saved and saved["progress"]["stage_index"] == si else None):
                return self._summary(halted=True)
            saved = None
        return self._summary(halted=False)

    def _fresh(self, init_from) -> None:
        if (self.out / ckpt.CONFIG_FILE).exists():
            raise BabySSMError(f"{self.out} already holds a run; pass --resume to continue it or choose another --out")
        if init_from is not None:
            prior = ckpt.read_config(init_from)
            if prior["model_type"] != self.model.model_type:
                raise BabySSMError(f"--init {init_from} holds a {prior['model_type']}, not a {self.model.model_type}")
            prior_config = config_of(prior["model_type"], prior["config"])  # fields added since at their defaults
            same = ckpt.config_dict(prior_config) == ckpt.config_dict(self.model.config)
            # A changed config (--set) reuses only what the earlier run trained and this run does
            # not train again: a new level 3 on a trained level 2 starts from a fresh level 3.
            kept = [s for s in prior.get("stages_completed", []) if s not in {sc.stage for sc in self.stages}]
            prefixes = None if same else self.model.stage_weight_prefixes(kept)
            ckpt.verify_file(init_from, ckpt.WEIGHTS_FILE, prior)
            ckpt.load_weights(self.model, init_from, self.env.device, prefixes)
            ckpt.check_finite(self.model, Path(init_from) / ckpt.WEIGHTS_FILE)
            for key in ("chars_seen", "words_seen", "train_seconds", "stage_results", "stages_completed", "commands"):
                setattr(self.p, key, prior.get(key, getattr(self.p, key)))
            self.p.init_from = str(init_from)
        torch.manual_seed(self.config.seed + self.env.rank)  # the stages' own noise (diffusion, dropout)
        self.env.broadcast_weights(self.model)
        if self.lead:
            self.out.mkdir(parents=True, exist_ok=True)
            self.metrics.write_text("")
        return None

    def _resume(self) -> dict[str, Any]:
        saved = ckpt.load_train_state(self.out, self.env.device)
        given = dataclasses.asdict(self.config)
        for name in _TRAJECTORY_FIELDS:
            was = saved["train_config"].get(name, "offset" if name == "windows" else None)  # runs before windows
            if was != given[name]:
                raise BabySSMError(f"--resume: {name} is {given[name]} but the run in {self.out} used "
                                   f"{was}; resume with the saved value")
        if saved["stages"] != [dataclasses.asdict(s) for s in self.stages]:
            raise BabySSMError(f"--resume: the stage plan differs from the one saved in {self.out}")
        if saved["world_size"] != self.env.world:
            raise BabySSMError(f"--resume: the run used {saved['world_size']} processes, this has {self.env.world}")
        state_path = self.out / ckpt.STATE_FILE
        ckpt.fit_check(self.model, {k: tuple(v.shape) for k, v in saved["model"].items()}, state_path,
                       f"{self.out / ckpt.CONFIG_FILE}")
        try:
            self.model.load_state_dict(saved["model"])
        except RuntimeError as e:  # names missing or unexpected: a file of another model type
            raise BabySSMError(f"{state_path} does not fit the model of {self.out / ckpt.CONFIG_FILE}: "
                               f"{' '.join(str(e).split())[:300]}") from None
        bad = ckpt.first_nonfinite(saved["model"]) or ckpt.first_nonfinite(saved["optimizer"], "optimizer")
        if bad is not None:
            raise Diverged(f"{state_path} holds non-finite values ({bad}): it was saved by a diverged run "
                           "before babyssm refused to; retrain")
        self.p = Progress(**saved["progress"])  # runs saved before words or commands were recorded: none
        self.saved_step = self.p.global_step
        self.gen.set_state(saved["batch_rng"][self.env.rank])
        ckpt.set_rng_state(saved["rng"][self.env.rank])
        if self.lead:
            with open(self.metrics, "ab") as f:  # drop rows logged after the checkpoint: they come again
                f.truncate(saved["metrics_bytes"])
        return saved

    def _verify_resumed(self, saved: dict[str, Any]) -> None:
        """Say what --resume loaded; rewrite the checkpoint's other files from train_state.pt (the
        unit resume trusts: one atomic file, shapes checked) when they do not match it."""
        state_path = self.out / ckpt.STATE_FILE
        step = saved["progress"]["global_step"]
        config = ckpt.read_config(self.out, flag="--out")
        problem = None
        try:
            hashed = ckpt.verify_file(self.out, ckpt.STATE_FILE, config)
            hashed = ckpt.verify_file(self.out, ckpt.WEIGHTS_FILE, config) and hashed
            if config.get("step") != step:
                problem = f"{ckpt.CONFIG_FILE} records step {config.get('step')}"
            elif not hashed:  # a run saved before manifests: compare the weights themselves
                on_disk = safetensors.torch.load_file(self.out / ckpt.WEIGHTS_FILE)
                if any(not torch.equal(on_disk[k].cpu(), v.cpu()) for k, v in saved["model"].items() if k in on_disk):
                    problem = f"{ckpt.WEIGHTS_FILE} holds other weights"
        except BabySSMError as e:
            problem = str(e).split(" (sha256")[0]
        except Exception as e:  # safetensors' own errors for a truncated or garbled file
            problem = f"{ckpt.WEIGHTS_FILE} is unreadable ({type(e).__name__})"
        where = f"step {step} (stage {self.stages[min(saved['progress']['stage_index'], len(self.stages) - 1)].stage})"
        digest = ckpt.sha256_file(state_path)[:12]
        if problem is None:
            print(f"babyssm: resuming {self.out} at {where}: {ckpt.STATE_FILE} (sha256 {digest}...) loaded, "
                  f"shapes match the config, {ckpt.WEIGHTS_FILE} and {ckpt.CONFIG_FILE} verified", file=sys.stderr)
            return
        ckpt.save_checkpoint(self.out, self.model, self._record(), saved)
        print(f"babyssm: resuming {self.out} at {where}: {ckpt.STATE_FILE} (sha256 {digest}...) loaded, shapes "
              f"match the config; {problem}, so the checkpoint was rewritten from {ckpt.STATE_FILE}", file=sys.stderr)

    # -- one stage -----------------------------------------------------------------------------
    def _stage(self, si: int, saved: dict[str, Any] | None) -> bool:
        """Train stage ``si`` to its budget; False when halted early by halt_after_steps."""
        cfg, sc, p = self.config, self.stages[si], self.p
        params = self.model.stage_parameters(sc.stage)
        opt = make_optimizer(params, sc)
        if saved is not None and saved["optimizer"] is not None:
            opt.load_state_dict(saved["optimizer"])
        else:
            p.start_stage(si)
        step_chars = cfg.window_chars * self.env.world
        total_steps = stage_steps(sc.budget_fraction, cfg.max_chars, step_chars) if cfg.max_chars else None
        budget_s = sc.budget_fraction * cfg.max_minutes * 60 if cfg.max_minutes else None
        bar = tqdm(total=total_steps, desc=f"stage {sc.stage}", unit="step", initial=p.stage_step,
                   disable=None if self.lead else True, dynamic_ncols=True)
        clock, seconds_before, steps, busy = time.perf_counter(), p.stage_seconds, 0, 0.0
        while True:
            p.stage_seconds = seconds_before + time.perf_counter() - clock
            if budget_s is not None:
                p.stage_seconds = self.env.lead_clock(p.stage_seconds)
            progress = [(p.stage_step, total_steps)] if total_steps else []
            progress += [(p.stage_seconds, budget_s)] if budget_s else []
            done, total = max(progress, key=lambda d: d[0] / d[1])  # whichever budget is further along
            if done >= total:
                break
            if cfg.halt_after_steps is not None and self.steps_run >= cfg.halt_after_steps:
                bar.close()
                self._checkpoint(opt)
                return False
            lr = lr_at(done, total, sc.lr, sc.warmup_frac, sc.min_lr_frac)
            t0 = time.perf_counter()
            loss, extra, grad_norm, words = self._step(sc.stage, params, opt, lr)
            busy += time.perf_counter() - t0
            steps += 1
            self.steps_run += 1
            p.stage_step += 1
            p.global_step += 1
            p.stage_chars += step_chars
            p.chars_seen += step_chars
            p.words_seen += words
            self._word_events(p.words_seen - words)
            bar.update(1)
            evaluate_now = p.stage_step % cfg.eval_every == 0
            if p.stage_step % cfg.log_every == 0 or evaluate_now:
                row = {"step": p.global_step, "stage": sc.stage, "stage_step": p.stage_step,
                       "chars": p.chars_seen, "words": p.words_seen, "lr": lr, "loss": self.env.mean(loss),
                       "grad_norm": float(grad_norm),
                       "chars_per_s": steps * step_chars / busy, "elapsed": p.train_seconds + p.stage_seconds,
                       **{k: float(v) for k, v in extra.items()}}
                if evaluate_now and self.dev is not None:
                    scores = self._evaluate(sc.stage)
                    bad = self.env.agree(ckpt.first_nonfinite(scores))
                    if bad is not None:
                        self._diverged(f"the dev evaluation's {bad} is not finite", sc.stage)
                    row.update(scores)
                    if self.lead:
                        self._say(bar, row)
                self._log(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", cps=f"{row['chars_per_s']:,.0f}")
            if p.stage_step % cfg.ckpt_every == 0:
                self._checkpoint(opt)
        bar.close()
        self._finish_stage(sc)
        return True

    def _step(self, stage: int, params: list[torch.nn.Parameter], opt: torch.optim.Optimizer, lr: float):
        """One optimizer step on a fresh batch: (loss, the stage's metrics, gradient norm, words of all ranks)."""
        for g in opt.param_groups:
            g["lr"] = lr
        x, y, words = get_batch(self.train_data, self.config.batch_size, self.config.seq_len, self.gen,
                                self.env.device, with_words=True, starts=self.train_starts)
        words = self.env.total(words)
        with self.autocast():
            loss, extra = self.stage_loss(stage, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        self.env.sync_grads(params)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        if self.inject_nan_at == self.p.global_step + 1:
            loss = loss * float("nan")
        # Checked before the update, so that no non-finite value ever reaches the weights. One
        # host sync per step (the loss and the norm together); ranks agree through the all-reduce.
        bad = self.env.any_rank((~torch.isfinite(torch.stack([loss.detach().float(), grad_norm.float()]))).float())
        if bad.any():
            what = "loss" if bad[0] else "gradient norm"
            self._diverged(f"the {what} is {float((loss if bad[0] else grad_norm).detach())}", stage, 1)
        opt.step()
        return loss.detach(), extra, grad_norm, words

    def _evaluate(self, stage: int) -> dict[str, Any]:
        """The dev scores, on rank 0 (the others get {}: only rank 0 logs them)."""
        if not self.lead:
            return {}
        scores = evaluate(self.model, self.dev, stage, self.config.batch_size, self.env.device, self.autocast)
        if self.inject_nan_eval_at == self.p.global_step:
            scores = {k: float("nan") if k.endswith("loss") else v for k, v in scores.items()}
        return scores

    def _diverged(self, what: str, stage: int, ahead: int = 0) -> None:
        """Stop the run: ``what`` went non-finite ``ahead`` steps past the step counters."""
        step, stage_step = self.p.global_step + ahead, self.p.stage_step + ahead
        kept = (f"the last good checkpoint (step {self.saved_step}) is kept in {self.out} (--resume retries "
                "from it)" if self.saved_step is not None else "no checkpoint had been written yet")
        raise Diverged(f"training diverged at step {step} (stage {stage}, step {stage_step} of the stage): {what}; "
                       f"nothing from that step was saved and {kept}; lower the stage's learning rate or undo "
                       "the --set change")

    def _word_events(self, before: int) -> None:
        """Milestone checkpoints crossed by this step, and the strict-small limit."""
        now = self.p.words_seen
        if not self.lead:
            return
        for m in (m for m in self.config.word_milestones if before < m <= now):
            record = {**self._record(), "milestone_words": m}
            ckpt.save_checkpoint(self.out / "milestones" / f"words_{milestone_name(m)}", self.model, record)
        if before <= STRICT_SMALL_MAX_WORDS < now:
            print(f"babyssm: warning: {now:,} words seen, past the BabyLM strict-small limit of "
                  f"{STRICT_SMALL_MAX_WORDS:,} (10 epochs of 10M words)", file=sys.stderr)

    def _finish_stage(self, sc: StageConfig) -> None:
        p, last = self.p, {}
        # One verdict for all ranks: the weights, stage 1's codes (weights near the float limit
        # are finite, yet the codes overflow), then rank 0's dev evaluation.
        bad = ckpt.first_nonfinite(self.model.state_dict())
        problem = None if bad is None else f"{bad} is not finite at the end of the stage"
        if problem is None and sc.stage == 1:
            with torch.no_grad():
                if not bool(torch.isfinite(self.model.level1.codes()).all()):
                    problem = "level 1's character codes are not finite"
        if problem is None and self.dev is not None:
            last = self._evaluate(sc.stage)
            bad = ckpt.first_nonfinite(last)
            problem = None if bad is None else f"the dev evaluation's {bad} is not finite"
        problem = self.env.agree(problem)
        if problem is not None:
            self._diverged(problem, sc.stage)
        if self.lead and self.dev is not None:
            self._log({"step": p.global_step, "stage": sc.stage, "stage_step": p.stage_step,
                       "chars": p.chars_seen, "elapsed": p.train_seconds + p.stage_seconds, **last})
        p.stage_results[str(sc.stage)] = {"steps": p.stage_step, "chars": p.stage_chars,
                                             "seconds": round(p.stage_seconds, 3), **last}
        p.train_seconds += p.stage_seconds
        p.stages_completed = sorted(set(p.stages_completed) | {sc.stage})
        p.start_stage(p.stage_index + 1)
        if self.lead:
            plot_stage_losses(self.metrics, sc.stage, self.out / f"loss_stage{sc.stage}.png")
            self._say(None, {"stage": sc.stage, "done": True, **p.stage_results[str(sc.stage)]})
            if sc.stage == 1:
                self._level1_report()
        self._checkpoint(None)

    # -- files ---------------------------------------------------------------------------------
    def _level1_report(self) -> None:
        T = self.config.seq_len
        windows = self.dev[:64] if self.dev is not None else dev_windows(self.train_data, 64 * T, T)  # (64, T)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(0)
            report = level1_report(self.model, windows.to(self.env.device))
            plot_embedding_pca(self.model, self.out / "embedding_pca.png")
        atomic_write_json(self.out / "level1_report.json", report)

    def _log(self, row: dict[str, Any]) -> None:
        if self.lead:
            with open(self.metrics, "a") as f:
                f.write(json.dumps(row) + "\n")

    def _say(self, bar, row: dict[str, Any]) -> None:
        """A progress line for logs (tqdm shows nothing when stderr is not a terminal)."""
        text = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())
        (bar.write if bar is not None and not bar.disable else print)(text, file=sys.stderr)

    def _checkpoint(self, opt: torch.optim.Optimizer | None) -> None:
        """Every rank hands its RNG states to rank 0, which writes the checkpoint."""
        batch_rng = self.env.all_gather(self.gen.get_state())
        rng = self.env.all_gather(ckpt.rng_state())
        if not self.lead:
            self.saved_step = self.p.global_step  # rank 0's write: every rank names it if the run diverges
            return
        state = {"model": self.model.state_dict(), "optimizer": opt.state_dict() if opt else None,
                 "progress": dataclasses.asdict(self.p), "batch_rng": batch_rng, "rng": rng,
                 "world_size": self.env.world,
                 "metrics_bytes": self.metrics.stat().st_size,
                 "train_config": dataclasses.asdict(self.config),
                 "stages": [dataclasses.asdict(s) for s in self.stages]}
        ckpt.save_checkpoint(self.out, self.model, self._record(), state)
        self.saved_step = self.p.global_step

    def _record(self) -> dict[str, Any]:
        """config.json's account of the run so far."""
        p = self.p
        return {"step": p.global_step, "data": str(self.data_dir), "train_config": dataclasses.asdict(self.config),
                "stages": [dataclasses.asdict(s) for s in self.stages], "stages_completed": p.stages_completed,
                "chars_seen": p.chars_seen, "words_seen": p.words_seen,
                "train_seconds": round(p.train_seconds, 3), "stage_results": p.stage_results,
                "init_from": p.init_from, "commands": p.commands, "run_info": self.run_info}

    def _summary(self, halted: bool) -> dict[str, Any]:
        p = self.p
        return {"run_dir": str(self.out), "halted": halted, "stages_completed": p.stages_completed,
                "chars_seen": p.chars_seen, "words_seen": p.words_seen, "train_seconds": p.train_seconds,
                "steps": p.global_step, "stages": p.stage_results}
