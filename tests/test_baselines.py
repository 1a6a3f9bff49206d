"""GRU and transformer baselines: parameter matching, recurrent decoding == forward,
checkpoint round trips, and the `babyssm baseline` command end to end on real text."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from babyssm.evaluation import scoring
from babyssm.models.gru import GRULM, GRUConfig, gru_config_for_params
from babyssm.models.ngram import load_ngram
from babyssm.models.presets import seed_parameter_count
from babyssm.models.transformer import TransformerConfig, TransformerLM, transformer_config_for_params
from babyssm.models.transformerpp import TransformerPP, TransformerPPConfig, transformerpp_config_for_params
from babyssm.training.checkpoint import load_model, save_checkpoint
from babyssm.commands.main import main
from babyssm.errors import BabySSMError
from babyssm.models.lm import build_model
from babyssm.data.vocab import encode
from helpers import make_prepared

TINY = {
    "gru": GRUConfig(d_model=16, n_layers=2),
    # seq_len 6 < the test length: the sliding window is exercised too.
    "transformer": TransformerConfig(d_model=16, n_layers=2, n_heads=2, d_ff=40, seq_len=6),
    "transformerpp": TransformerPPConfig(d_model=16, n_layers=2, n_heads=2, d_ff=40, seq_len=6),
}


def _model(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(kind, {k: v for k, v in vars(TINY[kind]).items() if k != "head_dim"}).eval()


@pytest.fixture(scope="module")
def prepared(data_root, tmp_path_factory) -> Path:
    """A small prepared corpus from real BabyLM text (8 KiB per file)."""
    return make_prepared(data_root, tmp_path_factory.mktemp("corpus"), kib=8)


@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_gru_matches_seed_parameter_count(n_layers):
    n = seed_parameter_count()
    model = GRULM(gru_config_for_params(n, n_layers=n_layers))
    assert abs(model.num_parameters() / n - 1) < 0.02


@pytest.mark.parametrize("n_layers", [2, 4, 6])
def test_transformer_matches_seed_parameter_count(n_layers):
    n = seed_parameter_count()
    cfg = transformer_config_for_params(n, n_layers=n_layers)
    assert cfg.d_model % (2 * cfg.n_heads) == 0
    assert abs(TransformerLM(cfg).num_parameters() / n - 1) < 0.02


@pytest.mark.parametrize("n_layers", [2, 4, 6])
def test_transformerpp_matches_seed_parameter_count(n_layers):
    n = seed_parameter_count()
    cfg = transformerpp_config_for_params(n, n_layers=n_layers)
    assert cfg.d_model % (2 * cfg.n_heads) == 0
    assert abs(TransformerPP(cfg).num_parameters() / n - 1) < 0.02


def test_default_configs_are_seed_sized():
    n = seed_parameter_count()
    assert gru_config_for_params(n) == GRUConfig()
    assert transformer_config_for_params(n) == TransformerConfig()
    assert transformerpp_config_for_params(n) == TransformerPPConfig()


@pytest.mark.parametrize("kind", ["gru", "transformer", "transformerpp"])
def test_step_and_forward_from_equal_forward(kind):
    model = _model(kind)
    idx = torch.randint(1, 128, (3, 15))
    targets = torch.randint(1, 128, (3, 15))
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 15, 128)
    assert loss.item() == pytest.approx(F.cross_entropy(logits.reshape(-1, 128), targets.reshape(-1)).item())
    state, steps = model.init_state(3), []
    for t in range(15):
        out, state = model.step(idx[:, t], state)
        steps.append(out)
    torch.testing.assert_close(torch.stack(steps, 1), logits, atol=1e-5, rtol=1e-5)
    # In chunks (the scorer's shared-prefix path), and the state is not modified in place.
    s0 = model.init_state(3)
    a, s1 = model.forward_from(idx[:, :4], s0)
    b, s2 = model.forward_from(idx[:, 4:11], s1)
    c, _ = model.forward_from(idx[:, 11:], s2)
    torch.testing.assert_close(torch.cat([a, b, c], 1), logits, atol=1e-5, rtol=1e-5)
    again, _ = model.forward_from(idx[:, 4:11], s1)
    assert torch.equal(again, b)


@pytest.mark.parametrize("kind", ["gru", "transformer", "transformerpp"])
def test_bf16_autocast(kind):
    """Training on CUDA runs under bf16 autocast; the same dtype mix on CPU must work too."""
    model = _model(kind).train()
    idx = torch.randint(1, 128, (2, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = model.stage_loss(0, idx, idx)
        loss.backward()
        state = model.init_state(2)
        for t in range(9):
            logits, state = model.step(idx[:, t], state)
        full, _ = model(idx)
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())
    torch.testing.assert_close(logits.float(), full[:, -1].float(), atol=0.05, rtol=0.05)


@pytest.mark.parametrize("kind", ["transformer", "transformerpp"])
def test_transformer_window_limits_context(kind):
    model = _model(kind)  # seq_len 6
    idx = torch.randint(1, 128, (1, 12))
    other = idx.clone()
    other[0, :5] = torch.randint(1, 128, (5,))  # change only characters more than 6 before the last
    last = model(idx)[0][0, -1]
    # Per layer the window is 6, so with 2 layers position 11 sees back to position 11 - 2*5 = 1.
    assert not torch.allclose(last, model(other)[0][0, -1])
    other2 = idx.clone()
    other2[0, 0] = (idx[0, 0] % 120) + 1
    torch.testing.assert_close(model(other2)[0][0, -1], last)


@pytest.mark.parametrize("kind", ["gru", "transformer", "transformerpp"])
def test_stage_loss_and_errors(kind):
    model = _model(kind)
    idx = torch.randint(1, 128, (2, 5))
    loss, metrics = model.stage_loss(0, idx, idx)
    assert loss.requires_grad and float(metrics["ce"]) == pytest.approx(loss.item())
    assert metrics["ce"].dim() == 0 and not metrics["ce"].requires_grad  # logged later, without a sync now
    with pytest.raises(BabySSMError, match="stages \\(0,\\)"):
        model.stage_loss(1, idx, idx)


def test_config_validation():
    with pytest.raises(ValueError, match="multiple of 2 \\* n_heads"):
        TransformerConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="GRUConfig.d_model"):
        GRUConfig(d_model=0)


@pytest.mark.parametrize("kind", ["gru", "transformer", "transformerpp"])
def test_checkpoint_round_trip_and_scoring(kind, tmp_path):
    model = _model(kind, seed=3)
    save_checkpoint(tmp_path, model, {"stages_completed": [0]})
    back, info = load_model(tmp_path)
    assert info["model_type"] == kind and back.config == model.config
    idx = torch.randint(1, 128, (2, 9))
    assert torch.equal(back(idx)[0], model(idx)[0])
    # Batched scoring, shared-prefix scoring (forward_from) and the step reference agree.
    pair = [encode("The cat sat down."), encode("The cat sit down.")]
    flat = scoring.token_logprobs(back, pair)
    grouped = scoring.group_token_logprobs(back, [pair])[0]
    for f, g, s in zip(flat, grouped, pair):
        np.testing.assert_allclose(f, g, atol=1e-5)
        np.testing.assert_allclose(f, scoring.reference_token_logprobs(back, s), atol=1e-5)


def test_cli_ngram(prepared, tmp_path):
    assert main(["baseline", "ngram", "--data", str(prepared), "--out", str(tmp_path / "ng"), "--order", "4"]) == 0
    meta = json.loads((tmp_path / "ng" / "config.json").read_text())
    train_chars = (prepared / "train.bin").stat().st_size
    assert meta["model_type"] == "ngram" and meta["chars_seen"] == train_chars
    assert 1.0 < meta["dev_bpc"] < 7.0
    assert meta["run_info"]["git_commit"] and meta["run_info"]["torch_version"] == torch.__version__
    lm = load_ngram(tmp_path / "ng")
    assert lm.config.order == 4
    assert main(["baseline", "ngram", "--data", str(prepared), "--out", str(tmp_path / "ng2"),
                 "--max-chars", "1000"]) == 0
    record = json.loads((tmp_path / "ng2" / "config.json").read_text())
    assert record["chars_seen"] == 1000
    assert record["commands"] == [f"babyssm baseline ngram --data {prepared} --out {tmp_path / 'ng2'} --max-chars 1000"]


@pytest.mark.parametrize("kind", ["gru", "transformer", "transformerpp"])
def test_cli_trains_through_train_loop(kind, prepared, tmp_path):
    out = tmp_path / kind
    argv = ["baseline", kind, "--data", str(prepared), "--out", str(out), "--params", "20000",
            "--seq-len", "32", "--batch-size", "4", "--max-chars", str(4 * 32 * 6), "--eval-every", "3",
            "--eval-chars", "256"]
    wd_flag = ["--weight-decay", "0.05", "--min-lr-frac", "0"] if kind == "transformerpp" else []
    assert main(argv + wd_flag) == 0
    model, info = load_model(out)
    assert info["model_type"] == kind and info["stages_completed"] == [0]
    assert abs(model.num_parameters() / 20000 - 1) < 0.02
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
    if kind != "gru":
        assert model.config.seq_len == 32
    decay = 0.05 if kind == "transformerpp" else 0.1  # --weight-decay, or the config's default
    assert model.config.weight_decay == decay
    floor = 0.0 if kind == "transformerpp" else 0.1  # --min-lr-frac, or the config's default
    assert model.config.min_lr_frac == floor
    stage = json.loads((out / "config.json").read_text())["stages"][0]
    assert (stage["weight_decay"], stage["min_lr_frac"]) == (decay, floor)
    other = "transformer" if kind == "gru" else "gru"
    assert main(["baseline", other, "--data", str(prepared), "--out", str(out), "--resume"]) == 2
    assert main(argv + ["--resume"]) == 0  # the run is complete: nothing is trained again
    back, info = load_model(out)
    assert main(argv + wd_flag + ["--resume"]) == (2 if wd_flag else 0)  # a resumed run keeps its decay
    assert info["commands"] == [shlex.join(["babyssm", *argv, *wd_flag])]  # the no-op resume wrote nothing
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values()))


def test_cli_bad_flags(prepared, tmp_path, capsys):
    assert main(["baseline", "gru", "--data", str(prepared), "--out", str(tmp_path / "g"),
                 "--order", "3", "--max-chars", "100"]) == 2
    assert "--order applies to the ngram baseline" in capsys.readouterr().err
    assert main(["baseline", "ngram", "--data", str(prepared), "--out", str(tmp_path / "n"),
                 "--max-minutes", "1"]) == 2
    err = capsys.readouterr().err
    assert "--max-minutes applies to gru and transformer" in err and err.count("\n") == 1
    assert main(["baseline", "ngram", "--data", str(prepared), "--out", str(tmp_path / "n"), "--order", "10"]) == 2
    assert "--order 10: order must be 1..9" in capsys.readouterr().err
    assert main(["baseline", "ngram", "--data", str(prepared), "--out", str(tmp_path / "n"), "--params", "100"]) == 2
    assert "--params applies to gru and transformer" in capsys.readouterr().err
    assert main(["baseline", "gru", "--data", str(prepared), "--out", str(tmp_path / "g"), "--max-chars", "100",
                 "--weight-decay", "-0.1"]) == 2
    assert "--weight-decay must be in [0, 1), got -0.1" in capsys.readouterr().err
    assert main(["baseline", "transformerpp", "--data", str(prepared), "--out", str(tmp_path / "t"),
                 "--max-chars", "100", "--lr", "5"]) == 2
    assert "--lr must be in (0, 1), got 5.0" in capsys.readouterr().err
    assert main(["baseline", "gru", "--data", str(prepared), "--out", str(tmp_path / "g"), "--max-chars", "100",
                 "--min-lr-frac", "2"]) == 2
    assert "--min-lr-frac must be in [0, 1], got 2.0" in capsys.readouterr().err
    assert main(["baseline", "ngram", "--data", str(prepared), "--out", str(tmp_path / "n"),
                 "--min-lr-frac", "0"]) == 2
    assert "--min-lr-frac applies to gru and transformer" in capsys.readouterr().err
    assert main(["baseline", "ngram", "--data", str(prepared), "--out", str(tmp_path / "n"),
                 "--params", "100", "--weight-decay", "0"]) == 2
    assert "--params, --weight-decay apply to gru and transformer" in capsys.readouterr().err
    empty = tmp_path / "empty"
    shutil.copytree(prepared, empty)
    (empty / "train.bin").unlink()
    assert main(["baseline", "ngram", "--data", str(empty), "--out", str(tmp_path / "n2")]) == 2
    assert "train" in capsys.readouterr().err
