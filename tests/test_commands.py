"""The command layer: flags generated from the settings dataclasses, renamed flags with their
old spellings, and the rules of the layout (argparse only in babyssm.commands)."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from babyssm.commands.main import build_parser, main
from babyssm.commands.train import TRAIN_FLAGS
from babyssm.errors import BabySSMError
from babyssm.models.config import ModelConfig
from babyssm.models.hierarchical import HierarchicalSSM
from babyssm.models.lm import build_model
from babyssm.models.presets import get_preset
from babyssm.training.checkpoint import save_checkpoint
from babyssm.training.plan import TrainConfig, default_stages

PACKAGE = Path(__file__).resolve().parents[1] / "babyssm"


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    return capsys.readouterr().out


def test_every_training_setting_is_one_field_with_help_and_a_generated_flag(capsys):
    text = " ".join(_help(capsys, "train").split())
    for f in dataclasses.fields(TrainConfig):
        if not f.init:
            continue
        assert f.name in TRAIN_FLAGS and f.metadata["help"]
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        assert flag in text and " ".join(f.metadata["help"].split())[:40] in text
    args = build_parser().parse_args(["train", "--data", "d", "--out", "o", "--max-chars", "2e6", "--seq-len", "64",
                                      "--grad-clip", "0.5", "--save-word-milestones", "1k,2M"])
    assert (args.max_chars, args.seq_len, args.grad_clip, args.word_milestones) == (2_000_000, 64, 0.5,
                                                                                    (1000, 2_000_000))
    assert args.batch_size is None  # not given: the saved value wins on --resume


def test_stage_learning_rates_are_config():
    plan = default_stages(HierarchicalSSM(ModelConfig(d_model=16, d_state=16, rank=8, stage_lrs=(0.05, 0.04, 0.03),
                                                      finetune_fraction=0.5, finetune_lr=0.02)))
    assert [s.lr for s in plan] == [0.05, 0.04, 0.03, 0.02]
    assert [s.lr for s in default_stages(HierarchicalSSM(get_preset("tiny")))] == [1e-2, 3e-3, 2e-3]
    with pytest.raises(ValueError, match="stage_lrs"):
        ModelConfig(stage_lrs=(0.1, 0.1))


def test_weight_decay_and_lr_floor_are_config():
    """A whole-model LM's cross-entropy stage takes its AdamW decay and its schedule's floor from
    its config (0.1 and 0.1 unless set)."""
    from babyssm.models.gru import GRUConfig, GRULM
    from babyssm.models.hlru import HLRU, get_hlru_preset

    assert [s.weight_decay for s in default_stages(GRULM(GRUConfig(d_model=8)))] == [0.1]
    tiny = get_hlru_preset("hlru-tiny")
    assert [s.weight_decay for s in default_stages(HLRU(dataclasses.replace(tiny, weight_decay=0.025)))] == [0.025]
    framed = HLRU(dataclasses.replace(tiny, weight_decay=0.0, char_map="init"))
    assert [(s.stage, s.weight_decay) for s in default_stages(framed)] == [(1, 0.0), (0, 0.0)]
    with pytest.raises(ValueError, match="HLRUConfig.weight_decay"):
        dataclasses.replace(tiny, weight_decay=-0.1)
    assert [s.min_lr_frac for s in default_stages(GRULM(GRUConfig(d_model=8)))] == [0.1]
    floored = HLRU(dataclasses.replace(tiny, min_lr_frac=0.0, char_map="init"))
    assert [(s.stage, s.min_lr_frac) for s in default_stages(floored)] == [(1, 0.1), (0, 0.0)]


@pytest.mark.parametrize("field, value", [("lr", 0.0), ("lr", 5.0), ("lr", float("nan")),
                                          ("weight_decay", -0.1), ("weight_decay", 1.0),
                                          ("weight_decay", float("nan")), ("min_lr_frac", -0.1),
                                          ("min_lr_frac", 1.5), ("min_lr_frac", float("nan"))])
def test_every_whole_model_config_refuses_bad_rates(field, value):
    """The optimizer fields are checked by each config, not only by the commands' flags, so a
    hand-edited config.json fails naming the field instead of inside AdamW."""
    from babyssm.models.gru import GRUConfig
    from babyssm.models.hlru import get_hlru_preset
    from babyssm.models.transformer import TransformerConfig
    from babyssm.models.transformerpp import TransformerPPConfig

    for config in (GRUConfig(d_model=8), TransformerConfig(), TransformerPPConfig(), get_hlru_preset("hlru-tiny")):
        with pytest.raises(ValueError, match=rf"{type(config).__name__}\.{field} must be in"):
            dataclasses.replace(config, **{field: value})
        dataclasses.replace(config, **{field: 0.5 if field == "lr" else 0.0})



def test_hand_edited_baseline_config_names_the_field():
    from babyssm.training.checkpoint import build_from_config

    with pytest.raises(BabySSMError, match=r"^run/config.json: cannot build the model \(GRUConfig.weight_decay "
                                           r"must be in \[0, 1\), got -1"):
        build_from_config({"model_type": "gru", "config": {"d_model": 8, "weight_decay": -1}}, "run/config.json")


@pytest.fixture
def run(tmp_path) -> Path:
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "run", HierarchicalSSM(get_preset("tiny")), {"stages_completed": [1, 2]})
    return tmp_path / "run"


def test_old_spellings_still_work_with_a_one_line_notice(run, tmp_path, capsys):
    assert main(["generate", "--run", str(run), "--new-chars", "5", "--temperature", "0"]) == 0
    new = capsys.readouterr()
    assert main(["generate", "--ckpt", str(run), "--max-chars", "5", "--temperature", "0"]) == 0
    old = capsys.readouterr()
    assert old.out == new.out and new.err == ""
    assert old.err.splitlines() == [
        "babyssm: warning: --ckpt is deprecated here and goes in the next release; use --run",
        "babyssm: warning: --max-chars is deprecated here and goes in the next release; use --new-chars"]
    assert main(["export", "--ckpt", str(run), "--out", str(tmp_path / "hf")]) == 0
    assert "use --run" in capsys.readouterr().err and (tmp_path / "hf" / "config.json").is_file()
    args = build_parser().parse_args(["eval", "bpc", "--ckpt", "r", "--data", "d", "--max-chars", "9", "--window",
                                      "64"])
    assert (args.run, args.chars_per_file, args.seq_len) == ("r", 9, 64)
    assert build_parser().parse_args(["eval", "blimp", "--ckpt", "r", "--set", "blimp"]).pairs == "blimp"
    assert "--ckpt" not in _help(capsys, "eval", "bpc") and "--chars-per-file" in _help(capsys, "eval", "bpc")
    with pytest.raises(SystemExit):  # one of --run and its old spelling is required
        build_parser().parse_args(["generate"])


def test_a_config_saved_under_an_old_field_name_loads():
    old = {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32, "block_size": 12, "rope_base": 10000.0,
           "head_dim": 8}
    assert build_model("transformer", old).config.seq_len == 12
    assert json.loads(json.dumps(dataclasses.asdict(build_model("transformer", old).config)))["seq_len"] == 12


def test_argparse_lives_in_the_command_layer_only():
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        commands = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
                    and n.module.startswith("babyssm.commands")}
        if path.parent.name != "commands" and path.name != "__main__.py":  # `python -m babyssm` is the CLI
            assert "argparse" not in imported and not commands, path
