"""The hlru family (babyssm.models: lru, hourglass, hlru): the three forms agree, strict causality, the contract."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import transformers
from torch._dynamo.utils import counters

from babyssm.commands.main import main
from babyssm.data.vocab import encode
from babyssm.errors import BabySSMError
from babyssm.evaluation import scoring
from babyssm.hf.export import export_run
from babyssm.models.hlru import HLRU, HLRUConfig, get_hlru_preset
from babyssm.models.attention import LocalAttention
from babyssm.models.lru import Block
from babyssm.training import loop
from babyssm.training.checkpoint import load_model, save_checkpoint
from babyssm.training.plan import default_stages
from helpers import make_prepared

SMALL = dict(d_model=16, d_ff=24, d_word=12, d_word_ff=20, chunk_size=4)


def _model(seed: int = 0, **overrides) -> HLRU:
    torch.manual_seed(seed)
    model = HLRU(HLRUConfig(**{**SMALL, **overrides})).double().eval()
    with torch.no_grad():  # a trained model's gates are far from their init: exercise all of them
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def _text(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    """Letters, spaces/newlines and full stops at different positions per row; BOS first."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(97, 123, (batch, length), generator=g)
    idx[torch.rand(batch, length, generator=g) < 0.25] = 32
    idx[torch.rand(batch, length, generator=g) < 0.05] = 10
    idx[torch.rand(batch, length, generator=g) < 0.05] = 46
    idx[:, 0] = 0
    return idx


def _double(state):
    if isinstance(state, torch.Tensor):
        return state.double() if state.is_floating_point() else state
    return type(state)(_double(s) for s in state)


@pytest.mark.parametrize("d_state", [1, 4])  # 4: two heads of 4 x 4 matrix states
@pytest.mark.parametrize("kernel", ["sequential", "chunked"])
def test_block_scan_kernels_match_the_reference_values_and_gradients(kernel, d_state):
    torch.manual_seed(0)
    block = Block(8, 12, conv_size=3, max_timescale=20.0, chunk_size=4, eps=1e-6, d_state=d_state).double()
    x = torch.randn(2, 11, 8, dtype=torch.float64, requires_grad=True)  # T not a multiple of the chunk
    state = _double(block.init_state(2))
    state = (torch.randn_like(state[0]), torch.randn_like(state[1]))
    outs, grads = [], []
    for k in ("reference", kernel):
        y, (buf, h) = block(x, state, kernel=k)
        (y.sum() + 0.5 * h.pow(2).sum()).backward()
        outs.append((y.detach(), buf.detach(), h.detach()))
        grads.append([x.grad.clone(), *(p.grad.clone() for p in block.parameters())])
        x.grad = None
        block.zero_grad()
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("attention_heads, d_state", [(0, 1), (0, 3), (2, 1)])
def test_block_lengths_give_each_rows_own_final_state(attention_heads, d_state):
    torch.manual_seed(0)
    block = Block(6, 8, conv_size=4, max_timescale=10.0, chunk_size=4, eps=1e-6, attention_heads=attention_heads,
                  window=4, d_state=d_state).double()
    x = torch.randn(3, 7, 6, dtype=torch.float64)
    state = _double(block.init_state(3))
    _, final = block(x, state, lengths=torch.tensor([0, 2, 7]))
    for row, n in enumerate((0, 2, 7)):
        _, row_final = block(x[row:row + 1, :n], tuple(s[row:row + 1] for s in state))
        for a, b in zip(final, row_final):
            torch.testing.assert_close(a[row:row + 1], b)


