"""Utterance starts and utterance-aligned windows: the rule on both kinds of BabyLM file,
the neural batches (BOS only at an utterance start, same random stream as the offset
mode, exact words), the dev subset and the n-gram's cut, and old runs' defaults."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from babyssm.data.clean import clean_text
from babyssm.data.utterances import packed_windows, sample_window_starts, utterance_starts
from babyssm.data.vocab import BOS_ID, encode
from babyssm.training.batches import count_words, dev_windows, get_batch
from babyssm.training.plan import resumed_train_config


def _ids(text: str) -> np.ndarray:
    return np.array(encode(text), np.uint8)


def test_rule_on_lines_sentences_quotes_and_file_offsets():
    text = 'Hello there.\nno! yes\n"Go." he said. Why? ok\nend.x ab'
    starts = utterance_starts(_ids(text), file_offsets=[len(text) - 2])
    got = [text[i:i + 3] for i in starts]
    # line starts, after ". " / "! " / '." ' / "? ", the second file's first char; not "x" after "end."
    assert got == ["Hel", "no!", "yes", '"Go', "he ", "Why", "ok\n", "end", "ab"]


@pytest.mark.parametrize("name", ["2024sample_childes.train", "2024sample_bnc_spoken.train"])
def test_a_file_without_newlines_gets_sentence_starts(data_root, name):
    raw = (data_root / "babylm" / "train" / name).read_bytes()[:20_000].decode("utf-8", "ignore")
    data = _ids(clean_text(raw))
    assert b"\n" not in data.tobytes()
    starts = utterance_starts(data)
    assert len(starts) > 40  # about one per 30-70 characters
    for i in starts[1:]:
        assert data[i - 1] == ord(" ") and chr(data[i - 2]) in ".!?\"')]", i


def _corpus() -> np.ndarray:
    # Short lines, then a 300-char line: its tail lies past T = 64 from its start.
    lines = [f"line {i} is short." for i in range(40)] + ["word " * 60, "after the long one."]
    return _ids("\n".join(lines) + "\n")


def test_utterance_batches_start_at_utterances_and_share_the_offset_stream():
    data, T, B = _corpus(), 64, 256
    starts = utterance_starts(data)
    first_off, _ = sample_window_starts(len(data), T, B, torch.Generator().manual_seed(3), None)
    first, from_bos = sample_window_starts(len(data), T, B, torch.Generator().manual_seed(3), starts)
    holder = starts[np.searchsorted(starts, first_off, side="right") - 1]
    assert np.array_equal(first[from_bos], holder[from_bos])  # the same draws, moved back to their utterance
    assert set(first[from_bos]) <= set(starts.tolist())
    assert (~from_bos).any() and from_bos.mean() > 0.5
    # A tail window is a T-char piece of its utterance that holds the drawn position.
    assert ((first[~from_bos] - holder[~from_bos]) % T == 0).all()
    assert (first[~from_bos] <= first_off[~from_bos]).all() and (first_off[~from_bos] < first[~from_bos] + T).all()

    x, y, words = get_batch(data, B, T, torch.Generator().manual_seed(3), torch.device("cpu"), with_words=True,
                            starts=starts)
    assert torch.equal(x[:, 1:], y[:, :-1])
    for row, i, bos in zip(range(B), first, from_bos):
        assert y[row].tolist() == data[i:i + T].tolist()
        assert int(x[row, 0]) == (BOS_ID if bos else int(data[i - 1]))  # BOS only where an utterance starts
    before = np.array([data[i - 1] if i else ord("\n") for i in first], np.uint8)
    assert words == count_words(np.stack([data[i:i + T] for i in first]), before)
    direct = sum(len((chr(b) + bytes(data[i:i + T]).decode()).split()) - (chr(b) not in " \n")
                 for b, i in zip(before, first))  # whitespace words, minus one begun before the window
    assert words == direct


def test_dev_windows_begin_at_utterance_starts():
    data = _corpus()
    starts = utterance_starts(data)
    w = dev_windows(data, eval_chars=10 * 32, seq_len=32, starts=starts)
    for row in w.tolist():
        i = bytes(data).find(bytes(row))
        assert i in set(starts.tolist())


def test_ngram_cut_covers_every_character_once_and_mostly_from_utterance_starts():
    data = _corpus()
    starts = utterance_starts(data)
    begin, end, bos = packed_windows(len(data), 64, starts)
    assert begin[0] == 0 and end[-1] == len(data) and np.array_equal(begin[1:], end[:-1])
    assert (end - begin <= 64).all()
    assert set(begin[bos]) <= set(starts.tolist()) and not set(begin[~bos]) & set(starts.tolist())
    assert bos.sum() > (~bos).sum() > 0  # pieces of the long line only
    offset = packed_windows(len(data), 64, None)
    assert offset[0].tolist() == list(range(0, len(data), 64)) and offset[2].all()


def test_runs_saved_before_the_switch_resume_with_offset_windows():
    assert resumed_train_config({"max_chars": 100}, {}).windows == "offset"
    assert resumed_train_config({"max_chars": 100, "windows": "utterance"}, {}).windows == "utterance"


def test_defaults_follow_the_ablation():
    # Neural models train from utterance starts; the n-gram keeps offset windows (better BLiMP).
    from babyssm.models.ngram import NGramConfig
    from babyssm.training.plan import TrainConfig

    assert TrainConfig(max_chars=1).windows == "utterance"
    assert NGramConfig().windows == "offset"
