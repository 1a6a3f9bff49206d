"""The evaluation harness: zero-shot scoring rules on hand-made sets with models of
known probabilities, bad input, and end-to-end ``babyssm eval`` on the real data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from babyssm.evaluation import scoring, zeroshot
from babyssm.commands.main import main
from babyssm.errors import BabySSMError
from babyssm.evaluation.bpc import evaluate_bpc, levels_to_evaluate, load_scorer
from babyssm.data.vocab import encode
from helpers import BigramLM, DecayRNN, ToyConfig


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def pair(good: str, bad: str, uid: str = "agr", term: str = "agreement", field: str = "syntax") -> dict:
    return {"sentence_good": good, "sentence_bad": bad, "field": field, "linguistics_term": term, "UID": uid}


def test_pairs_ties_and_averages(tmp_path):
    # Bigram: p(a|BOS) = 1/2, p(b|a) = 1/4, everything else uniform, so
    # "ab" beats "ax"; "ba" and "ca" tie exactly; "xy" loses to... "ab" as the bad one.
    write_jsonl(tmp_path / "s" / "agr.jsonl", [pair("ab", "ax"), pair("ba", "ca"), pair("xy", "ab")])
    write_jsonl(tmp_path / "s" / "isl.jsonl", [pair("ab", "zz", "isl", "island_effects", "syntax_semantics")])
    res = zeroshot.evaluate_set(BigramLM(), tmp_path / "s", "blimp")
    agr, isl = res["files"]
    assert (agr["n"], agr["ties"]) == (3, 1)
    assert agr["accuracy"] == pytest.approx(100 * 1.5 / 3)  # right + half a tie + wrong
    assert agr["accuracy_ties_right"] == pytest.approx(100 * 2 / 3)
    assert (isl["field"], isl["linguistics_term"], isl["UID"], isl["accuracy"]) == (
        "syntax/semantics", "island_effects", "isl", 100.0)
    assert res["micro"] == pytest.approx(100 * 2.5 / 4)
    assert res["macro"] == pytest.approx((50.0 + 100.0) / 2)
    assert res["macro_ties_right"] == pytest.approx((200 / 3 + 100.0) / 2)
    assert [p["linguistics_term"] for p in res["phenomena"]] == ["agreement", "island_effects"]


def test_credit_rules():
    assert zeroshot.credit(np.array([-1.0, -1.0, -1.0, -5.0])) == (pytest.approx(1 / 3), True, True)
    assert zeroshot.credit(np.array([-2.0, -1.0, -1.0])) == (0.0, False, True)
    assert zeroshot.credit(np.array([-1.0, -1.0 - zeroshot.TIE_NATS / 2])) == (0.5, True, True)
    # The pipeline's rule (torch.max's first index) credits exact equality only.
    assert zeroshot.credit(np.array([-1.0 - zeroshot.TIE_NATS / 2, -1.0])) == (0.5, False, True)
    assert zeroshot.credit(np.array([-3.0, -3.0]))[1] is True


def test_pipeline_figure_counts_exact_ties_only(tmp_path):
    # "ba" and "ca" tie exactly (right under the pipeline's rule); a bad sentence 1e-5
    # nats better than the good one is a tie for the 1/2 credit, wrong for the pipeline.
    class Nudged:
        def token_logprobs(self, seqs):
            return [np.full(len(s), -1.0) + (1e-5 / len(s) if s == encode("cb") else 0.0) for s in seqs]

    write_jsonl(tmp_path / "s" / "t.jsonl", [pair("ba", "ca"), pair("bb", "cb")])
    res = zeroshot.evaluate_set(Nudged(), tmp_path / "s", "blimp")
    assert res["files"][0]["ties"] == 2
    assert res["micro"] == pytest.approx(50.0)  # two ties at 1/2
    assert res["micro_ties_right"] == pytest.approx(50.0)  # the exact tie right, the near tie wrong


def test_ewok_entity_wug_follow_the_pipeline(tmp_path):
    m = DecayRNN(ToyConfig(seed=7))
    ewok = {"Domain": "spatial", "Context1": "The cup is on the box.", "Context2": "The cup is under the box.",
            "Target1": "The cup is high.", "Target2": "The cup is low.", "ContextType": "x", "ContextDiff": "y",
            "TargetDiff": "z"}
    write_jsonl(tmp_path / "ewok" / "spatial.jsonl", [ewok, {**ewok, "Context2": "Something else entirely."}])
    res = zeroshot.evaluate_set(m, tmp_path / "ewok", "ewok")
    # Score of Target_j = log p(" " + Target_j | BOS + Context1); Context2 is never read.
    c1 = ewok["Context1"]
    s = [scoring.reference_token_logprobs(m, encode(c1 + " " + ewok[t]))[len(c1):].sum()
         for t in ("Target1", "Target2")]
    want, _, _ = zeroshot.credit(np.array(s))
    assert res["uids"]["spatial"]["accuracy"] == pytest.approx(100 * want)
    assert res["n"] == 2 and res["files"][0]["ties"] == 0

    items = [{"input_prefix": "Box 0 contains ", "options": ["the cat.", "the dog.", "the cow."], "numops": n}
             for n in (0, 0, 1)]
    write_jsonl(tmp_path / "et" / "regular.jsonl", items)
    write_jsonl(tmp_path / "et" / "ambiref.jsonl", items[:1])
    res = zeroshot.evaluate_set(m, tmp_path / "et", "entity_tracking")
    # Only the option's characters are scored; the prefix with its trailing space is context.
    prefix = len("Box 0 contains ")
    sums = [scoring.reference_token_logprobs(m, encode("Box 0 contains " + o))[prefix:].sum()
            for o in items[0]["options"]]
    loaded = zeroshot.load_items(tmp_path / "et", "entity_tracking")
    assert loaded[0].start == prefix
    got = zeroshot.score_items(m, loaded[:1], 64, None)[0]
    np.testing.assert_allclose(got, sums, rtol=1e-5)
    right = 100.0 * zeroshot.credit(np.array(sums))[0]
    assert set(res["uids"]) == {"ambiref_0_ops", "regular_0_ops", "regular_1_ops"}
    assert res["macro"] == pytest.approx(right)  # same item everywhere: every average equals it

    write_jsonl(tmp_path / "wug" / "wug.jsonl", [
        {"sentences": "A dax. daxness\tA dax. daxity", "ratio": 0.9},
        {"sentences": "A wug. wugness\tA wug. wugity", "ratio": 0.2},
        {"sentences": "A zib. zibness\tA zib. zibity", "ratio": 0.5}])
    res = zeroshot.evaluate_set(m, tmp_path / "wug", "wug")
    ref = []
    for line in (tmp_path / "wug" / "wug.jsonl").read_text().splitlines():
        a, b = (scoring.sentence_logprob(m, encode(x)) for x in json.loads(line)["sentences"].split("\t"))
        ref.append(math.exp(a) / (math.exp(a) + math.exp(b)))
    assert [it["p_first"] for it in res["items"]] == pytest.approx(ref, rel=1e-4)
    ranks = [np.argsort(np.argsort(v)) for v in (np.array(ref), np.array([0.9, 0.2, 0.5]))]  # no ties here
    assert res["score"] == pytest.approx(np.corrcoef(*ranks)[0, 1])


def test_bad_jsonl_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "s" / "a.jsonl", [pair("ab", "ax"), "", '{"sentence_good": "x", oops}'])
    with pytest.raises(BabySSMError, match=rf"{path}:3: not valid JSON"):
        zeroshot.load_items(tmp_path / "s", "blimp")
    write_jsonl(path, [pair("ab", "ax"), {"sentence_good": "only one"}])
    with pytest.raises(BabySSMError, match=rf"{path}:2: missing field 'sentence_bad'"):
        zeroshot.load_items(tmp_path / "s", "blimp")
    write_jsonl(path, ["[1, 2]"])
    with pytest.raises(BabySSMError, match=rf"{path}:1: expected a JSON object"):
        zeroshot.load_items(tmp_path / "s", "blimp")


def test_empty_and_unknown_sets_are_refused(tmp_path, data_root):
    (tmp_path / "none").mkdir()
    with pytest.raises(BabySSMError, match="holds no .jsonl files"):
        zeroshot.load_items(tmp_path / "none", "blimp")
    write_jsonl(tmp_path / "blank" / "a.jsonl", [""])
    with pytest.raises(BabySSMError, match="holds no items"):
        zeroshot.load_items(tmp_path / "blank", "blimp")
    with pytest.raises(BabySSMError, match="unknown set 'blimpp'.*blimp_filtered, blimp, supplement_filtered"):
        zeroshot.resolve_set("blimpp", str(data_root))
    assert zeroshot.resolve_set("blimp_filtered", str(data_root)) == data_root / "eval" / "blimp_filtered"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A randomly initialised tiny hierarchical model saved as a finished 3-stage run."""
    from babyssm.training.checkpoint import save_checkpoint
    from babyssm.models.presets import get_preset
    from babyssm.models.hierarchical import HierarchicalSSM

    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("run")
    save_checkpoint(run, HierarchicalSSM(get_preset("tiny")), {"stages_completed": [1, 2, 3]})
    return run


