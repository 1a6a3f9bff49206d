"""DDP: two CPU processes under torchrun (gloo) train in lock step and write one run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import torch

from babyssm.training.loop import INJECT_NAN_EVAL_ENV
from helpers import make_prepared

B, T, STEPS = 4, 32, 12

# Each rank builds its model from a different seed on purpose: train() must start every
# rank from rank 0's weights, then keep them identical through averaged gradients.
WORKER = textwrap.dedent(f"""
    import dataclasses, os, sys
    import torch
    from babyssm.models.presets import get_preset
    from babyssm.models.lm import build_model
    from babyssm.training.loop import train
    from babyssm.training.plan import TrainConfig

    prepared, out, dumps = sys.argv[1:4]
    rank = int(os.environ["RANK"])
    torch.manual_seed(100 + rank)
    model = build_model("hierarchical_ssm", dataclasses.asdict(get_preset("tiny")))
    torch.save(model.state_dict(), f"{{dumps}}/init{{rank}}.pt")
    config = TrainConfig(batch_size={B}, seq_len={T}, max_chars={STEPS * B * T * 2}, eval_every=4,
                         eval_chars=128, ckpt_every=5)
    summary = train(model, prepared, out, config)
    torch.save(model.state_dict(), f"{{dumps}}/final{{rank}}.pt")
""")


def test_two_processes_stay_in_sync(data_root, tmp_path):
    prepared = make_prepared(data_root, tmp_path, kib=8)
    (tmp_path / "worker.py").write_text(WORKER)
    (tmp_path / "dumps").mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on a shared 2-core machine
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(tmp_path / "worker.py"), str(prepared), str(tmp_path / "run"), str(tmp_path / "dumps")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    init = [torch.load(tmp_path / "dumps" / f"init{r}.pt") for r in range(2)]
    final = [torch.load(tmp_path / "dumps" / f"final{r}.pt") for r in range(2)]
    assert any(not torch.equal(init[0][k], init[1][k]) for k in init[0])  # the ranks did start apart
    for name in final[0]:
        assert torch.equal(final[0][name], final[1][name]), name  # and ended identical
    assert any(not torch.equal(init[0][k], final[0][k]) for k in init[0])  # after real training
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["run_info"]["world_size"] == 2 and config["stages_completed"] == [1, 2, 3]
    # The budget counts both ranks' characters: B x T x 2 per step.
    steps = [config["stage_results"][s]["steps"] for s in "123"]
    assert steps == [1, 7, 5]  # ceil of 5 / 55 / 40 % of 12 steps
    assert config["chars_seen"] == sum(steps) * B * T * 2
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len({r["step"] for r in rows if "loss" in r}) == len([r for r in rows if "loss" in r])  # rank 0 only


def test_a_divergence_seen_by_rank_0_alone_stops_every_rank(data_root, tmp_path):
    """Only rank 0 evaluates: when its dev evaluation goes non-finite, every rank must stop
    with the same one-line error (not rank 0 alone, leaving rank 1 waiting in a collective)."""
    prepared = make_prepared(data_root, tmp_path, kib=8)
    out, logs = tmp_path / "run", tmp_path / "logs"
    # Stage 1 takes global step 1; stage 2's first evaluation (stage step 4) is global step 5.
    env = {**os.environ, "OMP_NUM_THREADS": "1", INJECT_NAN_EVAL_ENV: "5"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "--redirects", "3", "--log-dir", str(logs), "-m", "babyssm", "train", "--preset", "tiny",
         "--batch-size", str(B), "--seq-len", str(T), "--max-chars", str(STEPS * B * T * 2), "--eval-every", "4",
         "--eval-chars", "128", "--ckpt-every", "5", "--data", str(prepared), "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    errs = {int(p.parent.name): p.read_text() for p in logs.rglob("stderr.log")}
    assert sorted(errs) == [0, 1], proc.stderr[-3000:]
    lines = {rank: [line for line in err.splitlines() if line.startswith("babyssm: error:")]
             for rank, err in errs.items()}
    for rank, err in errs.items():
        assert len(lines[rank]) == 1 and "Traceback" not in err, (rank, err[-3000:])
    assert lines[0] == lines[1]
    assert "training diverged at step 5 (stage 2" in lines[0][0] and "dev_loss is not finite" in lines[0][0]
    assert "last good checkpoint (step 1)" in lines[0][0]
    assert json.loads((out / "config.json").read_text())["step"] == 1  # nothing from the bad step was saved
