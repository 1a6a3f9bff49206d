"""Checkpoints: exact resume, atomic writes, loading, RNG state, clear errors for broken runs."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from babyssm.training import checkpoint as ckpt
from babyssm.commands.main import main
from babyssm.models.presets import get_preset
from babyssm.errors import BabySSMError
from babyssm.models.hierarchical import HierarchicalSSM
from helpers import make_prepared

B, T = 4, 32
STEPS = 24  # stage steps 2 / 14 / 10 (5 / 55 / 40 % of the budget, rounded up)


@pytest.fixture(scope="module")
def prepared(data_root, tmp_path_factory) -> Path:
    return make_prepared(data_root, tmp_path_factory.mktemp("corpus"), kib=12)


def _train(prepared: Path, out: Path, *extra: str) -> None:
    argv = ["train", "--data", str(prepared), "--out", str(out), *extra]
    if "--resume" not in extra:
        argv += ["--preset", "tiny", "--batch-size", str(B), "--seq-len", str(T), "--eval-chars", "128",
                 "--eval-every", "4", "--ckpt-every", "5", "--max-chars", str(STEPS * B * T)]
    assert main(argv) == 0


def _rows(run: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock fields (the only ones allowed to differ)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("chars_per_s", "elapsed")} for r in rows]


def test_resume_continues_exactly(prepared, tmp_path, capsys):
    _train(prepared, tmp_path / "straight")
    # Halt mid stage 1 (its diffusion noise comes from the global RNG), mid stage 2 and mid
    # stage 3, resuming each time, then run to the end: the same run, bit for bit.
    _train(prepared, tmp_path / "sliced", "--halt-after-steps", "1")
    for halted_in, completed in ((1, []), (2, [1]), (3, [1, 2])):
        config = json.loads((tmp_path / "sliced" / "config.json").read_text())
        assert config["stages_completed"] == completed
        if halted_in < 3:
            _train(prepared, tmp_path / "sliced", "--resume", "--halt-after-steps", "9")
    _train(prepared, tmp_path / "sliced", "--resume")
    straight, sliced = load_file(tmp_path / "straight" / ckpt.WEIGHTS_FILE), load_file(
        tmp_path / "sliced" / ckpt.WEIGHTS_FILE)
    assert straight.keys() == sliced.keys()
    for name in straight:
        assert torch.equal(straight[name], sliced[name]), name
    assert _rows(tmp_path / "straight") == _rows(tmp_path / "sliced")
    a, b = (json.loads((tmp_path / r / "config.json").read_text()) for r in ("straight", "sliced"))
    assert a["chars_seen"] == b["chars_seen"] == (2 + 14 + 10) * B * T and b["stages_completed"] == [1, 2, 3]
    assert a["stage_results"]["3"]["dev_bpc"] == b["stage_results"]["3"]["dev_bpc"]


def test_atomic_write_keeps_the_old_file_when_a_write_fails(tmp_path):
    target = tmp_path / "config.json"
    ckpt.atomic_write_json(target, {"good": 1})

    def broken(tmp: Path) -> None:
        tmp.write_text('{"half')
        raise OSError("disk full")

    with pytest.raises(OSError):
        ckpt.atomic_write(target, broken)
    assert json.loads(target.read_text()) == {"good": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # the temporary file is gone


def _saved_model(run: Path, stages_completed: list[int]) -> HierarchicalSSM:
    torch.manual_seed(0)
    model = HierarchicalSSM(get_preset("tiny"))
    ckpt.save_checkpoint(run, model, {"stages_completed": stages_completed, "step": 7})
    return model


def test_load_model_rebuilds_the_same_model(tmp_path):
    model = _saved_model(tmp_path / "run", [1, 2])
    loaded, info = ckpt.load_model(tmp_path / "run")
    assert type(loaded) is HierarchicalSSM and not loaded.training
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    assert info["default_levels"] == 2 and info["stages_completed"] == [1, 2]
    assert info["num_parameters"] == model.num_parameters() and info["step"] == 7
    idx = torch.randint(32, 127, (2, 20))
    assert torch.equal(model.eval()(idx)[0], loaded(idx)[0])
    _saved_model(tmp_path / "run3", [1, 2, 3])
    assert ckpt.load_model(tmp_path / "run3")[1]["default_levels"] == 3


def test_stage_4_without_stage_3_trains_and_uses_every_level(tmp_path, capsys):
    # `babyssm train --init L12 --stage 4 ...` records stages [1, 2, 4]: stage 4 trains level 3 too.
    run = tmp_path / "l124"
    _saved_model(run, [1, 2, 4])
    assert HierarchicalSSM.trained_levels([1, 2, 4]) == (1, 2, 3)
    assert HierarchicalSSM.trained_levels([1, 2]) == (1, 2) and HierarchicalSSM.default_levels([1, 2]) == 2
    _, info = ckpt.load_model(run)
    assert info["default_levels"] == 3 and info["trained_levels"] == [1, 2, 3]
    assert main(["generate", "--run", str(run), "--new-chars", "3", "--levels", "3"]) == 0
    assert "untrained" not in capsys.readouterr().err
    from babyssm.evaluation.report import load_run

    assert load_run(run)["default_levels"] == 3
    # --init from such a run reuses every level's weights.
    assert HierarchicalSSM(get_preset("tiny")).stage_weight_prefixes([1, 2, 4]) == ("level1.", "level2.", "level3.")


def test_broken_run_folders_give_errors_naming_the_file(tmp_path, capsys):
    with pytest.raises(BabySSMError, match="does not exist"):
        ckpt.load_model(tmp_path / "missing")
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(BabySSMError, match="config.json is missing"):
        ckpt.load_model(run)
    _saved_model(run, [1, 2])
    weights = run / ckpt.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])  # truncated, as by a crash without atomic writes
    with pytest.raises(BabySSMError, match="model.safetensors is not the file that .*config.json records"):
        ckpt.load_model(run)
    config = json.loads((run / ckpt.CONFIG_FILE).read_text())
    del config[ckpt.MANIFEST]  # a run saved before manifests: the file itself is checked
    (run / ckpt.CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(BabySSMError, match="model.safetensors is corrupt"):
        ckpt.load_model(run)
    (run / ckpt.CONFIG_FILE).write_text('{"model_type": ')
    with pytest.raises(BabySSMError, match="config.json is corrupt"):
        ckpt.load_model(run)
    with pytest.raises(BabySSMError, match="train_state.pt is missing"):
        ckpt.load_train_state(run)
    (run / ckpt.STATE_FILE).write_bytes(b"not a torch file")
    with pytest.raises(BabySSMError, match="train_state.pt is corrupt"):
        ckpt.load_train_state(run)
    assert main(["generate", "--run", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err


def test_rng_state_round_trip():
    state = ckpt.rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_run_info_records_provenance():
    info = ckpt.run_info(seed=5, world_size=2)
    assert info["seed"] == 5 and info["world_size"] == 2
    assert info["torch_version"] == torch.__version__ and info["babyssm_version"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True)
    assert info["git_commit"] == (head.stdout.strip() if head.returncode == 0 else "unknown")