def test_eval_blimp_end_to_end(tiny_run, data_root, capsys):
    rc = main(["eval", "blimp", "--run", str(tiny_run), "--pairs", "blimp_filtered", "--limit-per-file", "3",
               "--data-root", str(data_root)])
    assert rc == 0
    res = json.loads((tiny_run / "eval" / "blimp_filtered.json").read_text())
    assert len(res["files"]) == 67 and res["n"] == 67 * 3 and res["levels"] == 3
    assert {"field", "linguistics_term", "UID", "accuracy", "accuracy_ties_right"} <= set(res["files"][0])
    assert 0 <= res["micro"] <= 100 and res["ties"] <= res["n"]
    # The recorded command reruns this evaluation: flags and resolved defaults, nothing else.
    assert res["command"] == (f"babyssm eval blimp --run {tiny_run} --device cpu --batch-size 64 --precision float32 "
                              f"--data-root {data_root} --limit-per-file 3 --pairs blimp_filtered")
    md = (tiny_run / "eval" / "blimp_filtered.md").read_text()
    assert md.count("\n| ") >= 67 + len(res["phenomena"])
    assert (tiny_run / "eval" / "blimp_filtered.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "blimp_filtered: 201 pairs" in out and "macro" in out
    # Level 2 alone goes to its own file, leaving the default result in place.
    assert main(["eval", "blimp", "--run", str(tiny_run), "--pairs", str(data_root / "eval" / "supplement_filtered"),
                 "--levels", "2", "--limit-per-file", "2"]) == 0
    sup = json.loads((tiny_run / "eval" / "supplement_filtered_levels2.json").read_text())
    assert sup["n"] == 10 and {f["field"] for f in sup["files"]} == {"supplement"}


def test_eval_cli_errors_are_one_line(tiny_run, tmp_path, data_root, capsys, monkeypatch):
    write_jsonl(tmp_path / "bad" / "x.jsonl", [pair("a", "b"), "{nope"])
    assert main(["eval", "blimp", "--run", str(tiny_run), "--pairs", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("babyssm: error:") and f"{tmp_path / 'bad' / 'x.jsonl'}:2" in err and "\n" not in err
    assert main(["eval", "blimp", "--run", str(tiny_run), "--pairs", "nonsense", "--data-root", str(data_root)]) == 2
    assert "unknown set 'nonsense'" in capsys.readouterr().err
    root = ["--data-root", str(data_root)]
    assert main(["eval", "blimp", "--run", str(tmp_path / "no_run"), "--pairs", "blimp", *root]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", "blimp", "--run", str(tiny_run), "--pairs", "ewok_filtered", *root]) == 2
    assert "not minimal pairs" in capsys.readouterr().err
    monkeypatch.delenv("BABYSSM_DATA", raising=False)
    assert main(["eval", "blimp", "--run", str(tiny_run), "--pairs", "blimp"]) == 2
    assert "pass --data-root DIR" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "blimp", "--run", str(tiny_run), "--limit-per-file", "0"])
    assert "must be a positive whole number" in capsys.readouterr().err


def test_eval_zero_shot_end_to_end(tiny_run, data_root, capsys):
    rc = main(["eval", "zero-shot", "--run", str(tiny_run), "--suite", "babylm", "--limit-per-file", "2",
               "--data-root", str(data_root)])
    assert rc == 0
    summary = json.loads((tiny_run / "eval" / "zero_shot.json").read_text())
    assert [s["set"] for s in summary["sets"]] == list(zeroshot.SUITES["babylm"])
    ewok = json.loads((tiny_run / "eval" / "ewok_filtered.json").read_text())
    assert ewok["n"] == 22 and len(ewok["uids"]) == 11
    et = json.loads((tiny_run / "eval" / "entity_tracking.json").read_text())
    assert et["n"] == 6 and all(u.split("_")[-1] == "ops" for u in et["uids"])
    assert "| wug_adj_nominalization | 2 |" in (tiny_run / "eval" / "zero_shot.md").read_text()


def test_bpc_windows_and_carry(tiny_run, tmp_path, data_root):
    from babyssm.data.prepared import prepare

    src = tmp_path / "src"
    src.mkdir()
    for name in ("2023_cbt.dev", "2023_switchboard.dev"):
        text = (data_root / "babylm" / "dev" / name).read_bytes()[:3000].decode("utf-8", "ignore")
        (src / name).write_text(text)
    prepared = tmp_path / "prep"
    prepare([src], prepared)
    m = DecayRNN(ToyConfig(seed=2))
    overlap = evaluate_bpc(m, prepared, "dev", chars_per_file=700, seq_len=64)
    carry = evaluate_bpc(m, prepared, "dev", chars_per_file=700, seq_len=64, context="carry", streams=1)
    assert [s["chars"] for s in overlap["runs"][0]["sources"]] == [700, 700]
    from babyssm.data.prepared import load_meta, load_split

    first = load_meta(prepared)["sources"][0]
    text = np.asarray(load_split(prepared, "dev")[first["offset"] : first["offset"] + 700])
    # carry with one stream = the whole text read from BOS once, step by step.
    ref = scoring.reference_token_logprobs(m, text.tolist()).sum()
    assert carry["runs"][0]["sources"][0]["bpc"] == pytest.approx(-ref / math.log(2) / 700, rel=1e-5)
    # overlap = windows of 64 with 32 chars of context, each scored by the reference.
    want = scoring.reference_token_logprobs(m, text[:32].tolist()).sum()
    for start in range(32, 700, 32):
        want += scoring.reference_token_logprobs(m, text[start - 32 : start + 32].tolist())[32:].sum()
    assert overlap["runs"][0]["sources"][0]["bpc"] == pytest.approx(-want / math.log(2) / 700, rel=1e-5)
    assert levels_to_evaluate({"default_levels": 3}) == [2, 3]
    assert levels_to_evaluate({"default_levels": None}) == [None]


def test_eval_bpc_cli(tiny_run, tmp_path, data_root, capsys, monkeypatch):
    from babyssm.data.prepared import prepare

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.dev").write_text((data_root / "babylm" / "dev" / "2023_aochildes.dev").read_text()[:2000])
    prepare([src], tmp_path / "prep")
    assert main(["eval", "bpc", "--run", str(tiny_run), "--data", str(tmp_path / "prep"), "--chars-per-file", "500"]) == 0
    res = json.loads((tiny_run / "eval" / "bpc_dev.json").read_text())
    assert [r["levels"] for r in res["runs"]] == [2, 3]
    # A random tiny model is close to uniform over 128 symbols: about 7 bits per char.
    assert 5 < res["bpc"] < 9 and res["bpc"] == res["runs"][-1]["bpc"]
    assert "bpc L2" in capsys.readouterr().out
    # bfloat16 autocast: the same figures to bfloat16's rounding, and the command says so; a CPU
    # without bfloat16 units is warned, as in training.
    from babyssm.training import loop

    monkeypatch.setattr(loop, "native_cpu_bfloat16", lambda: False)
    assert main(["eval", "bpc", "--run", str(tiny_run), "--data", str(tmp_path / "prep"), "--chars-per-file", "500",
                 "--precision", "bfloat16"]) == 0
    fast = json.loads((tiny_run / "eval" / "bpc_dev.json").read_text())
    assert "--precision bfloat16" in fast["command"]
    assert "bfloat16 on a CPU without AMX or AVX512-BF16 units is emulated" in capsys.readouterr().err
    assert 0 < abs(fast["bpc"] - res["bpc"]) < 0.01 * res["bpc"]


def test_eval_baselines_end_to_end(tmp_path, data_root):
    """The n-gram (its own token_logprobs) and the GRU (forward_from) through the same CLI."""
    from babyssm.models.gru import GRULM, GRUConfig
    from babyssm.models.transformer import TransformerConfig, TransformerLM
    from babyssm.training.checkpoint import save_checkpoint
    from babyssm.models.ngram import NGramConfig, NGramLM

    text = (data_root / "babylm" / "train" / "2023_aochildes.train").read_bytes()[:20000]
    NGramLM.fit(np.frombuffer(text, np.uint8), NGramConfig(order=3)).save(tmp_path / "ngram")
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "gru", GRULM(GRUConfig(d_model=16)), {"stages_completed": [0]})
    tf = TransformerLM(TransformerConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, seq_len=32))
    save_checkpoint(tmp_path / "tf", tf, {"stages_completed": [0]})
    for run in ("ngram", "gru", "tf"):
        args = ["eval", "blimp", "--run", str(tmp_path / run), "--limit-per-file", "1", "--data-root", str(data_root)]
        assert main(args) == 0
        res = json.loads((tmp_path / run / "eval" / "blimp_filtered.json").read_text())
        assert res["n"] == 67 and res["levels"] is None
    # The n-gram prefers real English over a reversed sentence by a wide margin.
    items = zeroshot.load_items(data_root / "eval" / "blimp_filtered", "blimp", 1)
    ngram, _ = load_scorer(tmp_path / "ngram")
    good = items[0].candidates[0]
    (fwd, back), = scoring.score_groups(ngram, [[good, good[::-1]]])
    assert fwd > back + 5
