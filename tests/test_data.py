"""Tests of babyssm.data.prepared: prepare on real BabyLM slices, loading, stats, and bad input."""

import json
import shutil

import numpy as np
import pytest

from babyssm.data.clean import CleanConfig, clean_text
from babyssm.commands.main import main
from babyssm.data.prepared import find_sources, load_meta, load_split, prepare
from babyssm.errors import BabySSMError
from babyssm.data.vocab import TEXT_IDS, decode

SLICES = {  # file -> bytes to take from its start (cut back to a whole line or word)
    "train/2023_children_stories.train": 6_000,
    "train/2024_switchboard.train": 3_000,
    "train/2024sample_gutenberg.train": 5_000,  # one long line
    "dev/2023_cbt.dev": 4_000,
}


@pytest.fixture
def release(tmp_path, data_root):
    """A few KB of 4 real BabyLM files, laid out as the release is."""
    root = tmp_path / "babylm"
    for name, size in SLICES.items():
        raw = (data_root / "babylm" / name).read_bytes()[:size]
        cut = raw.rfind(b"\n") if b"\n" in raw else raw.rfind(b" ")
        dest = root / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(raw[: cut + 1])
    return root


def run_cli(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_prepare_real_slice(release, tmp_path):
    out = tmp_path / "prep"
    meta = prepare([release], out, chunk_bytes=257)  # many chunk edges, some inside UTF-8 chars
    assert [s["path"] for s in meta["sources"]] == [
        "train/2023_children_stories.train", "train/2024_switchboard.train",
        "train/2024sample_gutenberg.train", "dev/2023_cbt.dev"]
    assert set(meta["splits"]) == {"train", "dev"} and not (out / "test.bin").exists()
    for split in ("train", "dev"):
        ids = load_split(out, split)
        assert ids.dtype == np.uint8 and len(ids) == meta["splits"][split]["bytes"]
        assert set(np.unique(ids).tolist()) <= TEXT_IDS
        assert np.bincount(ids, minlength=128).tolist() == meta["splits"][split]["symbol_counts"]
    for src in meta["sources"]:
        ids = load_split(out, src["split"])
        text = decode(ids[src["offset"] : src["offset"] + src["length"]])
        raw = (release / src["path"]).read_bytes()
        assert text == clean_text(raw.decode("utf-8"))  # streaming == whole-file cleaning
        assert text.endswith("\n") or ids[src["offset"] + src["length"]] == 10  # separator
        assert src["words"] == len(text.split()) and src["raw_bytes"] == len(raw)
    stories = meta["sources"][0]
    assert stories["cleaning"]["folded"] > 0 and stories["offset"] == 0
    for a, b in zip(meta["sources"][:2], meta["sources"][1:3]):  # contiguous in train.bin
        ids = load_split(out, "train")
        sep = 0 if ids[a["offset"] + a["length"] - 1] == 10 else 1
        assert b["offset"] == a["offset"] + a["length"] + sep
    assert meta["vocab"]["size"] == 128 and meta["config"]["min_symbol_run"] == 4


def test_prepare_is_deterministic(release, tmp_path):
    prepare([release], tmp_path / "a")
    prepare([release], tmp_path / "b", chunk_bytes=1000)
    for name in ("train.bin", "dev.bin", "meta.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_speaker_tags_option(release, tmp_path):
    meta = prepare([release / "train" / "2024_switchboard.train"], tmp_path / "p",
                   CleanConfig(strip_speaker_tags=True))
    text = decode(load_split(tmp_path / "p", "train"))
    assert not any(line.startswith(("A: ", "B: ")) for line in text.splitlines())
    assert meta["sources"][0]["cleaning"]["speaker_tags"] > 10


def test_txt_split_rules(tmp_path):
    for rel in ("rel/10M/a.txt", "rel/babylm_dev/b.txt", "rel/test/c.txt", "rel/misc/d.txt",
                "rel/valid-set/e.txt", "rel/x.dev", "rel/README.md", "rel/.hidden/f.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("hi\n")
    got = {s.name: s.split for s in find_sources([tmp_path / "rel"])}
    assert got == {"10M/a.txt": "train", "misc/d.txt": "train", "babylm_dev/b.txt": "dev",
                   "valid-set/e.txt": "dev", "x.dev": "dev", "test/c.txt": "test"}
    named = find_sources([tmp_path / "rel" / "babylm_dev" / "b.txt"])
    assert [(s.name, s.split) for s in named] == [("b.txt", "dev")]


def test_force_and_atomic_layout(release, tmp_path):
    out = tmp_path / "p"
    prepare([release], out)
    with pytest.raises(BabySSMError, match="--force"):
        prepare([release], out)
    (out / "test.bin").write_bytes(b"stale")
    prepare([release / "train"], out, force=True)
    assert sorted(p.name for p in out.iterdir()) == [".babyssm-prepared", "meta.json", "train.bin"]


def test_load_errors_name_folder_and_fix(tmp_path, release):
    with pytest.raises(BabySSMError, match=r"nothere does not exist.*babyssm prepare"):
        load_split(tmp_path / "nothere", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BabySSMError, match=r"empty holds no meta.json.*babyssm prepare"):
        load_meta(tmp_path / "empty")
    prepare([release / "train"], tmp_path / "p")
    with pytest.raises(BabySSMError, match=r"no 'dev' split \(it has: train\)"):
        load_split(tmp_path / "p", "dev")
    (tmp_path / "p" / "train.bin").write_bytes(b"short")
    with pytest.raises(BabySSMError, match="does not match meta.json"):
        load_split(tmp_path / "p", "train")


def test_cli_prepare_and_stats(release, tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(release, data / "babylm")
    monkeypatch.setenv("BABYSSM_DATA", str(data))
    rc, out, _ = run_cli(capsys, "prepare", "--out", str(tmp_path / "p"), "--min-symbol-run", "3")
    assert rc == 0 and "train:" in out and "dev:" in out
    assert load_meta(tmp_path / "p")["config"]["min_symbol_run"] == 3
    rc, out, _ = run_cli(capsys, "stats", str(tmp_path / "p"), "--top", "5")
    assert rc == 0 and "train/2024_switchboard.train" in out and "top 5 symbols in train" in out
    assert "<sp>" in out


def test_long_line_without_newline(tmp_path):
    words = (b"lorem ipsum dolor sit amet " * 200_000)[:5_000_000]
    (tmp_path / "long.train").write_bytes(words + b"x" * 5_000_000)  # 10 MB, one line
    meta = prepare([tmp_path / "long.train"], tmp_path / "p")
    ids = load_split(tmp_path / "p", "train")
    assert meta["sources"][0]["length"] == 10_000_000
    assert bytes(ids[-6:]) == b"xxxxx\n" and meta["sources"][0]["words"] == 1 + words.count(b" ")


def bad_input_cases(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notext").mkdir()
    (tmp_path / "notext" / "README.md").write_text("hello")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "x.train").write_bytes(b"abc\x00\x01\x02")
    (tmp_path / "utf").mkdir()
    (tmp_path / "utf" / "y.train").write_bytes(b"ok line\nsecond \xff\xfe line\n")
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "z.dev").write_bytes("fine\ncaf\u00e9".encode()[:-1])
    (tmp_path / "a.csv").write_text("a,b\n")
    (tmp_path / "blocker").write_text("a file, not a folder")
    good = tmp_path / "good.train"
    good.write_text("hello\n")
    return {
        "missing": (["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o1")],
                    "nope: no such file or folder"),
        "empty": (["--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o2")],
                  "empty holds no files"),
        "no text": (["--data", str(tmp_path / "notext"), "--out", str(tmp_path / "o3")],
                    "notext holds no .train/.dev/.test/.txt files"),
        "binary": (["--data", str(tmp_path / "bin"), "--out", str(tmp_path / "o4")],
                   "x.train: NUL byte at byte 3"),
        "invalid utf-8": (["--data", str(tmp_path / "utf"), "--out", str(tmp_path / "o5")],
                          "y.train: invalid UTF-8 at byte 15 (line 2)"),
        "truncated utf-8": (["--data", str(tmp_path / "cut"), "--out", str(tmp_path / "o6")],
                            "z.dev: invalid UTF-8 at byte 8 (line 2)"),
        "wrong suffix": (["--data", str(tmp_path / "a.csv"), "--out", str(tmp_path / "o7")],
                         "a.csv: not a text file"),
        "unwritable out": (["--data", str(good), "--out", str(tmp_path / "blocker" / "sub")],
                           "blocker"),
    }


@pytest.mark.parametrize("case", ["missing", "empty", "no text", "binary", "invalid utf-8",
                                  "truncated utf-8", "wrong suffix", "unwritable out"])
def test_cli_bad_input_is_one_line(case, tmp_path, capsys):
    argv, expected = bad_input_cases(tmp_path)[case]
    rc, out, err = run_cli(capsys, "prepare", *argv)
    assert rc == 2
    assert err.startswith("babyssm: error: ") and err.count("\n") == 1, err
    assert expected in err


def test_encoding_errors_replace_drops_bad_bytes(tmp_path):
    (tmp_path / "y.train").write_bytes(b"second \xff\xfe line\n")
    meta = prepare([tmp_path / "y.train"], tmp_path / "p", encoding_errors="replace")
    assert decode(load_split(tmp_path / "p", "train")) == "second line\n"
    assert meta["sources"][0]["cleaning"]["dropped"] == 2


def test_missing_env_and_data(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("BABYSSM_DATA", raising=False)
    rc, _, err = run_cli(capsys, "prepare", "--out", str(tmp_path / "p"))
    assert rc == 2 and "--data" in err and err.count("\n") == 1


def test_meta_json_is_plain_json(release, tmp_path):
    prepare([release], tmp_path / "p")
    meta = json.loads((tmp_path / "p" / "meta.json").read_text())
    assert meta["babyssm_version"] and len(meta["vocab"]["symbols"]) == 128
    assert all(len(s["sha256"]) == 64 for s in meta["sources"])
