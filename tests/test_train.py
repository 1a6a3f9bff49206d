"""Training loop: schedule, batches, stage plan, a full tiny run, --init, budgets, errors."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from babyssm.commands.main import main
from babyssm.models.config import ModelConfig
from babyssm.models.presets import get_preset
from babyssm.errors import BabySSMError
from babyssm.models.hierarchical import HierarchicalSSM
from babyssm.training.batches import dev_windows, get_batch
from babyssm.training.plan import TrainConfig, default_stages, select_stages, stage_steps
from babyssm.training.schedule import lr_at
from babyssm.commands.train import config_overrides
from babyssm.data.vocab import BOS_ID
from helpers import make_prepared

B, T = 4, 32  # tiny batches: 128 characters per step
FAST = ["--preset", "tiny", "--batch-size", str(B), "--seq-len", str(T), "--eval-chars", "256"]


@pytest.fixture(scope="module")
def prepared(data_root, tmp_path_factory) -> Path:
    return make_prepared(data_root, tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def full_run(prepared, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "full"
    status = main(["train", *FAST, "--data", str(prepared), "--out", str(out),
                   "--max-chars", str(B * T * 40), "--eval-every", "5"])
    assert status == 0
    return out


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    lrs = [lr_at(s, 100, 1e-3, 0.1, 0.1) for s in range(101)]
    assert all(0 < a < b for a, b in zip(lrs[:10], lrs[1:11]))  # warm-up rises, never 0
    assert lrs[10] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # then the cosine only falls
    assert lrs[55] == pytest.approx(0.55e-3)  # halfway down the cosine: (1 + 0.1) / 2
    assert lrs[100] == pytest.approx(1e-4)
    # In seconds (time budgets) the same shape holds.
    assert lr_at(30.0, 60.0, 1.0, 0.0, 0.0) == pytest.approx(0.5)


def test_stage_plan_covers_the_model_and_selection_renormalises():
    model = HierarchicalSSM(get_preset("tiny"))
    plan = default_stages(model)
    assert [s.stage for s in plan] == [1, 2, 3]
    assert sum(s.budget_fraction for s in plan) == pytest.approx(1.0)
    only3 = select_stages(plan, "3")
    assert [(s.stage, s.budget_fraction, s.lr) for s in only3] == [(3, 1.0, plan[2].lr)]
    assert sum(s.budget_fraction for s in select_stages(plan, "all")) == pytest.approx(1.0)
    fine = default_stages(HierarchicalSSM(dataclasses.replace(get_preset("tiny"), finetune_fraction=0.2)))
    assert [s.stage for s in fine] == [1, 2, 3, 4] and fine[3].budget_fraction == 0.2
    assert fine[1].budget_fraction / fine[2].budget_fraction == pytest.approx(55 / 40)
    assert sum(s.budget_fraction for s in fine) == pytest.approx(1.0)
    assert [(s.stage, s.budget_fraction) for s in select_stages(plan, "1,2")] == [(1, pytest.approx(1 / 12)),
                                                                            (2, pytest.approx(11 / 12))]
    with pytest.raises(BabySSMError, match="--stage 2,7"):
        select_stages(fine, "2,7")
    with pytest.raises(BabySSMError, match="--stage 0"):
        select_stages(plan, "0")


def test_stage_steps_round_up_to_whole_steps():
    assert stage_steps(0.55, 40 * 128, 128) == 22  # 0.55 * 40 is 22.000000000000004 in floats
    assert stage_steps(0.05, 40 * 128, 128) == 2
    assert stage_steps(0.5, 1000, 128) == 4  # 3.9 steps' worth: rounded up
    assert stage_steps(0.01, 10, 128) == 1  # every stage trains at least one step


def test_train_config_needs_a_budget_and_valid_sizes():
    with pytest.raises(BabySSMError, match="--max-chars"):
        TrainConfig()
    with pytest.raises(BabySSMError, match="batch_size"):
        TrainConfig(batch_size=0, max_chars=10)
    with pytest.raises(BabySSMError, match="device"):
        TrainConfig(max_chars=10, device="tpu")
    assert TrainConfig(batch_size=3, seq_len=5, max_minutes=1).window_chars == 15


def test_batches_are_bos_shifted_random_windows_from_a_seeded_stream():
    data = np.random.default_rng(0).integers(32, 127, 5000).astype(np.uint8)
    gen = torch.Generator().manual_seed(1)
    x, y = get_batch(data, 8, 16, gen, torch.device("cpu"))
    assert x.shape == y.shape == (8, 16) and x.dtype == torch.long
    assert (x[:, 0] == BOS_ID).all() and torch.equal(x[:, 1:], y[:, :-1])
    text = data.tobytes()
    for row in y.tolist():  # each target row is a contiguous window of the data
        assert bytes(row) in text
    x2, _ = get_batch(data, 8, 16, torch.Generator().manual_seed(1), torch.device("cpu"))
    x3, _ = get_batch(data, 8, 16, torch.Generator().manual_seed(2), torch.device("cpu"))
    assert torch.equal(x, x2) and not torch.equal(x, x3)


def test_dev_windows_span_the_split_evenly():
    dev = np.arange(1000, dtype=np.uint8)
    w = dev_windows(dev, eval_chars=100, seq_len=10)
    assert w.shape == (10, 10)
    assert w[0].tolist() == dev[:10].tolist() and w[-1].tolist() == dev[-10:].tolist()


def test_full_run_trains_every_stage_and_records_it(full_run):
    files = {p.name for p in full_run.iterdir()}
    for name in ("model.safetensors", "config.json", "train_state.pt", "metrics.jsonl", "loss_stage1.png",
                 "loss_stage2.png", "loss_stage3.png", "level1_report.json", "embedding_pca.png"):
        assert name in files, name
    for png in ("loss_stage2.png", "embedding_pca.png"):
        assert (full_run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [n for n in files if ".tmp" in n]  # no temporary files left behind
    config = json.loads((full_run / "config.json").read_text())
    assert config["model_type"] == "hierarchical_ssm" and config["stages_completed"] == [1, 2, 3]
    results = config["stage_results"]
    # 40 steps' budget split 5/55/40 %, rounded up to whole steps.
    assert [results[s]["steps"] for s in "123"] == [2, 22, 16]
    assert config["chars_seen"] == sum(results[s]["chars"] for s in "123") == 40 * B * T
    info = config["run_info"]
    assert info["seed"] == 0 and info["torch_version"] == torch.__version__
    assert info["git_commit"] == "unknown" or len(info["git_commit"]) == 40
    assert config["train_config"]["max_chars"] == 40 * B * T
    rows = [json.loads(line) for line in (full_run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert {"step", "stage", "chars", "lr", "loss", "chars_per_s", "elapsed"} <= set(train_rows[0])
    stage2 = [r["dev_bpc"] for r in rows if r["stage"] == 2 and "dev_bpc" in r]
    assert len(stage2) >= 4 and stage2[-1] < stage2[0]  # level 2 learns: dev bits per char fall
    assert results["2"]["dev_bpc"] == pytest.approx(stage2[-1])
    assert "dev_bpc" not in results["1"]  # the character encoder has no next-character distribution
    report = json.loads((full_run / "level1_report.json").read_text())
    assert {"mse", "clean_nn_accuracy", "per_sigma"} <= report.keys()  # babyssm.evaluation.level1.level1_report


def test_init_trains_stage_3_on_frozen_lower_levels(full_run, prepared, tmp_path):
    out = tmp_path / "stage3"
    status = main(["train", "--init", str(full_run), "--stage", "3", "--batch-size", str(B), "--seq-len", str(T),
                   "--eval-chars", "128", "--data", str(prepared), "--out", str(out), "--max-chars", str(B * T * 4)])
    assert status == 0
    before, after = load_file(full_run / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    for name in before:
        same = torch.equal(before[name], after[name])
        assert same == (not name.startswith("level3")), name  # only level 3 moved
    config = json.loads((out / "config.json").read_text())
    assert config["stages_completed"] == [1, 2, 3] and config["init_from"] == str(full_run)
    assert config["chars_seen"] == 44 * B * T  # the init run's characters and these
    assert config["stage_results"]["3"]["steps"] == 4


def test_init_with_set_trains_a_new_level_3_on_the_trained_levels(full_run, prepared, tmp_path):
    out = tmp_path / "variant"
    argv = ["train", "--init", str(full_run), "--stage", "3,4", "--set", "level3_input=features",
            "--set", "level3_rate=word", "--set", "finetune_fraction=0.35", "--batch-size", str(B),
            "--seq-len", str(T), "--eval-chars", "128", "--data", str(prepared), "--out", str(out),
            "--max-chars", str(B * T * 4)]
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["level3_input"] == "features" and config["config"]["finetune_fraction"] == 0.35
    stage3 = 0.40 * (0.95 - 0.35) / 0.95  # default_stages: stage 4's share comes out of stages 2 and 3
    assert [(s["stage"], s["budget_fraction"]) for s in config["stages"]] == [
        (3, pytest.approx(stage3 / (stage3 + 0.35))), (4, pytest.approx(0.35 / (stage3 + 0.35)))]
    assert config["stage_results"]["3"]["steps"] == 2 and config["stage_results"]["4"]["steps"] == 3
    assert config["commands"][-1] == "babyssm " + " ".join(argv) and len(config["commands"]) == 2
    assert load_file(out / "model.safetensors")["level3.w_in"].shape == (32, 64)  # tiny: rank x d_state
    # One stage of the same kind on the unchanged level 2 alone: the level-2 weights are the init run's.
    out2 = tmp_path / "variant3"
    assert main([*argv[:4], "3", *argv[5:-3], str(out2), "--max-chars", str(B * T)]) == 0
    before, after = load_file(full_run / "model.safetensors"), load_file(out2 / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("level1.", "level2.")))


def test_set_errors_name_the_field(full_run, prepared, tmp_path, capsys):
    args = ["train", "--data", str(prepared), "--out", str(tmp_path / "x"), "--max-chars", "100"]
    assert "level3_rate" in _error(capsys, [*args, "--preset", "tiny", "--set", "size=3"])
    assert "level3_rate must be one of" in _error(capsys, [*args, "--preset", "tiny", "--set", "level3_rate=line"])
    assert "--resume" in _error(capsys, ["train", "--data", str(prepared), "--out", str(full_run), "--resume",
                                         "--set", "level3_rate=word"])
    assert config_overrides(["d_state=8", "level3_decay=selective"], ModelConfig) == \
        {"d_state": 8, "level3_decay": "selective"}


def test_time_budget_run_completes_every_stage(prepared, tmp_path):
    status = main(["train", *FAST, "--data", str(prepared), "--out", str(tmp_path / "timed"),
                   "--max-minutes", "0.01", "--eval-chars", "0"])
    assert status == 0
    config = json.loads((tmp_path / "timed" / "config.json").read_text())
    assert config["stages_completed"] == [1, 2, 3]
    assert config["train_config"]["max_minutes"] == 0.01 and config["train_config"]["max_chars"] is None


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("babyssm: error:") and "\n" not in err  # one line, no traceback
    return err


def test_bad_input_gets_one_line_errors(full_run, prepared, tmp_path, capsys):
    args = ["train", *FAST, "--max-chars", "1000"]
    assert "--resume" in _error(capsys, [*args, "--data", str(prepared), "--out", str(full_run)])
    assert "prepare" in _error(capsys, [*args, "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    assert "budget" in _error(capsys, ["train", "--data", str(prepared), "--out", str(tmp_path / "r")])
    resume = ["train", "--data", str(prepared), "--out", str(full_run), "--resume"]
    assert "seed" in _error(capsys, [*resume, "--seed", "1"])
    assert "pick one" in _error(capsys, [*resume, "--init", str(full_run)])
    assert "preset" in _error(capsys, [*resume, "--preset", "seed"])
    assert "windows" in _error(capsys, [*resume, "--windows", "offset"])
    if not torch.cuda.is_available():
        assert "CUDA is not available" in _error(
            capsys, [*args, "--device", "cuda", "--data", str(prepared), "--out", str(tmp_path / "r")])


def test_resuming_a_finished_run_trains_nothing(full_run, prepared, capsys):
    before = (full_run / "metrics.jsonl").read_bytes()
    assert main(["train", "--data", str(prepared), "--out", str(full_run), "--resume", "--preset", "tiny"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["stages_completed"] == [1, 2, 3] and summary["steps"] == 40
    assert (full_run / "metrics.jsonl").read_bytes() == before
    assert math.isfinite(summary["stages"]["3"]["dev_bpc"])
