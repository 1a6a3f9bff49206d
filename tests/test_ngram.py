"""The Kneser-Ney character n-gram: counts, discounts, normalisation, agreement with the
slow dict-based reference, a hand-computed probability, scoring paths and save/load."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest

from babyssm.evaluation import scoring
from babyssm.errors import BabySSMError
from babyssm.models.ngram import (
    BITS, NGramConfig, NGramLM, ReferenceKN, count_ngrams, discounts, load_ngram, ngram_keys, pad_windows,
)
from babyssm.data.utterances import packed_windows, utterance_starts
from babyssm.data.vocab import BOS_ID, VOCAB_SIZE, encode


@pytest.fixture(scope="module")
def corpus(data_root) -> np.ndarray:
    """~12 KB of real BabyLM text (child-directed speech and a children's book), as symbol ids."""
    root = data_root / "babylm" / "train"
    parts = [(root / name).read_bytes()[:6000] for name in ("2023_aochildes.train", "2023_cbt.train")]
    text = b"".join(parts).decode("ascii", errors="ignore")
    ids = np.array([c for c in text.encode("ascii") if c == 10 or 32 <= c < 127], np.uint8)
    assert len(ids) > 10_000
    return ids


def test_discounts_by_hand():
    # Y = 100/180; D1 = 1 - 2Y(40/100), D2 = 2 - 3Y(20/40), D3+ = 3 - 4Y(10/20).
    y = 100 / 180
    assert discounts((100, 40, 20, 10)) == pytest.approx([1 - 0.8 * y, 2 - 1.5 * y, 3 - 2 * y])
    assert discounts((100, 40, 20, 10), "single") == pytest.approx([y, y, y])
    assert discounts((5, 3, 0, 1)).tolist() == [0.5, 1.0, 1.5]  # no tripletons: KenLM's fallback
    assert discounts((100, 1, 100, 1)).tolist() == [0.5, 1.0, 1.5]  # D2 < 0 estimated: fallback


def test_pad_windows_and_keys():
    data = np.array([97, 98, 99, 100, 101], np.uint8)
    padded, real = pad_windows(data, 2, 2)
    assert padded.tolist() == [0, 0, 97, 98, 0, 0, 99, 100, 0, 0, 101]
    assert padded[real].tolist() == data.tolist()
    keys = ngram_keys(padded, 3)
    assert keys[0] == 97  # (BOS, BOS, a)
    assert keys[1] == (97 << BITS) | 98  # (BOS, a, b)
    assert keys[real[2:]].shape == (5,)


@pytest.mark.parametrize("windows", ["utterance", "offset"])
def test_counts_match_dict_counting(corpus, windows):
    config = NGramConfig(order=4, seq_len=50, windows=windows)
    tables = count_ngrams(corpus[:3000], config.order, config.seq_len, windows)
    ref = ReferenceKN(corpus[:3000].tolist(), config)
    for k, (keys, counts) in enumerate(tables, start=1):
        got = {}
        for key, c in zip(keys.tolist(), counts.tolist()):
            got[tuple((key >> (BITS * (k - 1 - j))) & 127 for j in range(k))] = c
        assert got == dict(ref.counts[k]), f"order {k}"
    # Highest order: raw counts, one per corpus character.
    assert tables[-1][1].sum() == 3000


def test_hand_computed_probability():
    # Windows "abab\n" and "abba\n", order 3; every order has too few counts for Chen &
    # Goodman's estimate, so D = (0.5, 1, 1.5). Adjusted counts: order 1 a=b=\n=2
    # (two distinct left neighbours each) -> p1(a) = (2-1)/6 + (3*1/6)/128; order 2 (BOS a)
    # = 2 raw (BOS-initial) -> p2(a|BOS) = 1/2 + 1/2 p1(a); order 3 (BOS BOS a) = 2
    # -> p3 = 1/2 + 1/2 p2.
    lm = NGramLM.fit(np.frombuffer(b"abab\nabba\n", np.uint8), NGramConfig(order=3, seq_len=5))
    p1 = 1 / 6 + 0.5 / 128
    expected = 0.5 + 0.5 * (0.5 + 0.5 * p1)
    assert lm.distribution([])[ord("a")] == pytest.approx(expected, rel=1e-12)
    assert math.exp(lm.token_logprobs([[ord("a")]])[0][0]) == pytest.approx(expected, rel=1e-12)
    # A symbol never seen gets only the uniform share passed down: 1/2 * 1/2 * 1/2 / 128.
    assert lm.distribution([])[ord("z")] == pytest.approx(0.125 / 128, rel=1e-12)


@pytest.mark.parametrize("order", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("kind", ["modified", "single"])
def test_every_distribution_sums_to_one(corpus, order, kind):
    lm = NGramLM.fit(corpus, NGramConfig(order=order, seq_len=128, discount=kind))
    rng = np.random.default_rng(order)
    text = corpus.tolist()
    contexts = [[], encode("th"), encode("the cat "), encode("zzqx"), encode("\n"), encode("~~~~~~~~~")]
    contexts += [text[i : i + int(rng.integers(0, 12))] for i in rng.integers(0, len(text) - 12, 30)]
    for ctx in contexts:
        p = lm.distribution(ctx)
        assert p.shape == (VOCAB_SIZE,)
        assert (p > 0).all()
        assert abs(p.sum() - 1.0) < 1e-12, (ctx, p.sum())


@pytest.mark.parametrize("kind", ["modified", "single"])
def test_fast_path_agrees_with_reference(corpus, kind):
    config = NGramConfig(order=4, seq_len=64, discount=kind)
    data = corpus[:4000]
    lm, ref = NGramLM.fit(data, config), ReferenceKN(data.tolist(), config)
    for k in range(1, 5):
        assert np.allclose(lm.discounts[k - 1], ref.d[k])
    assert any(not np.allclose(d, [0.5, 1.0, 1.5]) for d in lm.discounts)  # real estimates are exercised
    for ctx in ([], encode("you"), encode(" th"), encode("qqq"), [BOS_ID, 104], encode("what's the ")):
        want = np.array([ref.prob(tuple(ctx), w) for w in range(VOCAB_SIZE)])
        np.testing.assert_allclose(lm.distribution(ctx), want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("windows", ["utterance", "offset"])
def test_token_logprobs_paths_agree(corpus, windows):
    lm = NGramLM.fit(corpus, NGramConfig(order=5, seq_len=100, windows=windows))
    seqs = [encode("The cat sat."), [], encode("a"), corpus[500:620].tolist(), encode("Who should Derek hug?")]
    got = lm.token_logprobs(seqs)
    assert [len(g) for g in got] == [len(s) for s in seqs]
    assert lm.token_logprobs([]) == []
    for s, g in zip(seqs, got):
        want = [math.log(lm.distribution(s[:i])[c]) for i, c in enumerate(s)]
        np.testing.assert_allclose(g, want, rtol=1e-12)
    # The evaluation harness delegates to token_logprobs, group path included.
    assert np.array_equal(scoring.token_logprobs(lm, seqs)[0], got[0])
    # Scoring a corpus in its training windows == scoring each window as a sequence from BOS
    # (a piece of a long utterance: after its real 4 preceding characters).
    text = corpus[-1500:]  # children's book: lines longer than 100 chars
    cut = packed_windows(len(text), 100, utterance_starts(text) if windows == "utterance" else None)
    assert windows == "offset" or not cut[2].all()  # the text has utterances longer than 100 chars
    want = [lm.token_logprobs([text[b:e].tolist()])[0] if bos else lm.token_logprobs([text[b - 4:e].tolist()])[0][4:]
            for b, e, bos in zip(*cut)]
    np.testing.assert_allclose(lm.stream_logprobs(text), np.concatenate(want), rtol=1e-12)


def test_higher_order_fits_better(corpus):
    train, held = corpus[:10_000], corpus[10_000:]
    bpc = {n: -NGramLM.fit(train, NGramConfig(order=n)).stream_logprobs(held).mean() / math.log(2)
           for n in (1, 3)}
    assert bpc[3] < bpc[1] < 7.0  # a trigram beats unigrams, which beat uniform (7 bits)


def test_save_load_round_trip(corpus, tmp_path):
    lm = NGramLM.fit(corpus, NGramConfig(order=6, seq_len=64, discount="single"))
    lm.save(tmp_path / "run", {"chars_seen": len(corpus)})
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert meta["model_type"] == "ngram" and meta["config"]["order"] == 6 and meta["chars_seen"] == len(corpus)
    back = load_ngram(tmp_path / "run")
    assert back.config == lm.config
    seqs = [encode("Hello there."), corpus[:300].tolist()]
    for a, b in zip(lm.token_logprobs(seqs), back.token_logprobs(seqs)):
        assert np.array_equal(a, b)
    assert not list((tmp_path / "run").glob("*.tmp"))  # atomic writes leave no temporaries


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="order must be 1..9"):
        NGramConfig(order=10)
    with pytest.raises(ValueError, match="discount"):
        NGramConfig(discount="absolute")
    with pytest.raises(BabySSMError, match="symbol id 0"):
        NGramLM.fit(np.array([97, 0, 98], np.uint8))
    with pytest.raises(BabySSMError, match="symbol id 200"):
        NGramLM.fit(np.array([97, 200], np.uint8))
    with pytest.raises(BabySSMError, match="empty corpus"):
        NGramLM.fit(np.zeros(0, np.uint8))
    lm = NGramLM.fit(np.frombuffer(b"abc abc\n", np.uint8), NGramConfig(order=2))
    with pytest.raises(ValueError, match="symbol ids"):
        lm.token_logprobs([[97, 300]])
    with pytest.raises(BabySSMError, match="config.json is missing"):
        load_ngram(tmp_path / "nothing")
    lm.save(tmp_path / "run")
    (tmp_path / "run" / "counts.npz").write_bytes(b"garbage")
    with pytest.raises(BabySSMError, match="counts.npz"):
        load_ngram(tmp_path / "run")
    (tmp_path / "run" / "config.json").write_text('{"model_type": "gru", "config": {}}')
    with pytest.raises(BabySSMError, match="not 'ngram'"):
        load_ngram(tmp_path / "run")


def test_bos_contexts_use_raw_counts():
    # Every window starts with "ab"; the order-2 count of (BOS a) is its raw count (4),
    # not its single left extension (BOS): so p(a | BOS) is high at every order.
    data = np.frombuffer(b"abxy" * 4, np.uint8)
    tables = count_ngrams(data, 3, 4)
    keys, counts = tables[1]
    assert dict(zip(keys.tolist(), counts.tolist()))[97] == 4  # (BOS, a)
    assert Counter(tables[0][1].tolist()) == Counter([1, 1, 1, 1])  # unigrams: one left neighbour each