@pytest.mark.parametrize("attention_heads, d_state", [(0, 1), (0, 3), (2, 1)])
@pytest.mark.parametrize("warm", [0, 5])  # 0: an attention cache that has not grown yet
def test_block_step_advances_only_the_chosen_rows(attention_heads, d_state, warm):
    torch.manual_seed(0)
    block = Block(6, 8, conv_size=4, max_timescale=10.0, chunk_size=4, eps=1e-6, attention_heads=attention_heads,
                  window=4, d_state=d_state).double()
    x = torch.randn(3, warm + 1, 6, dtype=torch.float64)
    _, state = block(x[:, :warm], _double(block.init_state(3)))
    advance = torch.tensor([True, False, True])
    y, moved = block.step(x[:, warm], state, advance=advance)
    for row in range(3):
        row_state = tuple(s[row:row + 1] for s in state)
        if advance[row]:
            row_y, expected = block.step(x[row:row + 1, warm], row_state)
            torch.testing.assert_close(y[row:row + 1], row_y)
        else:  # the state as it stands, in the shape forward returns
            _, expected = block(x[row:row + 1, :0], row_state)
        for a, b in zip(moved, expected):
            torch.testing.assert_close(a[row:row + 1], b)


@pytest.mark.parametrize("window", [3, 9])  # 9: the whole input, the plain causal mask's path
def test_local_attention_sees_its_window_and_nothing_later(window):
    """Output i moves with inputs i-W+1 .. i only: the window, causal, no position beyond it."""
    torch.manual_seed(0)
    attn = LocalAttention(width=8, n_heads=2, window=window).double()
    u = torch.randn(2, 9, 8, dtype=torch.float64, requires_grad=True)
    y, _ = attn(u, _double(attn.init_state(2)))
    for i in range(9):
        (grad,) = torch.autograd.grad(y[:, i].sum(), u, retain_graph=True)
        moved = grad.abs().sum((0, 2)) > 0  # (9,)
        assert moved.tolist() == [i - window < j <= i for j in range(9)]


@pytest.mark.parametrize("overrides", [{}, {"n_word": 0}, {"head": "softnn", "conv_size": 1},
                                       {"n_encoder": 2, "n_word": 1, "n_decoder": 1, "char_map": "init"},
                                       {"boundaries": "punct"},
                                       {"n_word": 2, "word_attention": 1, "n_heads": 2, "word_window": 3},
                                       {"word_attention": 1, "n_heads": 3},
                                       {"char_attention": 1, "char_window": 6, "n_heads": 2},
                                       {"n_decoder": 1, "char_attention": 1, "char_window": 64},
                                       {"d_state": 4, "word_attention": 1, "n_heads": 2}, {"d_state": 8, "d_word": 16}])
def test_step_and_forward_from_equal_forward(overrides):
    model = _model(**overrides)
    idx = _text(3, 23)
    logits, _ = model(idx)
    state, steps = _double(model.init_state(3)), []
    for t in range(idx.size(1)):
        out, state = model.step(idx[:, t], state)
        steps.append(out)
    torch.testing.assert_close(torch.stack(steps, 1), logits)
    # In chunks, cut mid-word and at boundaries; the carried state is not modified in place.
    s0 = _double(model.init_state(3))
    a, s1 = model.forward_from(idx[:, :5], s0)
    b, s2 = model.forward_from(idx[:, 5:6], s1)
    c, _ = model.forward_from(idx[:, 6:], s2)
    torch.testing.assert_close(torch.cat([a, b, c], 1), logits)
    again, _ = model.forward_from(idx[:, 5:6], s1)
    assert torch.equal(again, b)


@pytest.mark.parametrize("d_state", [1, 4])
@pytest.mark.parametrize("kernel", ["sequential", "chunked", "reference"])
def test_model_kernels_agree_forward_and_backward(kernel, d_state):
    model = _model(scan_kernel="reference", d_state=d_state).train()
    idx, targets = _text(2, 19), _text(2, 19, seed=2)
    _, ref = model(idx, targets)
    ref.backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.config.scan_kernel = kernel
    _, loss = model(idx, targets)
    loss.backward()
    torch.testing.assert_close(loss, ref)
    for p, g in zip(model.parameters(), ref_grads):
        torch.testing.assert_close(p.grad, g)


