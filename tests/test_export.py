"""BabyLM readiness: the Hugging Face export (transformers 4.51.3 here, the current release
in a second environment), its equality with babyssm's own scores, and word counting."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file

from babyssm.commands.main import main
from babyssm.data.clean import clean_text
from babyssm.data.prepared import load_split
from babyssm.data.vocab import encode
from babyssm.evaluation import scoring, zeroshot
from babyssm.hf import modeling_babyssm as hf_modeling
from babyssm.hf.export import PAD_ID, UNK_ID, build_tokenizer, export_run, milestone_runs, remote_code_files
from babyssm.models.config import ModelConfig
from babyssm.models.gru import GRULM, GRUConfig
from babyssm.models.hierarchical import HierarchicalSSM
from babyssm.models.hlru import HLRU, get_hlru_preset
from babyssm.models.lm import registered_models
from babyssm.models.presets import get_preset
from babyssm.training import loop as train
from babyssm.training.batches import count_words
from babyssm.training.checkpoint import load_model, save_checkpoint
from babyssm.training.plan import BABYLM_WORD_MILESTONES, milestone_name, parse_milestones
from helpers import make_prepared

REPO = Path(__file__).resolve().parents[1]
# The current transformers lives in a second environment (.ci/run builds it): the main one
# pins the BabyLM pipeline's 4.51.3.
HF_PYTHON = Path(os.environ.get("BABYSSM_HF_PYTHON", REPO / ".venv-hf" / "bin" / "python"))
ATOL = 1e-4  # nats per sentence
# Tiny models with level-3 variants (babyssm.models.levels), beside the seed recipe's "tiny" and "seed".
VARIANTS = {
    "variant-all": {"level3_input": "features", "level3_decay": "selective", "level3_rate": "word"},
    "variant-selective": {"level3_decay": "selective"},
    "variant-word": {"level3_rate": "word"},
    "variant-features": {"level3_input": "features"},
}
# The hlru family (babyssm.models.hlru) on its tiny preset: as trained, without the word level, tied soft-NN head,
# attention over words and characters (windows shorter than the test sentences, so the caches slide), matrix
# states.
HLRU_VARIANTS = {"hlru": {}, "hlru-nowords": {"n_word": 0}, "hlru-softnn": {"head": "softnn", "char_map": "init"},
                 "hlru-attention": {"word_attention": 1, "word_window": 4, "char_attention": 1, "char_window": 12},
                 "hlru-matrix-state": {"d_state": 4}}


def _random_run(root: Path, name: str, cfg: ModelConfig, seed: int) -> Path:
    """A run folder with random weights; the gate is opened so level 3 changes every score."""
    torch.manual_seed(seed)
    model = HierarchicalSSM(cfg)
    with torch.no_grad():
        model.level3.b_gate.fill_(1.0)
        model.level3.b_out.normal_(0, 1)
        if cfg.level3_decay == "selective":  # it starts at 0 (the fixed decays): make a3 depend on u
            model.level3.w_decay.normal_(0, model.level3.w_decay.shape[0] ** -0.5)
    save_checkpoint(root / name, model, {"stages_completed": [1, 2, 3], "chars_seen": 0, "words_seen": 0})
    return root / name


def _random_hlru_run(root: Path, name: str, overrides: dict, seed: int) -> Path:
    """An hlru run folder with random weights, perturbed so that every gate and decay matters."""
    torch.manual_seed(seed)
    model = HLRU(dataclasses.replace(get_hlru_preset("hlru-tiny"), **overrides))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    save_checkpoint(root / name, model, {"stages_completed": list(model.stages), "chars_seen": 0, "words_seen": 0})
    return root / name


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """(run folder, HF folder) of a tiny and a seed-sized random model, and of tiny level-3 variants."""
    root = tmp_path_factory.mktemp("export")
    configs = {"tiny": get_preset("tiny"), "seed": get_preset("seed"),
               **{name: dataclasses.replace(get_preset("tiny"), **v) for name, v in VARIANTS.items()}}
    out = {}
    for seed, (name, cfg) in enumerate(configs.items(), start=1):
        run = _random_run(root, name, cfg, seed)
        out[name] = (run, export_run(run, root / f"hf_{name}"))
    for seed, (name, overrides) in enumerate(HLRU_VARIANTS.items(), start=seed + 1):
        run = _random_hlru_run(root, name, overrides, seed)
        out[name] = (run, export_run(run, root / f"hf_{name}"))
    return out


@pytest.fixture(scope="module")
def blimp_slice(data_root, tmp_path_factory) -> tuple[list[tuple[str, str]], Path]:
    """(good, bad) raw sentence pairs, the first two items of every filtered BLiMP file, and
    a set folder holding just them (in the same order) for babyssm's own evaluation."""
    pairs, rows = [], []
    for file in sorted((data_root / "eval" / "blimp_filtered").glob("*.jsonl")):
        records = [json.loads(line) for line in file.read_text().splitlines() if line.strip()][:2]
        pairs += [(r["sentence_good"], r["sentence_bad"]) for r in records]
        rows += [json.dumps({**r, "UID": file.stem}) for r in records]
    folder = tmp_path_factory.mktemp("blimp_slice")
    (folder / "slice.jsonl").write_text("\n".join(rows) + "\n")
    return pairs, folder


