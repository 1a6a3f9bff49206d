"""Scoring: exact log-probabilities on models with known probabilities, and every fast
path (batched, shared-prefix, delegated) against the step-by-step reference.

The toy models (``tests/helpers.py``) are real CharLMs with hand-set weights (no
training): ``BigramLM`` has a fixed next-character table, so expected log-probs are
computed by hand; ``DecayRNN`` has a true recurrent state, so any mistake in carrying
state across a prefix shows up.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from babyssm.evaluation import scoring, zeroshot
from babyssm.data.vocab import VOCAB_SIZE, encode
from helpers import BigramLM, DecayRNN, ToyConfig


class UniformScorer:
    """A non-nn scorer with its own token_logprobs (like the n-gram baseline)."""

    def __init__(self):
        self.calls = 0

    def token_logprobs(self, seqs):
        self.calls += 1
        return [np.full(len(s), -math.log(VOCAB_SIZE)) for s in seqs]


def random_seqs(n, rng, max_len=30, alphabet=(32, 97, 98, 99, 100, 46)):
    return [list(rng.choice(alphabet, size=rng.integers(0, max_len))) for _ in range(n)]


LOG_UNI = -math.log(VOCAB_SIZE)


def test_bigram_exact_logprobs():
    m = BigramLM()
    got = scoring.token_logprobs(m, [encode("ab"), encode("ba"), encode("aab"), []])
    np.testing.assert_allclose(got[0], [math.log(0.5), math.log(0.25)], atol=1e-6)
    np.testing.assert_allclose(got[1], [math.log(0.5 / 127), LOG_UNI], atol=1e-6)
    np.testing.assert_allclose(got[2], [math.log(0.5), math.log(0.75 / 127), math.log(0.25)], atol=1e-6)
    assert got[3].shape == (0,) and all(g.dtype == np.float64 for g in got)
    assert scoring.sentence_logprob(m, encode("ab")) == pytest.approx(math.log(0.125), abs=1e-6)


def test_score_groups_starts_skip_the_context():
    m = BigramLM()
    (s,) = scoring.score_groups(m, [[encode("ab"), encode("ax")]], starts=[[1, 1]])
    np.testing.assert_allclose(s, [math.log(0.25), math.log(0.75 / 127)], atol=1e-6)


def test_identical_candidates_get_one_score():
    """A batched scorer's rows can differ in the last bits (BLAS blocking); identical
    candidates must still tie exactly, or the pipelines' tie rule would see a winner."""

    class RowNoise:  # scores of its own (delegated to), each row off by a different last bit
        def token_logprobs(self, seqs):
            return [np.full(len(seq), -1.0) + 1e-9 * row for row, seq in enumerate(seqs)]

    groups = [[encode("ab"), encode("ab"), encode("ba")], [encode("ba"), encode("ab"), encode("ba")]]
    scores = scoring.score_groups(RowNoise(), groups, starts=[[0, 0, 0], [0, 0, 1]])
    assert scores[0][0] == scores[0][1] != scores[0][2]
    assert scores[1][0] != scores[1][2]  # the same sentence scored from another start is another candidate
    assert zeroshot.credit(scores[0][:2]) == (0.5, True, True)


@pytest.mark.parametrize("levels", [None, 2])
def test_batched_matches_reference(levels):
    rng = np.random.default_rng(1)
    m = DecayRNN(ToyConfig(seed=3))
    seqs = random_seqs(23, rng) + [[], [97]]
    fast = scoring.token_logprobs(m, seqs, batch_size=4, levels=levels)
    for s, f in zip(seqs, fast):
        np.testing.assert_allclose(f, scoring.reference_token_logprobs(m, s, levels=levels), atol=1e-4)
    other = scoring.token_logprobs(m, seqs[:3], levels=3 if levels == 2 else 2)
    assert not np.allclose(other[0], fast[0])  # levels really reaches the model