@pytest.mark.parametrize("overrides", [{}, {"conv_size": 1}, {"boundaries": "punct"},
                                       {"n_word": 2, "word_attention": 1, "n_heads": 2, "word_window": 4,
                                        "char_attention": 2, "char_window": 9}, {"d_state": 4}])
def test_strictly_causal(overrides):
    """Changing the character at position j moves no log-probability before j, including a
    boundary becoming a letter and a letter becoming a boundary (the word level's path)."""
    model = _model(**overrides)
    idx = _text(1, 30)
    base = model(idx)[0]
    for j in range(1, 30):
        for new in (32, 10, 46, 120):
            if int(idx[0, j]) == new:
                continue
            other = idx.clone()
            other[0, j] = new
            changed = model(other)[0]
            # float64: a leak would move them by ~1e-2; a different word count regroups sums (~1e-15).
            torch.testing.assert_close(changed[:, :j], base[:, :j], rtol=0, atol=1e-12)
            assert not torch.allclose(changed[:, j], base[:, j])


def _word_added(model: HLRU, idx: torch.Tensor) -> torch.Tensor:
    """What the word level adds to each position (1, T, D) of one row ``idx``, from the start."""
    enc_states, word_states, _, last = model.init_state(1)
    e, _ = model._run(model.encoder, model._embed(idx), _double(enc_states))
    return model._word_level(e, idx, _double(word_states), last.double())[0]


def test_word_summary_reaches_only_characters_after_its_boundary():
    """What the word level adds at position t comes from words closed at or before t: changing
    a letter of "cat" changes it from the space that closes the word on, not before."""
    model = _model()
    a = torch.tensor([[0, 99, 97, 116, 32, 100, 111, 103, 10, 104]])  # BOS "cat dog\nh"
    b = a.clone()
    b[0, 2] = 117  # "cut"
    added = [_word_added(model, a), _word_added(model, b)]
    torch.testing.assert_close(added[0][:, :4], added[1][:, :4], rtol=0, atol=0)
    assert all(not torch.allclose(added[0][:, t], added[1][:, t]) for t in range(4, 10))


def test_punct_boundaries_close_a_word_at_punctuation():
    """boundaries "punct": in BOS "hi, yo" the comma closes "hi" (the summary changes from the
    comma on when a letter of "hi" does); with "space" only the space after it does."""
    a = torch.tensor([[0, 104, 105, 44, 32, 121, 111]])  # BOS "hi, yo"
    b = a.clone()
    b[0, 1] = 110  # "ni,"
    for boundaries, first_moved in (("punct", 3), ("space", 4)):
        model = _model(boundaries=boundaries)
        added = [_word_added(model, a), _word_added(model, b)]
        torch.testing.assert_close(added[0][:, :first_moved], added[1][:, :first_moved], rtol=0, atol=0)
        assert not torch.allclose(added[0][:, first_moved], added[1][:, first_moved])
    with pytest.raises(ValueError, match="boundaries"):
        HLRUConfig(boundaries="learned")


def test_word_level_starts_silent():
    """word_up_init "zero": at initialisation the model is exactly its character stack, and
    the word level still learns (W_up gets a gradient at once); "normal" adds noise from step 0."""
    torch.manual_seed(0)
    model = HLRU(HLRUConfig(**SMALL))
    idx = _text(2, 12)
    enc_states, _, dec_states, _ = model.init_state(2)
    e, _ = model._run(model.encoder, model._embed(idx), enc_states)
    o, _ = model._run(model.decoder, e, dec_states)
    logits, loss = model(idx, targets=idx.roll(-1, 1))
    torch.testing.assert_close(logits, model._head(model.norm(o)), rtol=0, atol=0)
    loss.backward()
    assert model.word_up.weight.grad.abs().sum() > 0
    noisy = HLRU(HLRUConfig(**SMALL, word_up_init="normal"))
    assert noisy.word_up.weight.abs().sum() > 0
    with pytest.raises(ValueError, match="word_up_init"):
        HLRUConfig(word_up_init="ones")


