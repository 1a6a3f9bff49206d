"""``babyssm report``: the results table, the easier/harder BLiMP halves and the marked
section of RESULTS.md, rendered from small hand-written run folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from babyssm.commands.main import main
from babyssm.errors import BabySSMError
from babyssm.evaluation.report import BEGIN, END, load_run, render, replace_section


def write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def blimp(accs: dict[str, float], **extra) -> dict:
    files = [{"file": f, "field": "syntax", "linguistics_term": "t", "UID": f, "n": 10, "accuracy": a,
              "accuracy_ties_right": a, "ties": 0} for f, a in accs.items()]
    macro = sum(accs.values()) / len(accs)
    return {"set": "blimp_filtered", "task": "blimp", "n": 10 * len(accs), "micro": macro, "macro": macro,
            "files": files, "command": "babyssm eval blimp --ckpt X --set blimp_filtered", **extra}


@pytest.fixture
def runs(tmp_path):
    ngram, ssm, bare = tmp_path / "ngram5", tmp_path / "ssm", tmp_path / "gru"
    write(ngram / "config.json", {"model_type": "ngram", "config": {"order": 5}, "num_ngrams": 1234567,
                                  "chars_seen": 24_300_000, "train_seconds": 42.0})
    # The n-gram ranks the files a > b > c > d (ties broken by name: c before d).
    write(ngram / "eval" / "blimp_filtered.json", blimp({"a": 90.0, "b": 70.0, "d": 50.0, "c": 50.0}))
    write(ngram / "eval" / "bpc_dev.json", {"bpc": 2.3456, "max_chars": None, "command": "babyssm eval bpc --ckpt N"})
    write(ssm / "config.json", {"model_type": "hierarchical_ssm", "config": {"d_model": 512},
                                "num_parameters": 1_640_961, "chars_seen": 51_200_000, "train_seconds": 4000.0,
                                "commands": ["babyssm train --out ssm"]})
    write(ssm / "eval" / "blimp_filtered.json", blimp({"a": 60.0, "b": 80.0, "c": 75.0, "d": 65.0}, limit_per_file=3))
    write(ssm / "eval" / "ewok_filtered.json", {"task": "ewok", "macro": 55.5, "command": "babyssm eval zero-shot"})
    write(bare / "config.json", {"model_type": "gru", "config": {}, "num_parameters": 1_600_000})
    return [ngram, ssm, bare]


def test_table_values(runs):
    text = render([load_run(r) for r in runs])
    lines = text.splitlines()
    assert ("| ngram5 (ngram, order 5) | 1,234,567 n-grams | 24.3M | 0.7 min | 2.346 | 65.00 | 65.00 "
            "| - | - | - |") in lines
    # The limited BLiMP run is marked partial; EWoK comes from its own file; no bpc yet.
    assert ("| ssm (hierarchical_ssm) | 1,640,961 | 51.2M | 1 h 06 min | - | 70.00\u2020 | 70.00\u2020 "
            "| - | - | 55.50 |") in lines
    assert "| gru (gru) | 1,600,000 | - | - | - | - | - | - | - | - |" in lines


def test_easier_and_harder_halves(runs):
    text = render([load_run(r) for r in runs])
    # Easier = the n-gram's top half {a, b}; harder = {c, d}.
    assert "| ngram5 (ngram, order 5) | 80.00 | 50.00 |" in text
    assert "| ssm (hierarchical_ssm) | 70.00 | 70.00 |" in text
    assert "Harder files: c, d." in text
    assert "`babyssm eval zero-shot`" in text and "`babyssm eval bpc --ckpt N`" in text
    # Training commands first, then evaluations; a run with neither says so.
    assert ("- ssm (hierarchical_ssm): `babyssm train --out ssm`; "
            "`babyssm eval blimp --ckpt X --set blimp_filtered`; `babyssm eval zero-shot`") in text
    assert "- gru (gru): not recorded" in text
    without = render([load_run(runs[1])])
    assert "No n-gram run" in without


def test_section_markers(tmp_path):
    assert replace_section("", "x\n") == f"{BEGIN}\nx\n{END}\n"
    doc = f"# R\n\nintro\n\n{BEGIN}\nold\n{END}\n\n## Notes\nkeep\n"
    assert replace_section(doc, "new\n") == f"# R\n\nintro\n\n{BEGIN}\nnew\n{END}\n\n## Notes\nkeep\n"
    for broken in (f"{BEGIN}\nx\n", f"{END}\n{BEGIN}\n", f"{BEGIN}{END}{BEGIN}{END}"):
        with pytest.raises(BabySSMError, match="markers are broken"):
            replace_section(broken, "new\n")


def test_report_cli_keeps_hand_written_text(runs, tmp_path, capsys):
    out = tmp_path / "docs" / "RESULTS.md"
    out.parent.mkdir()
    out.write_text(f"# Results\n\nHand-written notes.\n\n{BEGIN}\nstale\n{END}\n\nMore notes.\n")
    args = ["report", "--runs", *map(str, runs), "--out", str(out)]
    assert main(args) == 0
    first = out.read_text()
    assert first.startswith("# Results\n\nHand-written notes.\n\n" + BEGIN)
    assert first.endswith(END + "\n\nMore notes.\n")
    assert "stale" not in first and "| ssm (hierarchical_ssm) |" in first
    assert main(args) == 0 and out.read_text() == first  # idempotent
    assert "written to" in capsys.readouterr().out
    assert main(["report", "--runs", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    (runs[1] / "eval" / "blimp.json").write_text("{broken")
    assert main(args) == 2
    assert "blimp.json is not valid JSON" in capsys.readouterr().err


def _bpc(two: float, three: float | None = None) -> dict:
    runs = [{"levels": 2, "bpc": two}] + ([{"levels": 3, "bpc": three}] if three is not None else [])
    return {"bpc": runs[-1]["bpc"], "max_chars": 200000, "runs": runs, "command": "babyssm eval bpc --ckpt R"}


def test_ablation_table_and_its_own_section(tmp_path, capsys):
    l12, word = tmp_path / "l12", tmp_path / "word"
    write(l12 / "config.json", {"model_type": "hierarchical_ssm", "config": {"level3_rate": "char"},
                                "stages_completed": [1, 2], "chars_seen": 5_000_000, "run_info": {"seed": 0},
                                "commands": ["babyssm train --stage 1,2"]})
    write(l12 / "eval" / "bpc_dev.json", _bpc(2.5))
    write(word / "config.json", {"model_type": "hierarchical_ssm", "config": {"level3_rate": "word"},
                                 "stages_completed": [1, 2, 3], "chars_seen": 5_000_000, "run_info": {"seed": 0},
                                 "commands": ["babyssm train --stage 1,2", "babyssm train --init l12 --stage 3"]})
    write(word / "eval" / "bpc_dev.json", _bpc(2.6, 2.3))
    write(word / "eval" / "blimp_filtered.json", blimp({"a": 52.0, "b": 54.0}))
    big_l12, big = tmp_path / "l12_20m", tmp_path / "deep20m"  # a larger budget has its own base
    write(big_l12 / "config.json", {"model_type": "hierarchical_ssm", "config": {}, "stages_completed": [1, 2],
                                    "chars_seen": 20_000_000, "run_info": {"seed": 0}})
    write(big_l12 / "eval" / "bpc_dev.json", _bpc(2.2))
    write(big / "config.json", {"model_type": "hierarchical_ssm", "config": {}, "stages_completed": [1, 2, 3, 4],
                                "chars_seen": 20_000_000, "run_info": {"seed": 0}})
    write(big / "eval" / "bpc_dev.json", _bpc(3.6, 1.95))
    out = tmp_path / "RESULTS.md"
    out.write_text("# Results\n\nmain table here\n")
    assert main(["report", "--ablation", "--runs", str(l12), str(word), str(big_l12), str(big), "--out", str(out)]) == 0
    text = out.read_text()
    assert "| deep20m (hierarchical_ssm) | seed | 1,2,3,4 | 0 | 20.0M | 3.600 | 1.950 | +0.250 | - | - |" in text
    assert text.startswith("# Results\n\nmain table here\n") and text.count("babyssm:ablation:begin") == 1
    assert "| l12 (hierarchical_ssm) | seed | 1,2 | 0 | 5.0M | 2.500 | 2.500 | +0.000 | - | - |" in text
    assert "| word (hierarchical_ssm) | level3_rate=word | 1,2,3 | 0 | 5.0M | 2.600 | 2.300 | +0.200 | 53.00 | 53.00 |" \
        in text
    assert "`babyssm train --init l12 --stage 3`; `babyssm eval blimp --ckpt X --set blimp_filtered`" in text
    # The main report leaves the ablation section alone, and the ablation report the main one.
    assert main(["report", "--runs", str(word), "--out", str(out)]) == 0
    assert "| word (hierarchical_ssm) | level3_rate=word |" in out.read_text() and BEGIN in out.read_text()
