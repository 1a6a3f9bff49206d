"""The hierarchical model: parameter budget, the CharLM contract, the level-1 invariants, training."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from babyssm.commands.main import main as cli_main
from babyssm.models.config import ModelConfig
from babyssm.models.presets import get_preset, parameter_table
from babyssm.errors import BabySSMError
from babyssm.evaluation.level1 import level1_report
from babyssm.models.levels import normalise_codes
from babyssm.plots import plot_embedding_pca
from babyssm.models.lm import build_model
from babyssm.models.hierarchical import HierarchicalSSM
from babyssm.data.vocab import BOS_ID, TEXT_IDS


@pytest.fixture(scope="module")
def text_ids(data_root) -> torch.Tensor:
    """About 200 KB of real child-directed text as symbol ids (bytes outside the vocabulary dropped)."""
    path = data_root / "babylm" / "train" / "2023_aochildes.train"
    raw = np.frombuffer(path.read_bytes()[:200_000], dtype=np.uint8)
    return torch.from_numpy(raw[np.isin(raw, sorted(TEXT_IDS))].astype(np.int64))


def _batches(ids: torch.Tensor, n: int, B: int = 8, T: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        starts = torch.randint(0, len(ids) - T, (B,), generator=g)
        y = torch.stack([ids[s : s + T] for s in starts])  # (B, T)
        x = torch.cat([torch.full((B, 1), BOS_ID), y[:, :-1]], dim=1)  # (B, T)
        yield x, y


def _tiny(seed: int = 0, **overrides) -> HierarchicalSSM:
    torch.manual_seed(seed)
    cfg = get_preset("tiny")
    return HierarchicalSSM(dataclasses.replace(cfg, **overrides) if overrides else cfg)


def _level_totals(rows):
    return {lv: sum(r["count"] for r in rows if r["level"] == lv) for lv in (1, 2, 3)}


def test_seed_parameter_counts():
    totals = _level_totals(parameter_table(get_preset("seed")))
    assert totals[1] == 65_536
    assert totals[2] == 6 * 512 * 256 + 512 + 1 == 786_945  # six D x R / R x N matrices, the decays, log tau
    assert totals[3] == 788_480
    assert HierarchicalSSM(get_preset("seed")).num_parameters() == sum(totals.values())


def test_info_command_json(capsys):
    assert cli_main(["info", "--preset", "seed", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["level_totals"]["3"] == 788_480
    assert report["total"] == sum(r["count"] for r in report["parameters"])
    assert cli_main(["info", "--preset", "tiny"]) == 0
    assert "level 2 total" in capsys.readouterr().out


def test_presets_and_config_validation():
    with pytest.raises(BabySSMError, match="deep, seed, tiny"):
        get_preset("huge")
    with pytest.raises(ValueError, match="level3_loss"):
        ModelConfig(level3_loss="l1")
    with pytest.raises(ValueError, match="level3_mix"):
        ModelConfig(level3_mix=(1.0, -1.0, 0.0))
    with pytest.raises(ValueError, match="diffusion_sigma_min"):
        ModelConfig(diffusion_sigma_min=3.0)
    assert get_preset("seed") is not get_preset("seed")  # callers may edit their copy
    assert ModelConfig(level3_loss="mse").level3_weights == (1.0, 0.0, 0.0)


def test_rebuild_from_saved_config():
    model = _tiny(level3_loss="mix")
    saved = json.loads(json.dumps(dataclasses.asdict(model.config)))  # as config.json holds it
    rebuilt = build_model(model.model_type, saved)
    assert rebuilt.config == model.config
    rebuilt.load_state_dict(model.state_dict())
    idx = torch.randint(0, 128, (2, 10))
    torch.testing.assert_close(rebuilt(idx)[0], model(idx)[0])


VARIANTS = [{}, {"level3_input": "features"}, {"level3_decay": "selective"}, {"level3_rate": "word"},
            {"level3_input": "features", "level3_decay": "selective", "level3_rate": "word"}]


@pytest.mark.parametrize("levels", [2, 3])
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(v.values()) or "seed")
def test_step_matches_forward(levels, variant):
    model = _tiny(seed=1, chunk_size=8, **variant)
    with torch.no_grad():  # an open gate, so that level 3 really shapes the prediction
        model.level3.b_gate.normal_()
        if "level3_decay" in variant:  # decays that really depend on the input
            model.level3.w_decay.normal_()
    idx = torch.randint(0, 128, (3, 21), generator=torch.Generator().manual_seed(2))
    idx[:, 5] = 32  # word boundaries inside the sequence
    idx[:, 12] = 10
    with torch.no_grad():
        logits, _ = model(idx, levels=levels)
        state = model.init_state(3)
        steps = []
        for t in range(idx.shape[1]):
            step_logits, state = model.step(idx[:, t], state, levels=levels)
            steps.append(step_logits)
    torch.testing.assert_close(torch.stack(steps, 1), logits, atol=1e-4, rtol=1e-4)
    if levels == 3:
        two, _ = model(idx, levels=2)
        assert (two - logits).abs().max() > 1e-2  # level 3 is not a no-op


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(v.values()) or "seed")
def test_forward_from_continues_a_sequence(variant):
    model = _tiny(seed=3, **variant)
    idx = torch.randint(0, 128, (2, 30))
    idx[:, [4, 13, 20]] = 32  # words end before, at and after the split
    with torch.no_grad():
        if "level3_decay" in variant:
            model.level3.w_decay.normal_()
        whole, _ = model(idx)
        first, state = model.forward_from(idx[:, :13], model.init_state(2))
        rest, _ = model.forward_from(idx[:, 13:], state)
    torch.testing.assert_close(torch.cat([first, rest], 1), whole, atol=1e-4, rtol=1e-4)


def test_forward_loss_is_cross_entropy_of_logits():
    model = _tiny()
    idx = torch.randint(0, 128, (2, 9))
    logits, loss = model(idx, idx)
    manual = -torch.log_softmax(logits, -1).gather(-1, idx[..., None]).mean()
    torch.testing.assert_close(loss, manual)
    with pytest.raises(BabySSMError, match="levels"):
        model(idx, levels=1)
    with pytest.raises(BabySSMError, match="stage"):
        model.stage_loss(5, idx, idx)


def _code_invariants(codes: torch.Tensor):
    torch.testing.assert_close(codes.norm(dim=1), torch.ones(codes.shape[0], dtype=codes.dtype))
    # Unit codes are all equal exactly when their mean has norm 1.
    assert float(codes.mean(0).norm()) < 0.999


def _pull_onto_code_zero(E: torch.Tensor) -> torch.Tensor:
    return ((E - E[0]) ** 2).sum()


def test_codes_cannot_collapse():
    """A loss that pulls every code onto code 0 collapses a free embedding, never the normalised map."""
    torch.manual_seed(0)
    free = torch.nn.Parameter(torch.randn(128, 64))
    model = _tiny()
    opt = torch.optim.AdamW([model.level1.weight, free], lr=0.05, weight_decay=0.5)
    schedule = torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.01, total_iters=200)
    for _ in range(200):
        opt.zero_grad()
        (_pull_onto_code_zero(model.level1.codes()) + _pull_onto_code_zero(free)).backward()
        opt.step()
        schedule.step()
    with torch.no_grad():
        assert ((free - free[0]) ** 2).sum(1).mean() < 1e-3  # the control does collapse
        codes = model.level1.codes()
    _code_invariants(codes)
    assert torch.cdist(codes[1:], codes[1:]).max() > 1.0  # the other codes stay spread out


def test_codes_survive_huge_sgd_steps():
    model = _tiny()
    opt = torch.optim.SGD(model.level1.parameters(), lr=100.0)
    for _ in range(20):
        opt.zero_grad()
        _pull_onto_code_zero(model.level1.codes()).backward()
        opt.step()
    with torch.no_grad():
        codes = model.level1.codes()
    assert torch.isfinite(codes).all()
    _code_invariants(codes)


def test_normalise_codes_invariants_random_scales():
    g = torch.Generator().manual_seed(0)
    for scale in (1e-4, 1.0, 1e4):
        _code_invariants(normalise_codes(torch.randn(128, 32, generator=g, dtype=torch.float64) * scale + 7))


def _fixed_batch_loss(model, stage, x, y):
    with torch.no_grad():
        if stage == 1:
            return model.level1.diffusion_loss(x, generator=torch.Generator().manual_seed(0))[0].item()
        return model.stage_loss(stage, x, y)[0].item()


def test_each_stage_learns_real_text(text_ids):
    model = _tiny()
    held_x, held_y = next(_batches(text_ids, 1, B=16, seed=99))
    for stage, steps, lr in ((1, 25, 1e-2), (2, 40, 1e-2), (3, 30, 3e-3)):
        params = model.stage_parameters(stage)
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        before = _fixed_batch_loss(model, stage, held_x, held_y)
        for x, y in _batches(text_ids, steps, seed=stage):
            loss, metrics = model.stage_loss(stage, x, y)
            assert math.isfinite(loss.item()) and all(math.isfinite(v) for v in metrics.values())
            opt.zero_grad()
            loss.backward()
            opt.step()
        after = _fixed_batch_loss(model, stage, held_x, held_y)
        assert after < before, f"stage {stage}: held-out loss {before:.4f} -> {after:.4f}"
    assert model(held_x, held_y)[1].item() < math.log(128) - 1.0  # well below uniform guessing


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_stage_parameters_freeze_other_levels(stage):
    model = _tiny(seed=stage)
    trained = model.stage_parameters(stage)
    assert {id(p) for p in trained} == {id(p) for p in model.level(stage).parameters()}
    assert all(p.requires_grad == (name.startswith(f"level{stage}.")) for name, p in model.named_parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(trained, lr=1e-2)
    idx = torch.randint(0, 128, (2, 16))
    model.stage_loss(stage, idx, idx)[0].backward()
    opt.step()
    for name, value in model.state_dict().items():
        changed = not torch.equal(value, before[name])
        if name.startswith(f"level{stage}."):
            assert changed, f"stage {stage} left {name} untrained"
        else:
            assert not changed, f"stage {stage} changed {name}"


def test_level3_variants_keep_the_seed_budget_where_claimed():
    seed = _level_totals(parameter_table(get_preset("seed")))[3]
    cfg = dataclasses.replace(get_preset("seed"), level3_input="features", level3_decay="selective")
    assert _level_totals(parameter_table(cfg))[3] == seed == 788_480  # R x N for W_in and W_decay
    cfg = dataclasses.replace(get_preset("seed"), level3_input="features")
    assert _level_totals(parameter_table(cfg))[3] == seed - 2 * 256 * 512 + 256 * 512
    with pytest.raises(ValueError, match="level3_rate"):
        ModelConfig(level3_rate="sentence")
    with pytest.raises(ValueError, match="finetune_fraction"):
        ModelConfig(finetune_fraction=0.95)


def test_deep_preset_keeps_the_seed_parameter_count():
    deep, seed = parameter_table(get_preset("deep")), parameter_table(get_preset("seed"))
    assert _level_totals(deep) == _level_totals(seed)
    assert {r["name"] for r in deep} - {r["name"] for r in seed} == {"level3.w_decay"}


def test_selective_decay_starts_as_the_fixed_decay():
    idx = torch.randint(0, 128, (2, 17))
    fixed, selective = _tiny(seed=4), _tiny(seed=4, level3_decay="selective")
    selective.load_state_dict({**fixed.state_dict(), "level3.w_decay": selective.level3.w_decay}, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(selective(idx)[0], fixed(idx)[0], atol=1e-5, rtol=1e-5)


def test_word_rate_state_moves_only_at_spaces_and_newlines():
    model = _tiny(seed=5, level3_rate="word")
    idx = torch.tensor([[0, 72, 105, 32, 116, 104, 101, 114, 101, 10, 111, 107]])  # "Hi there\nok"
    with torch.no_grad():
        _, h2, z2 = model.level2(idx, model.level1.codes())
        _, _, s = model.level3(h2, z2, h2[..., :model.config.d_model], idx)
    moved = (s[0, 1:] - s[0, :-1]).abs().amax(-1) > 0  # (T-1,): did step t change the state?
    assert moved.tolist() == [bool(c in (32, 10)) for c in idx[0, 1:].tolist()]
    assert float(s[0, 0].abs().max()) == 0.0  # BOS is not a boundary: the state starts empty


def test_stage_4_trains_every_level_by_cross_entropy():
    model = _tiny(seed=6)
    trained = model.stage_parameters(4)
    assert {id(p) for p in trained} == {id(p) for p in model.parameters()}
    idx = torch.randint(0, 128, (2, 12))
    loss, metrics = model.stage_loss(4, idx, idx)
    torch.testing.assert_close(loss, model(idx, idx)[1])
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_level3_loss_options_weight_their_terms():
    idx = torch.randint(0, 128, (2, 12))
    for loss_name in ("mse", "cosine", "softnn", "mix"):
        model = _tiny(level3_loss=loss_name, level3_mix=(0.5, 2.0, 1.0))
        loss, metrics = model.stage_loss(3, idx, idx)
        assert all(v.dim() == 0 and not v.requires_grad for v in metrics.values())
        m = {k: float(v) for k, v in metrics.items()}
        expected = dict(zip(("mse", "cosine", "softnn", "mix"),
                            (m["mse"], m["cosine"], m["ce"], 0.5 * m["mse"] + 2 * m["cosine"] + m["ce"])))
        assert loss.item() == pytest.approx(expected[loss_name], rel=1e-5)


def test_level1_report_and_pca_plot(tmp_path, text_ids):
    model = _tiny()
    report = level1_report(model, text_ids[:2000])
    assert report["clean_nn_accuracy"] == 1.0
    assert report["mean_pairwise_sq_distance"] == pytest.approx(2 * 128 / 127, rel=1e-4)
    accuracies = [row["nn_accuracy"] for row in report["per_sigma"]]
    assert accuracies[0] > 0.99 and accuracies[-1] < accuracies[0]  # more noise, fewer recoveries
    json.dumps(report)
    path = plot_embedding_pca(model, tmp_path / "pca.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