def test_shared_prefix_groups_match_reference():
    rng = np.random.default_rng(2)
    m = DecayRNN(ToyConfig(seed=5))
    stem = [list(rng.choice([97, 98, 32], size=rng.integers(0, 12))) for _ in range(9)]
    groups = []
    for i, p in enumerate(stem):
        a, b = p + [97, 98, 99][: i % 4], p + [98] + list(rng.choice([97, 32], size=i % 5))
        groups.append([a, b])
    groups += [[[97, 98], [97, 98]], [[97], [97, 98, 99]], [[], [32]], [[99, 99, 99]], [[97, 98, 32], [97, 99], [97]]]
    got = scoring.group_token_logprobs(m, groups, batch_size=3)
    for g, lps in zip(groups, got):
        assert len(lps) == len(g)
        for s, lp in zip(g, lps):
            np.testing.assert_allclose(lp, scoring.reference_token_logprobs(m, s), atol=1e-4)


def test_shared_prefix_reads_the_prefix_once():
    m = DecayRNN()
    calls = []
    real = m.forward_from

    def counting(idx, state, levels=None):
        calls.append(tuple(idx.shape))
        return real(idx, state, levels)

    m.forward_from = counting
    groups = [[encode("The cat sleeps."), encode("The cat sleep.")], [encode("The dog runs."), encode("The dog run.")]]
    scoring.group_token_logprobs(m, groups)
    # Both pairs share a batch, which reads the shorter shared prefix once: BOS + "The dog run"
    # / "The cat slee" (11 chars); then one continuation pass per candidate, padded to the
    # longest ("eps" / "s", then "ep" / ""); the final "." is never an input.
    assert calls == [(2, 12), (2, 3), (2, 2)]


def test_delegates_to_own_token_logprobs():
    u = UniformScorer()
    got = scoring.token_logprobs(u, [encode("hi"), []])
    np.testing.assert_allclose(got[0], [LOG_UNI, LOG_UNI])
    sums = scoring.score_groups(u, [[encode("a"), encode("bb")]])
    np.testing.assert_allclose(sums[0], [LOG_UNI, 2 * LOG_UNI])
    assert u.calls == 2
    with pytest.raises(TypeError, match="neither a CharLM"):
        scoring.token_logprobs(object(), [[97]])


@pytest.mark.parametrize("levels", [2, 3])
def test_hierarchical_model_fast_paths_match_step_reference(levels):
    from babyssm.models.presets import get_preset
    from babyssm.models.hierarchical import HierarchicalSSM

    torch.manual_seed(0)
    m = HierarchicalSSM(get_preset("tiny"))
    good, bad = encode("The cats sleep on the mat."), encode("The cats sleeps on the mat.")
    groups = [[good, bad], [encode("Who ran?"), encode("Who runs?"), encode("Who")]]
    shared = scoring.group_token_logprobs(m, groups, levels=levels)
    batched = scoring.token_logprobs(m, [s for g in groups for s in g], batch_size=2, levels=levels)
    for s, lp_shared, lp_batched in zip([s for g in groups for s in g], [x for g in shared for x in g], batched):
        ref = scoring.reference_token_logprobs(m, s, levels=levels)
        np.testing.assert_allclose(lp_shared, ref, atol=1e-4)
        np.testing.assert_allclose(lp_batched, ref, atol=1e-4)


@pytest.mark.parametrize("kind", ["gru", "transformer"])
def test_baseline_shared_prefix_matches_step_reference(kind):
    from babyssm.models.gru import GRULM, GRUConfig
    from babyssm.models.transformer import TransformerConfig, TransformerLM

    torch.manual_seed(0)
    m = GRULM(GRUConfig(d_model=24)) if kind == "gru" else TransformerLM(
        TransformerConfig(d_model=24, n_layers=2, n_heads=2, d_ff=48, seq_len=16))
    groups = [[encode("A dog barks at the cats."), encode("A dog bark at the cats.")],
              [encode("Many dogs bark loudly at night."), encode("Many dog barks.")]]
    got = scoring.group_token_logprobs(m, groups, batch_size=2)
    for g, lps in zip(groups, got):
        for s, lp in zip(g, lps):
            np.testing.assert_allclose(lp, scoring.reference_token_logprobs(m, s), atol=1e-4)