def test_stages_and_frozen_map():
    assert HLRU(HLRUConfig(**SMALL)).stages == (0,)
    model = HLRU(HLRUConfig(**SMALL, char_map="frozen"))
    assert model.stages == (1, 0) and [s.stage for s in default_stages(model)] == [1, 0]
    assert {id(p) for p in model.stage_parameters(1)} == {id(model.level1.weight)}
    trained = {id(p) for p in model.stage_parameters(0)}
    assert id(model.level1.weight) not in trained and len(trained) == len(list(model.parameters())) - 1
    idx = _text(2, 9)
    model.stage_parameters(1)
    loss, metrics = model.stage_loss(1, idx, idx)
    assert loss.requires_grad and "denoise_acc" in metrics
    with pytest.raises(BabySSMError, match="stages \\(1, 0\\)"):
        model.stage_loss(2, idx, idx)
    assert HLRU(HLRUConfig(**SMALL, char_map="init")).stage_parameters(0).__len__() == len(list(model.parameters()))


def test_config_validation_and_presets():
    with pytest.raises(ValueError, match="HLRUConfig.head"):
        HLRUConfig(head="tied")
    with pytest.raises(ValueError, match="HLRUConfig.n_word"):
        HLRUConfig(n_word=-1)
    with pytest.raises(ValueError, match="at most n_word"):
        HLRUConfig(n_word=1, word_attention=2)
    with pytest.raises(ValueError, match="divisible by n_heads"):
        HLRUConfig(d_word=30, word_attention=1, n_heads=4)
    with pytest.raises(ValueError, match="char_window >= 2"):
        HLRUConfig(char_attention=1, char_window=1)
    with pytest.raises(ValueError, match=r"d_state \(5\) must divide d_model \(144\)"):
        HLRUConfig(d_state=5)
    with pytest.raises(ValueError, match=r"d_state \(3\) must divide d_word \(224\)"):
        HLRUConfig(d_state=3, d_model=192)
    HLRUConfig(d_state=3, d_model=192, word_attention=1, n_heads=4)  # no word recurrence to divide
    with pytest.raises(BabySSMError, match="hlru-16m"):
        get_hlru_preset("hlru-huge")
    assert HLRU(get_hlru_preset("hlru")).num_parameters() == 1_648_288  # the seed's 1,640,961 within 1 %
    assert HLRU(get_hlru_preset("hlru-flat")).num_parameters() == 1_634_848
    assert HLRU(get_hlru_preset("hlru-attn")).num_parameters() == 1_640_752


def test_bf16_autocast_and_checkpoint_round_trip(tmp_path):
    model = HLRU(HLRUConfig(**SMALL))
    idx = _text(2, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = model.stage_loss(0, idx, idx)
        loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())
    model.eval()
    save_checkpoint(tmp_path, model, {"stages_completed": [0]})
    back, info = load_model(tmp_path)
    assert info["model_type"] == "hlru" and back.config == model.config
    assert torch.equal(back(idx)[0], model(idx)[0])
    pair = [encode("The cat sat down."), encode("The cat sit down.")]
    flat = scoring.token_logprobs(back, pair)
    grouped = scoring.group_token_logprobs(back, [pair])[0]
    for f, g, s in zip(flat, grouped, pair):
        np.testing.assert_allclose(f, g, atol=1e-4)
        np.testing.assert_allclose(f, scoring.reference_token_logprobs(back, s), atol=1e-4)


