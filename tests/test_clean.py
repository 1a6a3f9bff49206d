"""Tests of babyssm.data.clean: each step, the whole cleaner, and streaming == whole text."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from babyssm.data.clean import (
    CleanConfig,
    StreamCleaner,
    clean_text,
    clean_text_stats,
    fold_ascii,
    normalise_newlines,
    normalise_spaces,
    remove_controls,
    remove_symbol_runs,
    strip_speaker_tags,
)
from babyssm.errors import BabySSMError
from babyssm.data.vocab import TEXT_IDS, encode

# Pieces that exercise every step and every boundary case of the streaming cutter.
TOKENS = [
    "a", "Zq", "7", " ", "  ", "\n", "\r", "\r\n", "\t", "\x0b", "\x00", "\x7f", "=", "====", "*",
    "-", "--", ".", "...", "?!", '"', "_", "é", "ß", "“", "”", "—", "…", "日本", "\ufffd", "\u200e",
    "\u0301", "\xa0", "😀", "A: ", "B:\t", "*CHI: ", ":", "A", "\u2028",
]
texts = st.one_of(
    st.lists(st.sampled_from(TOKENS), max_size=40).map("".join),
    st.text(max_size=40),
)
configs = st.builds(CleanConfig, min_symbol_run=st.integers(2, 6), strip_speaker_tags=st.booleans())
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def stream_clean(text: str, cuts: list[int], config: CleanConfig):
    cleaner = StreamCleaner(config)
    out, prev = [], 0
    for c in sorted(cuts) + [len(text)]:
        out.append(cleaner.feed(text[prev:c]))
        prev = c
    out.append(cleaner.finish())
    return "".join(out), cleaner.stats


def test_folding_example():
    assert clean_text("naïve café “quoted” — dash") == 'naive cafe "quoted" - dash'


def test_fold_ascii_multichar_unmappable_and_replacement_char():
    text, folded, dropped = fold_ascii("Straße… 日本 x\u200ey \ufffd!")
    assert text == "Strasse... RiBen xy !"
    assert (folded, dropped) == (4, 2)  # ß … 日 本 folded; U+200E and U+FFFD dropped
    assert fold_ascii("plain ascii") == ("plain ascii", 0, 0)


def test_newlines_and_controls():
    assert normalise_newlines("a\r\nb\rc\n") == "a\nb\nc\n"
    assert remove_controls("a\tb\x00c\x1bd\x7fe\x0cf\n") == ("a bcde f\n", 3)


def test_symbol_runs_remove_identical_runs_only():
    assert remove_symbol_runs("x ======= y", 4) == ("x   y", 1, 7)
    assert remove_symbol_runs("*****", 4) == (" ", 1, 5)
    kept = 'Wait... what?! -- no ..." ,--" (a)'
    assert remove_symbol_runs(kept, 4) == (kept, 0, 0)
    assert clean_text("word----word") == "word word"
    assert clean_text("a ____ b", CleanConfig(min_symbol_run=5)) == "a ____ b"


def test_spaces():
    assert normalise_spaces("a   b  \n\n c ") == ("a b\n\n c", 5)
    assert normalise_spaces("a  ", final=False) == ("a ", 1)


def test_speaker_tags_pattern():
    assert strip_speaker_tags("A: yes\nB: A: no\n*CHI: more\nNOTE: x\nok A: y") == (
        "yes\nno\nmore\nNOTE: x\nok A: y", 4)
    assert clean_text("A:\tyes", CleanConfig(strip_speaker_tags=True)) == "yes"
    assert clean_text("A:\tyes") == "A: yes"  # off by default


def test_config_rejects_run_of_one():
    with pytest.raises(BabySSMError, match="min_symbol_run"):
        CleanConfig(min_symbol_run=1)


def test_stats_count_each_change():
    _, stats = clean_text_stats("é\x00 ====  x \n", CleanConfig())
    assert stats.as_dict() == {"folded": 1, "dropped": 1, "symbol_runs": 1, "symbol_chars": 4,
                               "spaces": 4, "speaker_tags": 0}


@FAST
@given(texts, configs)
def test_output_only_holds_vocabulary_symbols(text, config):
    out = clean_text(text, config)
    assert all(ord(c) in TEXT_IDS for c in out)
    assert encode(out) == list(out.encode("ascii"))


@FAST
@given(texts, configs)
def test_idempotent(text, config):
    once = clean_text(text, config)
    assert clean_text(once, config) == once


@FAST
@given(st.data(), texts, configs)
def test_streaming_equals_whole_text(data, text, config):
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=8))
    whole, stats = clean_text_stats(text, config)
    streamed, streamed_stats = stream_clean(text, cuts, config)
    assert streamed == whole
    assert streamed_stats == stats


def test_streaming_long_line_without_whitespace_is_bounded():
    piece = "abcdefghij" * 6_554  # 64 KiB of letters, no whitespace, no newline
    cleaner = StreamCleaner()
    fed = emitted = 0
    for _ in range(160):  # 10 MiB in all
        emitted += len(cleaner.feed(piece))
        fed += len(piece)
        assert fed - emitted <= 1  # only the last letter is held back
    assert emitted + len(cleaner.finish()) == fed


@pytest.mark.parametrize("run", ["=", " "])
def test_streaming_one_huge_run_is_bounded(run):
    cleaner = StreamCleaner()
    out = [cleaner.feed("x " if run == "=" else "x")]
    for _ in range(100):
        out.append(cleaner.feed(run * 65_536))
        assert len(cleaner._tail) <= cleaner.config.min_symbol_run + 1
    out += [cleaner.feed(" y\n"), cleaner.finish()]
    assert "".join(out) == "x y\n"
    assert cleaner.stats.symbol_chars == (6_553_600 if run == "=" else 0)


def test_real_children_stories_slice(data_root):
    raw = (data_root / "babylm" / "train" / "2023_children_stories.train").read_bytes()[:20_000]
    text = raw.decode("utf-8", errors="ignore")
    out, stats = clean_text_stats(text)
    assert out.startswith('"If others have tried it," said Brother Lustig, "I will try it too."\n')
    assert all(ord(c) in TEXT_IDS for c in out)
    assert stats.folded > 50 and stats.dropped == 0
