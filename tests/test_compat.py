"""A run folder written before the package layout (tests/fixtures/old_run: config.json and
model.safetensors trained by babyssm at commit aa4be5c, with the numbers that code computed
in expected.json) still loads, scores the same and exports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
import transformers

from babyssm.data.vocab import encode
from babyssm.evaluation import scoring
from babyssm.hf.export import export_run
from babyssm.training.checkpoint import load_model

OLD_RUN = Path(__file__).parent / "fixtures" / "old_run"
EXPECTED = json.loads((OLD_RUN / "expected.json").read_text())


def test_an_old_run_loads_and_scores_the_same():
    model, info = load_model(OLD_RUN)
    assert info["stages_completed"] == [1, 2, 3, 4] and info["default_levels"] == EXPECTED["default_levels"] == 3
    ids = [encode(t) for t in EXPECTED["texts"]]
    for levels in (2, 3):
        got = [float(lp.sum()) for lp in scoring.token_logprobs(model, ids, levels=levels)]
        np.testing.assert_allclose(got, EXPECTED[f"logprobs_levels{levels}"], rtol=0, atol=1e-4)
    text = np.frombuffer(("\n".join(EXPECTED["texts"]) * 3).encode(), dtype=np.uint8)
    got = scoring.windowed_logprob(model, text, seq_len=32, batch_size=8)
    assert abs(got - EXPECTED["windowed_logprob"]) < 1e-3
    assert list(model.generate(encode("Once"), 20, temperature=0)) == EXPECTED["greedy"]


def test_an_old_run_exports_and_the_export_scores_the_same(tmp_path):
    run = shutil.copytree(OLD_RUN, tmp_path / "old_run")
    hf_dir = export_run(run, tmp_path / "hf")
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, trust_remote_code=True).eval()
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    for text, want in zip(EXPECTED["texts"], EXPECTED["logprobs_levels3"]):
        enc = tok(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model(enc[:, :-1]).logits
        got = torch.log_softmax(logits.double(), -1).gather(-1, enc[:, 1:, None]).sum().item()
        assert abs(got - want) < 1e-4