@pytest.mark.parametrize("preset", ["hlru", "hlru-attn"])
def test_bfloat16_scoring_stays_near_float32(preset):
    """``babyssm eval --precision bfloat16``: both scoring paths under autocast stay within
    bfloat16's rounding of the float32 reference (a random model of the real sizes)."""
    torch.manual_seed(0)
    model = HLRU(get_hlru_preset(preset)).eval()
    groups = [[encode("The cat sat down."), encode("The cat sit down.")],
              [encode("Who did you see?"), encode("Who did you saw?")]]
    exact = scoring.group_token_logprobs(model, groups)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = scoring.group_token_logprobs(model, groups)
        flat = scoring.token_logprobs(model, [s for g in groups for s in g])
    pairs = [(e, f) for ge, gf in zip(exact, fast) for e, f in zip(ge, gf)]
    assert all(e.dtype == f.dtype == np.float64 and e.shape == f.shape for e, f in pairs)
    worst = max(float(np.abs(e - f).max()) for e, f in pairs)
    assert 0 < worst < 0.02  # bfloat16 moved the scores, by rounding only
    for f, g in zip(flat, [f for gf in fast for f in gf]):
        np.testing.assert_allclose(f, g, atol=0.02)


@pytest.fixture(scope="module")
def prepared(data_root, tmp_path_factory) -> Path:
    return make_prepared(data_root, tmp_path_factory.mktemp("corpus"), kib=8)


def test_cli_trains_generates_evaluates_and_resumes(prepared, tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--preset", "hlru-tiny", "--set", "char_map=init", "--data", str(prepared), "--out", str(out),
            "--seq-len", "32", "--batch-size", "4", "--max-chars", str(4 * 32 * 8), "--eval-every", "4",
            "--eval-chars", "256", "--set", "lr=3e-3", "--set", "map_lr=5e-3", "--halt-after-steps", "5"]
    assert main(argv) == 0
    assert main(["train", "--data", str(prepared), "--out", str(out), "--resume"]) == 0
    model, info = load_model(out)
    assert info["model_type"] == "hlru" and info["stages_completed"] == [0, 1]
    saved = json.loads((out / "config.json").read_text())
    assert [(s["stage"], s["lr"]) for s in saved["stages"]] == [(1, 5e-3), (0, 3e-3)]
    assert main(["generate", "--run", str(out), "--prompt", "the cat ", "--new-chars", "20"]) == 0
    assert main(["eval", "bpc", "--run", str(out), "--data", str(prepared), "--split", "dev",
                 "--chars-per-file", "2000"]) == 0
    result = json.loads((out / "eval" / "bpc_dev.json").read_text())
    assert [r["levels"] for r in result["runs"]] == [None] and 1 < result["runs"][0]["bpc"] < 8


