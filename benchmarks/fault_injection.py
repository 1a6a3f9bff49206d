"""Fault injection: kill real training runs at random moments and check that nothing is lost.

A reference run of the ``tiny`` preset trains uninterrupted. Then each trial trains the
same run (same flags, same seed) in a fresh folder as a user would, and hits it with
faults until it finishes:

- ``kill``: SIGKILL after a random delay (anywhere: start-up, a step, an evaluation, a plot);
- ``kill in write``: SIGKILL the moment a temporary file of an atomic write appears in the
  run folder (``.NAME.XXXXXXXX.tmp.EXT``) after a random delay: of the weights, the train
  state or config.json (chosen at random; the later two leave a checkpoint whose files are
  of different steps), or of any file (a plot, a report); counted only when that file is
  still there after the kill;
- ``divergence``: the loss of a random coming step is made NaN (``BABYSSM_INJECT_NAN_AT_STEP``),
  which must stop the run with exit status 2 and save nothing of it.

After every fault it checks the folder: no weight, optimizer statistic or recorded number
on disk may be NaN or infinite. It then continues with ``babyssm train --resume``.
Finally it compares the finished run with the reference: bit-identical ``model.safetensors``
and the same logged losses (metrics.jsonl, without timings), and counts the temporary files
left. A last row runs the issue's real divergence (``--set init_log_tau=-200``).

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/fault_injection.py --data work/prepared
    python benchmarks/fault_injection.py --data work/prepared --trials 2 --faults 3 --seed 1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from babyssm.training import checkpoint as ckpt
from babyssm.training.runfolder import TEMP_NAME
from babyssm.training.loop import INJECT_NAN_ENV

ROOT = Path(__file__).resolve().parents[1]
B, T, STEPS = 8, 64, 400  # 512 characters per step; stages of 20, 220 and 160 steps


def train_argv(data: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "babyssm", "train", "--preset", "tiny", "--data", data, "--out", str(out),
            "--batch-size", str(B), "--seq-len", str(T), "--max-chars", str(B * T * STEPS), "--eval-chars", "1024",
            "--eval-every", "20", "--ckpt-every", "7", "--seed", "3", *extra]


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k != INJECT_NAN_ENV}
    e.update(PYTHONPATH=os.pathsep.join([str(ROOT), e.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1", **extra)
    return e


def temps(out: Path) -> list[Path]:
    folders = [out, *(out / "milestones").glob("*")]
    return [p for d in folders if d.is_dir() for p in d.iterdir() if TEMP_NAME.match(p.name)]


def nonfinite_on_disk(out: Path) -> list[str]:
    """Every checkpoint file of ``out`` that holds a NaN or infinity (each must be finite)."""
    bad = []
    if (out / ckpt.WEIGHTS_FILE).is_file():
        try:
            if ckpt.first_nonfinite(load_file(out / ckpt.WEIGHTS_FILE)) is not None:
                bad.append(ckpt.WEIGHTS_FILE)
        except Exception:  # a torn file is counted elsewhere (it cannot hold NaN either way)
            pass
    if (out / ckpt.STATE_FILE).is_file():
        state = torch.load(out / ckpt.STATE_FILE, weights_only=True)
        if ckpt.first_nonfinite(state) is not None:
            bad.append(ckpt.STATE_FILE)
    for name in (ckpt.CONFIG_FILE, "metrics.jsonl"):
        path = out / name
        if path.is_file() and any(word in path.read_text() for word in ("NaN", "Infinity")):
            bad.append(name)
    return bad


def losses(out: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(r["step"], r.get("loss"), r.get("dev_loss")) for r in rows]


def kill_in_write(proc: subprocess.Popen, out: Path, after: float, target: str) -> bool:
    """SIGKILL ``proc`` as soon as the temporary file of an atomic write of ``target``
    (``model``, ``train_state``, ``config``; "" for any file) shows, ``after`` seconds from
    now; True if the kill caught one (the file is still there)."""
    try:
        proc.wait(timeout=after)
        return False
    except subprocess.TimeoutExpired:
        pass
    while proc.poll() is None:
        if any(p.name.startswith(f".{target}") for p in temps(out)):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return bool(temps(out))
    return False


def progress(out: Path) -> tuple[int, bool]:
    """(step of the saved checkpoint, whether the run has finished), from config.json."""
    try:
        config = json.loads((out / ckpt.CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return 0, False
    return config["step"], config.get("stages_completed") == [1, 2, 3]


def trial(data: str, out: Path, faults: int, rng: random.Random, total_steps: int, seconds: float) -> dict:
    """Up to ``faults`` faults on one run (fewer when it finishes first), then a last
    ``--resume`` to the end; ``seconds``: how long an uninterrupted run takes."""
    counts = {"kills": 0, "kills_in_write": 0, "divergences": 0, "resumes": 0, "nan_checkpoints": 0,
              "torn_found": 0}
    landed, tries = 0, 0
    while landed < faults and tries < 3 * faults:
        tries += 1
        step, finished = progress(out)
        if finished:
            break
        # A run killed before its first config.json starts afresh (as a user would: --resume
        # has nothing to continue); from then on it resumes.
        started = (out / ckpt.CONFIG_FILE).exists()
        counts["resumes"] += started
        left = seconds * (1 - step / total_steps)  # about the time this start needs (start-up included)
        kind = rng.choice(["kill", "kill in write", "divergence"])
        extra = {INJECT_NAN_ENV: str(rng.randint(step + 1, total_steps))} if kind == "divergence" else {}
        proc = subprocess.Popen(train_argv(data, out, *(["--resume"] if started else [])), env=env(**extra),
                                stdout=subprocess.DEVNULL, text=True,
                                stderr=subprocess.PIPE if kind == "divergence" else subprocess.DEVNULL)
        if kind == "kill":
            try:
                proc.wait(timeout=rng.uniform(0.1, 0.8) * left)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                counts["kills"] += 1
                landed += 1
        elif kind == "kill in write":
            target = rng.choice(["model.", "train_state.", "config.", ""])
            if kill_in_write(proc, out, rng.uniform(0.0, 0.9) * left, target):
                counts["kills"] += 1
                counts["kills_in_write"] += 1
                landed += 1
            else:
                proc.wait()
        else:
            err = proc.communicate()[1]
            if proc.returncode == 2 and "training diverged at step" in err:
                counts["divergences"] += 1
                landed += 1
            elif proc.returncode != 0:
                raise SystemExit(f"divergence run exited {proc.returncode}: {err[-500:]}")
        counts["nan_checkpoints"] += len(nonfinite_on_disk(out))
        if (out / ckpt.CONFIG_FILE).exists():
            try:
                ckpt.load_model(out)
            except ckpt.BabySSMError:
                counts["torn_found"] += 1  # weights and config.json of different steps: --resume repairs
    started = (out / ckpt.CONFIG_FILE).exists()
    counts["resumes"] += started
    done = subprocess.run(train_argv(data, out, *(["--resume"] if started else [])), env=env(), capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"final run exited {done.returncode}: {done.stderr[-800:]}")
    counts["nan_checkpoints"] += len(nonfinite_on_disk(out))
    counts["temps_left"] = len(temps(out))
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="a prepared corpus (babyssm prepare)")
    ap.add_argument("--trials", type=int, default=6, help="runs hit by faults (default 6)")
    ap.add_argument("--faults", type=int, default=5, help="faults per run before it may finish (default 5)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the fault schedule")
    ap.add_argument("--work", help="folder for the runs (default: a temporary folder, removed)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(args.work or tempfile.mkdtemp(prefix="babyssm-faults-"))
    t0 = time.perf_counter()
    ref = work / "reference"
    shutil.rmtree(ref, ignore_errors=True)
    subprocess.run(train_argv(args.data, ref), env=env(), check=True, capture_output=True)
    seconds = time.perf_counter() - t0
    total_steps = json.loads((ref / ckpt.CONFIG_FILE).read_text())["step"]
    rows = []
    for i in range(args.trials):
        out = work / f"trial{i}"
        shutil.rmtree(out, ignore_errors=True)
        c = trial(args.data, out, args.faults, rng, total_steps, seconds)
        c["identical"] = ((out / ckpt.WEIGHTS_FILE).read_bytes() == (ref / ckpt.WEIGHTS_FILE).read_bytes()
                          and losses(out) == losses(ref))
        rows.append(c)
        print(f"trial {i}: {c}", file=sys.stderr)
    real = work / "diverged"
    shutil.rmtree(real, ignore_errors=True)
    d = subprocess.run(train_argv(args.data, real, "--set", "init_log_tau=-200"), env=env(), capture_output=True,
                       text=True)
    message = (d.stderr.strip().splitlines() or [""])[-1]

    def total(key: str) -> int:
        return sum(int(r[key]) for r in rows)

    print(f"| runs | kills | of them inside a write | forced divergences | resumes | torn checkpoints found "
          f"(repaired by --resume) | bit-identical finals | NaN checkpoints written | temp files left |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {len(rows)} | {total('kills')} | {total('kills_in_write')} | {total('divergences')} | "
          f"{total('resumes')} | {total('torn_found')} | {total('identical')}/{len(rows)} | "
          f"{total('nan_checkpoints')} | {total('temps_left')} |")
    print(f"\nReal divergence (`--set init_log_tau=-200`): exit status {d.returncode}, NaN checkpoint files "
          f"{len(nonfinite_on_disk(real))}, temp files {len(temps(real))}; `{message}`")
    print(f"\n{B * T * STEPS:,} characters ({total_steps} steps) per run; {time.perf_counter() - t0:.0f} s in all.")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