def _hf(path: Path):
    tok = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
    return model, tok


@torch.no_grad()
def hf_sentence_logprobs(model, tok, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """log p(text | BOS) as the BabyLM pipeline's causal backend computes it: the tokenizer adds
    BOS, rows are right-padded, targets are the inputs shifted by one."""
    out = []
    for lo in range(0, len(texts), batch_size):
        enc = tok(texts[lo:lo + batch_size], padding=True, return_tensors="pt")
        logits = model(input_ids=enc["input_ids"][:, :-1], attention_mask=enc["attention_mask"][:, :-1]).logits
        lp = torch.log_softmax(logits.double(), -1).gather(-1, enc["input_ids"][:, 1:, None])[..., 0]
        out += (lp * enc["attention_mask"][:, 1:]).sum(1).tolist()
    return np.array(out)


def test_tokenizer_is_the_babyssm_vocabulary_with_offsets_and_round_trip(exported):
    _, tok = _hf(exported["tiny"][1])
    text = "Hi there.\nA second line, with 3 digits!"
    enc = tok(text, return_offsets_mapping=True)
    assert enc["input_ids"] == [0, *encode(text)]  # BOS, then one ASCII code per character
    assert enc["offset_mapping"] == [(0, 0)] + [(i, i + 1) for i in range(len(text))]
    assert tok.decode(enc["input_ids"], skip_special_tokens=True) == text
    assert tok("The cat ")["input_ids"][-1] == ord(" ")  # a prefix keeps its final space
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (0, 3, PAD_ID, UNK_ID)
    assert type(tok).__name__ == "PreTrainedTokenizerFast"
    # How the BabyLM pipeline loads and calls it (sentence_zero_shot/dataset.py).
    processor = transformers.AutoProcessor.from_pretrained(exported["tiny"][1], padding_side="right",
                                                           trust_remote_code=True)
    assert processor(text=text, return_offsets_mapping=True)["input_ids"] == enc["input_ids"]


@pytest.mark.parametrize("text", [
    "naïve café “quoted” — dash", "it’s done…  ok\t fine  \n", "Title\r\n=======\r\nWell...  ok",
    "Ａｂｃ ﬁne «x» 1–2", "no\x07bell", "it´s 5″ · ok\u00a0‰",
])
def test_tokenizer_normalizer_is_clean_text_on_the_supported_folds(text):
    assert build_tokenizer().encode(text).ids == [0, *encode(clean_text(text))]


def test_characters_outside_the_folds_become_unk_where_clean_text_transliterates():
    ids = build_tokenizer().encode("Straße").ids
    assert ids == [0, *encode("Stra"), UNK_ID, *encode("e")]
    assert clean_text("Straße") == "Strasse"  # the documented difference


@pytest.mark.parametrize("preset", ["tiny", "seed", *VARIANTS, *HLRU_VARIANTS])
def test_exported_scores_equal_babyssm_and_blimp_accuracy_is_the_same(exported, blimp_slice, preset):
    run, hf_dir = exported[preset]
    pairs, folder = blimp_slice
    ours, _ = load_model(run)
    model, tok = _hf(hf_dir)
    for name, value in VARIANTS.get(preset, {}).items():
        assert getattr(model.config, name) == value
    texts = [s for pair in pairs for s in pair]
    hf = hf_sentence_logprobs(model, tok, texts)
    ref = np.array([lp.sum() for lp in scoring.token_logprobs(ours, [encode(clean_text(t)) for t in texts])])
    assert np.abs(hf - ref).max() < ATOL
    lines = ["One line.\nAnd the next one,\nand a third.", "Short\n"]  # newlines end words too
    ref = [lp.sum() for lp in scoring.token_logprobs(ours, [encode(t) for t in lines])]
    assert np.abs(hf_sentence_logprobs(model, tok, lines) - ref).max() < ATOL
    items = zeroshot.load_items(folder, "blimp")
    by_us = zeroshot.summarise("slice", "blimp", items, zeroshot.score_items(ours, items, 64, 3))
    by_hf = zeroshot.summarise("slice", "blimp", items, list(hf.reshape(-1, 2)))
    assert by_hf["uids"] == by_us["uids"] and len(by_us["uids"]) == len(pairs) // 2  # per BLiMP file
    assert by_hf["macro"] == by_us["macro"] and 0 < by_us["macro"] < 100


def test_a_level_2_export_scores_like_level_2(exported, tmp_path):
    run, _ = exported["tiny"]
    model, tok = _hf(export_run(run, tmp_path / "l2", levels=2))
    ours, _ = load_model(run)
    texts = ["The cat sat.", "A dog barks at night."]
    ref = [lp.sum() for lp in scoring.token_logprobs(ours, [encode(t) for t in texts], levels=2)]
    assert np.abs(hf_sentence_logprobs(model, tok, texts) - ref).max() < ATOL


@pytest.mark.parametrize("preset", ["tiny", "seed", "variant-all", "hlru"])
def test_greedy_generate_continues_like_babyssm_and_reuses_the_state(exported, preset):
    run, hf_dir = exported[preset]
    ours, _ = load_model(run)
    model, tok = _hf(hf_dir)
    prompt = "Once upon a time"
    want = list(ours.generate(encode(prompt), 30, temperature=0))
    lengths = []
    hook = model.register_forward_pre_hook(lambda m, args, kw: lengths.append(kw["input_ids"].shape[1]),
                                           with_kwargs=True)
    got = model.generate(**tok(prompt, return_tensors="pt"), max_new_tokens=30, do_sample=False)
    hook.remove()
    assert got[0, 1 + len(prompt):].tolist() == want
    assert lengths == [1 + len(prompt)] + [1] * 29  # the prompt once, then one character per step
    uncached = model.generate(**tok(prompt, return_tensors="pt"), max_new_tokens=30, do_sample=False,
                              use_cache=False)
    assert uncached.tolist() == got.tolist()
    tok.padding_side = "left"
    batch = model.generate(**tok([prompt, "A"], padding=True, return_tensors="pt"), max_new_tokens=30,
                           do_sample=False)
    assert batch[0, -30:].tolist() == want
    assert batch[1, -30:].tolist() == list(ours.generate(encode("A"), 30, temperature=0))


@pytest.mark.parametrize("preset", ["tiny", *VARIANTS, *HLRU_VARIANTS])
def test_left_padding_scores_like_no_padding_and_chunked_scan_like_sequential(exported, preset):
    model, tok = _hf(exported[preset][1])
    tok.padding_side = "left"
    enc = tok(["The cat sat on the mat.\nIt slept.", "Hi you"], padding=True, return_tensors="pt")
    spaces = {**enc, "input_ids": enc["input_ids"].masked_fill(enc["attention_mask"] == 0, ord(" "))}
    with torch.no_grad():
        padded = model(**enc).logits[1, -7:]
        space_padded = model(**spaces).logits[1, -7:]  # a padded space is no word boundary
        alone = model(**tok(["Hi you"], return_tensors="pt")).logits[0]
        model.config.scan_kernel = "chunked"
        chunked = model(**enc).logits
        model.config.scan_kernel = "sequential"
        sequential = model(**enc).logits
    assert torch.allclose(padded, alone, atol=1e-5) and torch.allclose(space_padded, alone, atol=1e-5)
    assert torch.allclose(chunked, sequential, atol=1e-4)


@pytest.mark.parametrize("preset", list(HLRU_VARIANTS))
def test_right_padding_is_one_forward_with_each_rows_own_logits(exported, preset, monkeypatch):
    """How the BabyLM pipeline scores: right-padded rows in one forward, exact at real positions."""
    model, tok = _hf(exported[preset][1])
    texts = ["The cat sat on the mat.\nIt slept.", "Hi you", "A dog barks."]
    enc = tok(texts, padding=True, return_tensors="pt")
    assert enc["attention_mask"][:, -1].tolist() == [1, 0, 0]  # right-padded
    calls, forward_from = [], model.forward_from
    monkeypatch.setattr(model, "forward_from", lambda *a, **k: calls.append(1) or forward_from(*a, **k))
    with torch.no_grad():
        out = model(**enc)
        batched_calls = len(calls)
        alone = [model(**tok([t], return_tensors="pt")).logits[0] for t in texts]
    assert batched_calls == 1 and out.hlru_state is None
    for b, want in enumerate(alone):
        assert torch.allclose(out.logits[b, :len(want)], want, atol=1e-5)
        assert not out.logits[b, len(want):].any()  # masked positions: zero logits


@pytest.mark.parametrize("preset", ["variant-selective", "variant-word"])
def test_masked_positions_leave_a_time_varying_level_3_state_untouched(exported, preset):
    model, tok = _hf(exported[preset][1])
    with torch.no_grad():
        first = model(**tok(["Hi you"], return_tensors="pt")).ssm_state
        more = torch.tensor([encode(" a b\n")])  # word boundaries, all masked
        mask = torch.cat([first.mask, torch.zeros_like(more)], dim=1)
        after = model(input_ids=more, attention_mask=mask, ssm_state=first).ssm_state
        moved = model(input_ids=more, attention_mask=torch.ones_like(mask), ssm_state=first).ssm_state
    assert torch.equal(after.s3, first.s3) and not torch.allclose(moved.s3, first.s3)


def test_the_export_ships_babyssm_s_own_modules_and_no_copy_of_the_equations(exported):
    _, hf_dir = exported["variant-all"]
    spec = HierarchicalSSM.hf_export
    files = remote_code_files(spec)
    assert set(files) == {"modeling_babyssm.py", "config.py", "scan.py", "levels.py"}
    for name, source in files.items():
        assert (hf_dir / name).read_bytes() == source.read_bytes()  # verbatim
    remote = (hf_dir / "modeling_babyssm.py").read_text()
    for equation in ("linear_scan", "sigmoid", "gelu", "rsqrt", "logspace", "einsum", "addcmul", "norm("):
        assert equation not in remote
    config = json.loads((hf_dir / "config.json").read_text())
    assert {f.name for f in dataclasses.fields(ModelConfig) if f.init} <= config.keys()  # no allow-list
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_babyssm.BabySSMForCausalLM"


@pytest.mark.parametrize("model_class", registered_models(), ids=lambda c: c.model_type)
def test_exported_modules_import_only_torch_the_standard_library_and_each_other(model_class):
    # What a new model family must keep to plug into `babyssm export` (CharLM.hf_export).
    spec = model_class.hf_export
    if spec is None:
        return
    files = remote_code_files(spec)
    for name, path in files.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert f"{node.module}.py" in files, f"{path}: imports .{node.module}, which the export lacks"
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                top = (node.module if isinstance(node, ast.ImportFrom) else node.names[0].name).split(".")[0]
                allowed = {"torch"} | ({"transformers"} if name == f"{spec.remote_code}.py" else set())
                assert top in allowed or top in sys.stdlib_module_names, f"{path} imports {top}"
    # transformers copies only the files the remote code itself imports relatively.
    remote = files[f"{spec.remote_code}.py"].read_text()
    assert {m for m in spec.modules if f"from .{m} import" in remote} == set(spec.modules)


def test_an_export_without_the_level_3_switches_loads_as_the_seed_recipe(exported, tmp_path):
    old = shutil.copytree(exported["tiny"][1], tmp_path / "old")
    config = json.loads((old / "config.json").read_text())
    assert {k: config.pop(k) for k in VARIANTS["variant-all"]} == {
        "level3_input": "state", "level3_decay": "fixed", "level3_rate": "char"}
    (old / "config.json").write_text(json.dumps(config))
    ids = torch.tensor([encode("An older export.\nStill fine.")])
    with torch.no_grad():
        before = _hf(exported["tiny"][1])[0](ids).logits
        assert torch.equal(_hf(old)[0](ids).logits, before)


_CURRENT = r"""
import json, sys, torch, transformers
from transformers import AutoModelForCausalLM, AutoProcessor, AutoTokenizer
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
torch.set_num_threads(1)
texts, prompt = json.loads(sys.argv[1]), sys.argv[2]
result = {"transformers": transformers.__version__}
for path in sys.argv[3:]:
    tok = AutoTokenizer.from_pretrained(path)  # no trust_remote_code: must load anyway
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(input_ids=enc["input_ids"][:, :-1], attention_mask=enc["attention_mask"][:, :-1]).logits
    lp = torch.log_softmax(logits.double(), -1).gather(-1, enc["input_ids"][:, 1:, None])[..., 0]
    gen = model.generate(**tok(prompt, return_tensors="pt"), max_new_tokens=30, do_sample=False)
    processor = AutoProcessor.from_pretrained(path, padding_side="right", trust_remote_code=True)
    lm = HFLM(pretrained=model, tokenizer=tok, backend="causal", device="cpu", batch_size=16)
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=("", t), idx=i) for i, t in enumerate(texts)]
    result[path] = {"logprobs": (lp * enc["attention_mask"][:, 1:]).sum(1).tolist(),
                    "generated": gen[0, 1 + len(prompt):].tolist(),
                    "processor_ids": processor(text=texts[0], return_offsets_mapping=True)["input_ids"],
                    "lm_eval": [ll for ll, _ in lm.loglikelihood(requests)]}
print("RESULT " + json.dumps(result))
"""


def test_current_transformers_and_lm_eval_give_the_same_numbers(exported, blimp_slice):
    if not HF_PYTHON.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{HF_PYTHON} is missing: .ci/run must build the current-transformers environment")
        pytest.skip(f"no current-transformers environment at {HF_PYTHON} (bash .ci/run builds it)")
    texts, prompt = [s for pair in blimp_slice[0][:20] for s in pair], "Once upon a time"
    presets = ("tiny", "seed", "variant-all", "hlru")
    dirs = [str(exported[p][1]) for p in presets]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([str(HF_PYTHON), "-c", _CURRENT, json.dumps(texts), prompt, *dirs], capture_output=True,
                          text=True, timeout=300, env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert int(result["transformers"].split(".")[0]) >= 5
    for preset, path in zip(presets, dirs):
        ours, _ = load_model(exported[preset][0])
        ref = np.array([lp.sum() for lp in scoring.token_logprobs(ours, [encode(clean_text(t)) for t in texts])])
        assert np.abs(np.array(result[path]["logprobs"]) - ref).max() < ATOL
        assert np.abs(np.array(result[path]["lm_eval"]) - ref).max() < ATOL
        assert result[path]["generated"] == list(ours.generate(encode(prompt), 30, temperature=0))
        assert result[path]["processor_ids"] == [0, *encode(clean_text(texts[0]))]


def test_automodel_gives_trainable_features_for_fine_tuning_heads(exported):
    run, hf_dir = exported["tiny"]
    model = transformers.AutoModel.from_pretrained(hf_dir, trust_remote_code=True)
    ours, _ = load_model(run)
    hidden = model(torch.tensor([encode("Hi there")])).last_hidden_state  # the predicted codes y
    assert model.config.hidden_size == ours.config.d_model == hidden.shape[-1]
    hidden.pow(2).sum().backward()
    assert model.level2.w_in1.grad is not None and model.level3.w_gate.grad.abs().sum() > 0


@pytest.mark.parametrize("preset", ["hlru", "hlru-softnn", "hlru-attention"])
def test_hlru_automodel_gives_the_features_under_the_head(exported, preset):
    run, hf_dir = exported[preset]
    model = transformers.AutoModel.from_pretrained(hf_dir, trust_remote_code=True)
    ours, _ = load_model(run)
    idx = torch.tensor([[0, *encode("Hi there, you.")]])
    hidden = model(idx).last_hidden_state
    want, _ = ours.features_from(idx, ours.init_state(1))
    assert model.config.hidden_size == ours.config.d_model == hidden.shape[-1]
    assert torch.allclose(hidden, want, atol=1e-5)
    assert torch.allclose(ours._head(want), ours(idx)[0], atol=1e-5)  # the features are what the head reads
    hidden.pow(2).sum().backward()
    assert all(p.grad is not None for name, p in model.named_parameters() if name.startswith("encoder."))


def test_export_refuses_bad_input(exported, tmp_path, capsys):
    run, hf_dir = exported["tiny"]
    assert main(["export", "--run", str(run), "--out", str(hf_dir)]) == 2
    assert "not empty; pass --force" in capsys.readouterr().err
    assert main(["export", "--run", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "m"), "--milestones"]) == 2
    assert "--save-word-milestones" in capsys.readouterr().err


def test_export_refuses_a_model_without_a_hugging_face_export(tmp_path, capsys):
    run = tmp_path / "gru"
    save_checkpoint(run, GRULM(GRUConfig(d_model=16)), {"stages_completed": [0]})
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "hf")]) == 2
    assert "has no Hugging Face export" in capsys.readouterr().err and not (tmp_path / "hf").exists()
    with pytest.raises(ValueError, match="level3_rate"):  # babyssm's own ModelConfig validates the config
        hf_modeling.BabySSMConfig(level3_rate="sentence")