def test_large_preset_trains_a_few_steps_and_exports(prepared, tmp_path):
    cfg = get_hlru_preset("hlru-16m")
    assert 15e6 < HLRU(cfg).num_parameters() < 17e6  # about 10x the hlru preset
    out = tmp_path / "large"
    assert main(["train", "--preset", "hlru-16m", "--data", str(prepared), "--out", str(out), "--seq-len", "32",
                 "--batch-size", "2", "--max-chars", str(2 * 32 * 2), "--eval-chars", "0"]) == 0
    model, info = load_model(out)
    assert info["stages_completed"] == [0] and dataclasses.asdict(model.config) == dataclasses.asdict(cfg)
    assert main(["export", "--run", str(out), "--out", str(tmp_path / "hf")]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", trust_remote_code=True).eval()
    idx = torch.tensor([[0, *encode("The cat sat.\nIt slept")]])
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx)[0], atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh runs it)")
def test_cuda_chunked_scan_matches_the_cpu_reference():
    model = _model()
    idx, targets = _text(3, 40), _text(3, 40, seed=2)
    _, ref = model(idx, targets)
    ref.backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    gpu = _model().float().cuda().train()
    gpu.config.scan_kernel = "chunked"
    logits, loss = gpu(idx.cuda(), targets.cuda())
    loss.backward()
    torch.testing.assert_close(loss.double().cpu(), ref, atol=1e-4, rtol=1e-4)
    for p, g in zip(gpu.parameters(), ref_grads):
        torch.testing.assert_close(p.grad.double().cpu(), g, atol=1e-4, rtol=1e-3)
    state, steps = gpu.init_state(3, "cuda"), []
    with torch.no_grad():
        for t in range(idx.size(1)):
            out, state = gpu.step(idx[:, t].cuda(), state)
            steps.append(out)
    torch.testing.assert_close(torch.stack(steps, 1), logits.detach(), atol=1e-4, rtol=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, _ = gpu.stage_loss(0, idx.cuda(), targets.cuda())
    assert torch.isfinite(loss)


def _train_tiny(prepared, out, *extra) -> dict:
    """Four logged steps of hlru-tiny on 4 x 32 windows (``extra``: more flags); the saved config."""
    assert main(["train", "--preset", "hlru-tiny", "--data", str(prepared), "--out", str(out), "--seq-len", "32",
                 "--batch-size", "4", "--max-chars", str(4 * 32 * 4), "--eval-chars", "0", "--log-every", "1",
                 *extra]) == 0
    return json.loads((out / "config.json").read_text())


def _logged_losses(out) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_compiled_training_follows_the_eager_run(prepared, tmp_path):
    """--compile fuses the elementwise work and leaves the scan out of the graph: the same seed
    gives the same losses step by step (the windows vary in word count, so the word level's
    shapes change between steps and the compiled graph must follow them). The compiled run
    halts after two steps and resumes with --no-compile, which a resumed run would otherwise
    inherit."""
    def saved_compile(out):
        return json.loads((out / "config.json").read_text())["train_config"]["compile"]

    def train(out, *extra):
        counters.clear()
        _train_tiny(prepared, out, *extra)
        return saved_compile(out)

    assert train(tmp_path / "eager") is False and counters["stats"]["unique_graphs"] == 0
    assert train(tmp_path / "compiled", "--compile", "--halt-after-steps", "2") is True
    assert counters["stats"]["unique_graphs"] > 0
    # The graph is cut only where the code says so (the scan loop, the word count), never by a metric's sync.
    assert counters["graph_break"] and all("torch.compiler.disable" in why for why in counters["graph_break"])
    assert main(["train", "--data", str(prepared), "--out", str(tmp_path / "compiled"), "--resume",
                 "--no-compile"]) == 0
    assert saved_compile(tmp_path / "compiled") is False
    assert len(_logged_losses(tmp_path / "eager")) == 4
    np.testing.assert_allclose(_logged_losses(tmp_path / "compiled"), _logged_losses(tmp_path / "eager"), rtol=1e-4)


def test_bfloat16_training_on_cpu(prepared, tmp_path, monkeypatch, capsys):
    """--precision bfloat16 trains under CPU autocast: the losses follow the float32 run's to
    bfloat16's precision without equalling them (the matrix products really ran in bfloat16),
    the resolved precision is recorded, a resumed run keeps it, and a CPU without bfloat16
    units gets a warning."""
    full = _train_tiny(prepared, tmp_path / "float32")
    assert full["train_config"]["precision"] == "auto" and full["run_info"]["precision"] == "float32"
    monkeypatch.setattr(loop, "native_cpu_bfloat16", lambda: False)
    _train_tiny(prepared, tmp_path / "bfloat16", "--precision", "bfloat16", "--halt-after-steps", "2")
    assert "bfloat16 on a CPU without AMX or AVX512-BF16 units is emulated" in capsys.readouterr().err
    assert main(["train", "--data", str(prepared), "--out", str(tmp_path / "bfloat16"), "--resume"]) == 0
    half = json.loads((tmp_path / "bfloat16" / "config.json").read_text())
    assert half["train_config"]["precision"] == "bfloat16" and half["run_info"]["precision"] == "bfloat16"
    assert len(_logged_losses(tmp_path / "bfloat16")) == len(_logged_losses(tmp_path / "float32")) == 4
    np.testing.assert_allclose(_logged_losses(tmp_path / "bfloat16"), _logged_losses(tmp_path / "float32"), rtol=2e-2)
    assert _logged_losses(tmp_path / "bfloat16") != _logged_losses(tmp_path / "float32")
