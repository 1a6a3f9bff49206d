"""Issue 12, through the command line: nothing lost, nothing crashes.

Divergence (a non-finite loss stops the run, no NaN reaches a checkpoint), one writer per
run folder, export and prepare never delete what they did not write, stale temporary files
and half-written checkpoints, verified resume, one-line errors, bounded scoring memory.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from babyssm.training import checkpoint as ckpt
from babyssm.commands.main import main
from babyssm.hf import export
from babyssm.hf.export import STAGING_MARKER, build_tokenizer, not_exported
from babyssm.models.presets import get_preset
from babyssm.models.hierarchical import HierarchicalSSM
from babyssm.training.loop import INJECT_NAN_ENV
from helpers import make_prepared

B, T = 4, 32  # 128 characters per step
FAST = ["--preset", "tiny", "--batch-size", str(B), "--seq-len", str(T), "--eval-chars", "256"]
STEPS = 40  # stage 1: 2 steps, stage 2: 22, stage 3: 16
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prepared(data_root, tmp_path_factory) -> Path:
    return make_prepared(data_root, tmp_path_factory.mktemp("corpus"), kib=16)


def train_argv(prepared: Path, out: Path, *extra: str) -> list[str]:
    return ["train", *FAST, "--data", str(prepared), "--out", str(out), "--max-chars", str(B * T * STEPS),
            "--eval-every", "10", "--ckpt-every", "4", *extra]


@pytest.fixture(scope="module")
def run(prepared, tmp_path_factory) -> Path:
    """A finished tiny run (all three stages), left untouched by the tests (they copy it)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(train_argv(prepared, out)) == 0
    return out


def cli(capsys, *argv: str) -> tuple[int, str]:
    """Exit status and stderr of ``babyssm ARGV``; an error must be exactly one line."""
    capsys.readouterr()
    status = main([str(a) for a in argv])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("babyssm: error:")]
    if status == 2:
        assert len(errors) == 1 and "Traceback" not in err, err
    return status, (errors[0] if errors else err)


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def all_finite(path: Path) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in load_file(path).values())


# -- 1. divergence ----------------------------------------------------------------------------
def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(prepared, tmp_path, capsys):
    out = tmp_path / "div"
    # The issue's reproduction: level 2's temperature exp(-200) turns its first loss into NaN;
    # -200 (an integer) is accepted for the float field.
    status, err = cli(capsys, *train_argv(prepared, out, "--seed", "1", "--set", "init_log_tau=-200"))
    assert status == 2
    assert "training diverged at step 3 (stage 2, step 1 of the stage): the loss is nan" in err
    assert "last good checkpoint (step 2)" in err
    config = json.loads((out / "config.json").read_text())
    assert config["step"] == 2 and config["stages_completed"] == [1]
    assert all_finite(out / "model.safetensors")
    for name in ("metrics.jsonl", "config.json"):
        assert "NaN" not in (out / name).read_text() and "Infinity" not in (out / name).read_text()
    state = ckpt.load_train_state(out)
    assert ckpt.first_nonfinite(state) is None and state["progress"]["global_step"] == 2


def test_first_stage_divergence_is_one_line_not_a_pca_traceback(prepared, tmp_path, capsys):
    status, err = cli(capsys, *train_argv(prepared, tmp_path / "p", "--set", "diffusion_prior_scale=3e38"))
    assert status == 2 and "(stage 1, step 1 of the stage)" in err and "no checkpoint had been written" in err
    assert not (tmp_path / "p" / "model.safetensors").exists()