def test_stage_4_without_stage_3_exports_every_level(exported, tmp_path, capsys):
    run = shutil.copytree(exported["tiny"][0], tmp_path / "l124")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "stages_completed": [1, 2, 4]}))
    hf_dir = export_run(run, tmp_path / "hf")
    assert json.loads((hf_dir / "config.json").read_text())["levels"] == 3
    assert "untrained" not in capsys.readouterr().err


def test_words_of_a_whole_split_equal_prepare_s_count(data_root, tmp_path):
    prepared = make_prepared(data_root, tmp_path, kib=8)
    data = np.asarray(load_split(prepared, "train"))
    meta = json.loads((prepared / "meta.json").read_text())
    assert count_words(data[None], np.array([10], dtype=np.uint8)) == meta["splits"]["train"]["words"]
    # Cut into windows, each counted with the character before it: the same total.
    T = 100
    n = len(data) // T * T
    windows = data[:n].reshape(-1, T)
    before = np.concatenate([[10], data[T - 1:n - 1:T]]).astype(np.uint8)
    assert count_words(windows, before) + count_words(data[None, n:], data[n - 1:n]) == meta["splits"]["train"]["words"]


def test_milestone_lists_and_names():
    assert BABYLM_WORD_MILESTONES[:2] == (1_000_000, 2_000_000) and BABYLM_WORD_MILESTONES[9:11] == (10_000_000,
                                                                                                      20_000_000)
    assert len(BABYLM_WORD_MILESTONES) == 19 and BABYLM_WORD_MILESTONES[-1] == 100_000_000
    assert parse_milestones("2M,500,1k,500") == (500, 1000, 2_000_000)
    assert [milestone_name(n) for n in (1_000_000, 30_000_000, 1500, 3000)] == ["1M", "30M", "1500", "3k"]
    with pytest.raises(Exception, match="positive count"):
        parse_milestones("1.5M")


def test_training_counts_words_saves_milestones_that_export_and_warns_past_the_limit(data_root, tmp_path,
                                                                                     monkeypatch, capsys):
    prepared = make_prepared(data_root, tmp_path, kib=16)
    monkeypatch.setattr(train, "STRICT_SMALL_MAX_WORDS", 300)  # the 100M limit, scaled to a toy run
    out = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--batch-size", "4", "--seq-len", "32", "--eval-chars", "0",
                 "--data", str(prepared), "--out", str(out), "--max-chars", str(40 * 128),
                 "--save-word-milestones", "100,250"]) == 0
    assert "past the BabyLM strict-small limit of 300" in capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    meta = json.loads((prepared / "meta.json").read_text())["splits"]["train"]
    logged = [r["words"] for r in rows if "words" in r]
    assert 0 < logged[0] < logged[-1] <= config["words_seen"]
    assert config["train_config"]["word_milestones"] == [100, 250]
    assert 0.7 < config["words_seen"] / config["chars_seen"] / (meta["words"] / meta["chars"]) < 1.3
    for m in (100, 250):
        saved = json.loads((out / "milestones" / f"words_{m}" / "config.json").read_text())
        assert saved["milestone_words"] == m and m <= saved["words_seen"] < m + 128  # within one batch
    assert main(["export", "--run", str(out), "--out", str(tmp_path / "hf"), "--milestones"]) == 0
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["chck_100", "chck_250", "main"]
    model, tok = _hf(tmp_path / "hf" / "chck_100")
    ours, _ = load_model(out / "milestones" / "words_100")
    ref = scoring.token_logprobs(ours, [encode("The end.")], levels=2)[0].sum()
    assert model.config.levels == 2  # level 3 counts only once stage 3 has completed
    assert abs(hf_sentence_logprobs(model, tok, ["The end."])[0] - ref) < ATOL
    assert [name for name, _ in milestone_runs(out)] == ["chck_100", "chck_250"]
    # Interrupted and resumed, the run writes the same milestones.
    again = tmp_path / "again"
    base = ["train", "--preset", "tiny", "--batch-size", "4", "--seq-len", "32", "--eval-chars", "0", "--data",
            str(prepared), "--out", str(again), "--max-chars", str(40 * 128), "--save-word-milestones", "100,250"]
    assert main([*base, "--halt-after-steps", "6"]) == 0 and main([*base, "--resume"]) == 0
    for m in (100, 250):
        a, b = (load_file(run / "milestones" / f"words_{m}" / "model.safetensors") for run in (out, again))
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((again / "config.json").read_text())["words_seen"] == config["words_seen"]