def test_injected_divergence_then_resume_matches_an_uninterrupted_run(run, prepared, tmp_path, capsys, monkeypatch):
    out = tmp_path / "inj"
    monkeypatch.setenv(INJECT_NAN_ENV, "11")  # stage 2, after the checkpoint of step 10
    status, err = cli(capsys, *train_argv(prepared, out))
    assert status == 2 and "step 11 (stage 2, step 9 of the stage)" in err and "(step 10)" in err
    assert json.loads((out / "config.json").read_text())["step"] == 10 and all_finite(out / "model.safetensors")
    monkeypatch.delenv(INJECT_NAN_ENV)
    status, err = cli(capsys, *train_argv(prepared, out, "--resume"))
    assert status == 0 and "resuming" in err and "verified" in err
    assert (out / "model.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()


def test_eval_generate_and_export_refuse_non_finite_weights(run, prepared, tmp_path, capsys):
    bad = copy_run(run, tmp_path / "nan")
    weights = load_file(bad / "model.safetensors")
    weights[sorted(weights)[0]][0] = math.nan
    save_file(weights, str(bad / "model.safetensors"))  # as versions before the guard saved a diverged run
    config = json.loads((bad / "config.json").read_text())
    del config[ckpt.MANIFEST]
    (bad / "config.json").write_text(json.dumps(config))
    for argv in (["generate", "--run", bad, "--new-chars", "5"],
                 ["eval", "bpc", "--run", bad, "--data", prepared, "--chars-per-file", "200"],
                 ["export", "--run", bad, "--out", tmp_path / "hf"]):
        status, err = cli(capsys, *argv)
        assert status == 2 and "non-finite weights" in err and "diverged" in err, argv
    assert not (tmp_path / "hf").exists()


# -- 2. one writer per run folder --------------------------------------------------------------
def test_a_second_trainer_of_the_same_folder_refuses_naming_the_holder(prepared, tmp_path, capsys):
    out = tmp_path / "locked"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    holder = subprocess.Popen([sys.executable, "-m", "babyssm", *train_argv(prepared, out)[:-6],
                               "--max-chars", "1e9", "--ckpt-every", "1000000"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").exists():  # the holder has taken the lock and started
            assert holder.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        status, err = cli(capsys, *train_argv(prepared, out))
        assert status == 2 and f"process {holder.pid} is training into it" in err
        assert not (out / "config.json").exists()  # the refused process wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The kernel released the lock with the holder: the folder is usable again.
    assert main(train_argv(prepared, out)[:-6] + ["--max-chars", str(B * T * 3)]) == 0


# -- 3. export never deletes its source ---------------------------------------------------------
def test_export_refuses_an_out_that_is_contains_or_lies_inside_the_run(run, tmp_path, capsys):
    src = copy_run(run, tmp_path / "proj" / "run")
    before = sorted(p.name for p in src.iterdir())
    for out, relation in ((src, "is"), (tmp_path / "proj", "contains"), (src / "hf", "lies inside")):
        for force in ([], ["--force"]):
            status, err = cli(capsys, "export", "--run", src, "--out", out, *force)
            assert status == 2 and f"{relation} the run folder" in err
        status, err = cli(capsys, "export", "--run", src, "--out", out, "--milestones")
        assert status == 2 and f"{relation} the run folder" in err
    assert sorted(p.name for p in src.iterdir()) == before


def test_export_force_replaces_only_an_earlier_export(run, tmp_path, capsys):
    hf = tmp_path / "hf"
    old_umask = os.umask(0o022)
    try:
        assert cli(capsys, "export", "--run", run, "--out", hf)[0] == 0
    finally:
        os.umask(old_umask)
    assert {p.name: p.stat().st_mode & 0o777 for p in hf.iterdir()}["model.safetensors"] == 0o644
    assert {p.stat().st_mode & 0o777 for p in hf.iterdir()} == {0o644} and hf.stat().st_mode & 0o777 == 0o755
    assert cli(capsys, "export", "--run", run, "--out", hf, "--force")[0] == 0  # an earlier export: replaced
    (hf / "notes.txt").write_text("mine")
    status, err = cli(capsys, "export", "--run", run, "--out", hf, "--force")
    assert status == 2 and "'notes.txt', which babyssm export does not write" in err
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    status, err = cli(capsys, "export", "--run", run, "--out", mine, "--force")
    assert status == 2 and "no config.json written by babyssm export" in err
    assert (hf / "notes.txt").read_text() == "mine" and (mine / "thesis.tex").read_text() == "years of work"


def test_export_removes_only_the_temporary_folders_killed_exports_left(run, tmp_path, capsys, monkeypatch):
    hf = tmp_path / "hf"
    dead = tmp_path / ".hf.babyssm-export.dead_000"

    def killed_here(min_symbol_run):  # what a kill at this point leaves: a copy of the half-written folder
        (tmp,) = tmp_path.glob(".hf.babyssm-export.*")
        shutil.copytree(tmp, dead)
        return build_tokenizer(min_symbol_run)

    monkeypatch.setattr(export, "build_tokenizer", killed_here)
    assert cli(capsys, "export", "--run", run, "--out", hf)[0] == 0
    monkeypatch.undo()
    assert (dead / STAGING_MARKER).exists() and (dead / "model.safetensors").exists()
    other = tmp_path / ".old.babyssm-export.k2x9ab_1"  # another --out's leftover: babyssm's as well
    shutil.copytree(dead, other)
    live = tmp_path / ".hf.babyssm-export.live0000"  # an export still running holds its marker's lock
    shutil.copytree(dead, live)
    foreign = tmp_path / ".hf.babyssm-export.user0000"  # a file no export writes: not babyssm's folder
    shutil.copytree(dead, foreign)
    (foreign / "notes.txt").write_text("mine")
    unmarked = tmp_path / ".hf.babyssm-export.user1111"  # no marker: not babyssm's folder
    unmarked.mkdir()
    (unmarked / "model.safetensors").write_text("mine")
    lock = os.open(live / STAGING_MARKER, os.O_RDONLY)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        status, err = cli(capsys, "export", "--run", run, "--out", hf, "--force")
    finally:
        os.close(lock)
    assert status == 0 and f"removed 2 temporary folder(s) left in {tmp_path}" in err
    assert sorted(p.name for p in tmp_path.glob(".*")) == sorted(p.name for p in (live, foreign, unmarked))
    assert (foreign / "notes.txt").read_text() == "mine" and (unmarked / "model.safetensors").read_text() == "mine"
    assert not (hf / STAGING_MARKER).exists() and not_exported(hf) is None


# -- 4. prepare writes only into its own folders ------------------------------------------------
def test_prepare_refuses_a_folder_it_did_not_make(data_root, prepared, tmp_path, capsys):
    src = prepared.parent / "src"
    user = tmp_path / "user"
    user.mkdir()
    (user / "test.bin").write_bytes(b"the user's own file")
    (user / "train.bin").write_bytes(b"another")
    for force in ([], ["--force"]):
        status, err = cli(capsys, "prepare", "--data", src, "--out", user, *force)
        assert status == 2 and "did not write ('test.bin'" in err
    assert (user / "test.bin").read_bytes() == b"the user's own file" and (user / "train.bin").read_bytes() == b"another"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli(capsys, "prepare", "--data", src, "--out", empty)[0] == 0
    assert cli(capsys, "prepare", "--data", src, "--out", empty)[0] == 2  # its own: needs --force
    assert cli(capsys, "prepare", "--data", src, "--out", empty, "--force")[0] == 0
    (tmp_path / "file").write_text("x")
    status, err = cli(capsys, "prepare", "--data", src, "--out", tmp_path / "file")
    assert status == 2 and "is a file" in err


# -- 5. temporary files and half-written checkpoints -------------------------------------------
def test_stale_temporary_files_are_removed_on_the_next_start(run, prepared, tmp_path, capsys):
    out = copy_run(run, tmp_path / "run")
    stale = [out / ".model.k2x_9abc.tmp.safetensors", out / ".config.a1b2c3d4.tmp.json",
             out / ".train_state.zz99yy88.tmp.pt"]
    for p in stale:
        p.write_bytes(b"half a file")
    (out / ".my.notes.tmp").write_text("not ours")  # not an atomic-write name: kept
    status, err = cli(capsys, *train_argv(prepared, out, "--resume"))
    assert status == 0
    assert not any(p.exists() for p in stale) and (out / ".my.notes.tmp").exists()


def test_weights_from_another_step_are_refused_and_resume_repairs_them(run, prepared, tmp_path, capsys,
                                                                       monkeypatch):
    # A kill between the renames of a checkpoint: weights of a later step beside config.json
    # and train_state.pt of the earlier one.
    out = tmp_path / "half"
    monkeypatch.setenv(INJECT_NAN_ENV, "11")
    assert cli(capsys, *train_argv(prepared, out))[0] == 2  # stops with the checkpoint of step 10
    monkeypatch.delenv(INJECT_NAN_ENV)
    later = HierarchicalSSM(get_preset("tiny"))
    ckpt.load_weights(later, run)
    ckpt.atomic_write(out / "model.safetensors",
                      lambda tmp: save_file(later.state_dict(), str(tmp), metadata={"step": "40"}))
    for argv in (["generate", "--run", out, "--new-chars", "5"], ["export", "--run", out, "--out", tmp_path / "hf"]):
        status, err = cli(capsys, *argv)
        assert status == 2 and "is not the file that" in err and "records for step 10" in err and "--resume" in err
    status, err = cli(capsys, *train_argv(prepared, out, "--resume", "--halt-after-steps", "1"))
    assert status == 0 and "rewritten from train_state.pt" in err
    assert cli(capsys, "generate", "--run", out, "--new-chars", "5")[0] == 0


# -- 6. --resume says what it loaded -------------------------------------------------------------
def test_resume_of_a_finished_run_with_truncated_weights_restores_them(run, prepared, tmp_path, capsys):
    out = copy_run(run, tmp_path / "run")
    good = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(good[: len(good) // 2])
    status, err = cli(capsys, *train_argv(prepared, out, "--resume"))
    assert status == 0
    assert f"resuming {out} at step {STEPS}" in err and "rewritten from train_state.pt" in err
    assert (out / "model.safetensors").read_bytes() == good
    status, err = cli(capsys, *train_argv(prepared, out, "--resume"))
    assert status == 0 and "verified" in err and "shapes match" in err


# -- 7. one-line errors ---------------------------------------------------------------------------
@pytest.mark.parametrize("pair, expected", [
    ("level3_mix=1", "level3_mix must be 3 non-negative weights"),
    ("vocab_size=64", "vocab_size must be 128"),
    ("vocab_size=300", "vocab_size must be 128"),
    ("level3_loss=3", "level3_loss must be a string"),
])
def test_bad_set_values_are_one_line(prepared, tmp_path, capsys, pair, expected):
    status, err = cli(capsys, *train_argv(prepared, tmp_path / "r", "--set", pair))
    assert status == 2 and expected in err and pair.split("=")[0] in err


def test_an_integer_for_a_float_field_is_accepted(prepared, tmp_path, capsys):
    out = tmp_path / "r"
    assert cli(capsys, *train_argv(prepared, out, "--set", "gate_bias_init=-2", "--stage", "1"))[0] == 0
    assert json.loads((out / "config.json").read_text())["config"]["gate_bias_init"] == -2.0


def _edit_config(run: Path, dest: Path, edit) -> Path:
    out = copy_run(run, dest)
    config = json.loads((out / "config.json").read_text())
    edit(config)
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize("name, edit, expected", [
    ("string", lambda c: c.update(config="tiny"), "field 'config' must be an object"),
    ("value", lambda c: c["config"].update(d_model=-3), "d_model must be a positive integer"),
    ("type", lambda c: c.update(model_type="mamba9"), "unknown model_type 'mamba9'"),
    ("preset", lambda c: c.update(config=ckpt.config_dict(get_preset("seed"))), "does not fit"),
    ("absurd", lambda c: c["config"].update(d_model=10**6, d_state=10**6), "more than babyssm's limit"),
])
def test_broken_config_json_is_one_line_for_every_command(run, prepared, tmp_path, capsys, name, edit, expected):
    out = _edit_config(run, tmp_path / name, edit)
    for argv in (["train", "--data", prepared, "--out", out, "--resume"], ["generate", "--run", out, "--new-chars", "3"],
                 ["eval", "bpc", "--run", out, "--data", prepared, "--chars-per-file", "100"],
                 ["export", "--run", out, "--out", tmp_path / f"hf_{name}"]):
        status, err = cli(capsys, *argv)
        assert status == 2 and expected in err and "config.json" in err, (argv, err)


@pytest.mark.parametrize("name, content, expected", [
    ("latin1", '{"sentence_good": "caf\xe9 ok", "sentence_bad": "caf\xe9 no"}\n'.encode("latin-1"),
     ":1: not UTF-8 (byte 0xe9"),
    ("utf16", '{"sentence_good": "a b", "sentence_bad": "b a"}\n'.encode("utf-16"), ":1: not UTF-8 (byte 0xff"),
    ("null", b'{"sentence_good": "a b", "sentence_bad": "b a"}\n{"sentence_good": null, "sentence_bad": "b"}\n',
     ":2: field 'sentence_good' must be a string, got null"),
    ("number", b'{"sentence_good": 12, "sentence_bad": "b"}\n', ":1: field 'sentence_good' must be a string, got 12"),
    ("folder", None, "x.jsonl is a folder, not a .jsonl file"),
])
def test_bad_eval_sets_name_the_file_and_line(run, tmp_path, capsys, name, content, expected):
    set_dir = tmp_path / name
    set_dir.mkdir()
    if content is None:
        (set_dir / "x.jsonl").mkdir()
    else:
        (set_dir / "x.jsonl").write_bytes(content)
    status, err = cli(capsys, "eval", "blimp", "--run", run, "--pairs", set_dir)
    assert status == 2 and expected in err and str(set_dir / "x.jsonl") in err


def test_files_where_folders_belong_are_one_line(run, prepared, tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("not a folder")
    for argv, expected in ((["export", "--run", run, "--out", f], f"--out {f} is a file"),
                           (train_argv(prepared, f), f"--out {f} is a file"),
                           (["generate", "--run", f], f"--run {f} is a file"),
                           (["eval", "bpc", "--run", f, "--data", prepared], f"--run {f} is a file"),
                           (["export", "--run", f, "--out", tmp_path / "hf"], f"--run {f} is a file")):
        status, err = cli(capsys, *argv)
        assert status == 2 and expected in err, argv
    assert f.read_text() == "not a folder"


# -- 8. scoring memory does not grow with length --------------------------------------------------
MEMORY_PROBE = """
import json, resource, sys
from pathlib import Path
import torch
import helpers  # registers the toy models
from babyssm.training import checkpoint as ckpt
from babyssm.commands.main import main

root = Path(sys.argv[1])
ckpt.save_checkpoint(root / "run", helpers.BigramLM(), {"stages_completed": [0]})
peaks = []
for n in (10_000, 1_000_000):
    base = "the cat sat on the mat. " * (n // 24)
    d = root / f"set{n}"
    d.mkdir()
    (d / "p.jsonl").write_text(json.dumps({"sentence_good": base + "a good end.", "sentence_bad": base + "bad."}))
    assert main(["eval", "blimp", "--run", str(root / "run"), "--pairs", str(d)]) == 0
    peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
print(json.dumps(peaks))
"""


def test_a_million_character_pair_scores_in_bounded_memory(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    small, large = json.loads(done.stdout.strip().splitlines()[-1])  # peak RSS in MiB
    # Unchunked, the 1M-char pair alone held 1M x 128 float32 logits (512 MiB) several times over.
    assert large - small < 250, (small, large)


def test_chunked_scoring_equals_one_forward():
    from babyssm.evaluation import scoring

    torch.manual_seed(0)
    model = HierarchicalSSM(get_preset("tiny")).eval()
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(32, 127, (n,), generator=g).tolist() for n in (700, 450, 3)]
    whole = scoring.token_logprobs(model, seqs)
    chunked = scoring.token_logprobs(model, seqs, max_positions=128)
    groups = [[seqs[0], seqs[0][:600] + seqs[1][:50]], [seqs[1], seqs[1][:-1]]]
    g_whole = scoring.group_token_logprobs(model, groups)
    g_chunked = scoring.group_token_logprobs(model, groups, max_positions=128)
    for a, b in zip(whole + sum(g_whole, []), chunked + sum(g_chunked, [])):
        assert a.shape == b.shape and abs(a - b).max() < 1e-4


# -- minor: report Markdown ---------------------------------------------------------------------
def test_report_escapes_a_newline_in_a_recorded_command(run, tmp_path, capsys):
    out = _edit_config(run, tmp_path / "run", lambda c: c.update(commands=["babyssm train --set 'a=1\nb'"]))
    md = tmp_path / "R.md"
    assert cli(capsys, "report", "--runs", out, "--out", md)[0] == 0
    line = next(x for x in md.read_text().splitlines() if x.startswith("- run ("))
    assert "`babyssm train --set 'a=1\\nb'`" in line
