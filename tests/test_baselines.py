"""The unigram and bigram baselines on a corpus small enough to work out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines import baselines, schema

# Two training tracks over a vocabulary of 2 tokens.
TRAIN = [np.array([0, 1, 0, 1]), np.array([1, 1])]


def test_counts_do_not_cross_tracks() -> None:
    counts = baselines.TokenCounts.of(TRAIN, vocab=2)
    assert counts.unigram.tolist() == [2, 4]
    # 0->1 twice, 1->0 once, 1->1 once; no 1->1 pair across the two tracks' join.
    assert counts.bigram.tolist() == [[0, 2], [1, 1]]


def test_unigram_and_bigram_nll_by_hand() -> None:
    model = baselines.Baselines(baselines.TokenCounts.of(TRAIN, vocab=2), k=1.0)
    # Add-one: p(0) = (2+1)/(6+2) = 3/8, p(1) = 5/8.
    assert np.exp(model.unigram).tolist() == pytest.approx([3 / 8, 5 / 8])
    # p(.|0) = (0+1, 2+1)/(2+2); p(.|1) = (1+1, 1+1)/(2+2).
    assert np.exp(model.bigram).tolist() == [
        pytest.approx([1 / 4, 3 / 4]),
        pytest.approx([1 / 2, 1 / 2]),
    ]
    # A test window 0 1 1: targets 1, 1 after 0, 1.
    scores = model.score(previous=np.array([0, 1]), targets=np.array([1, 1]))
    assert scores["unigram"].nll == pytest.approx(-math.log(5 / 8))
    assert scores["unigram"].accuracy == 1.0
    assert scores["bigram"].nll == pytest.approx(-(math.log(3 / 4) + math.log(1 / 2)) / 2)
    # After 1 the two tokens tie; the first (0) is the guess, so one of two is right.
    assert scores["bigram"].accuracy == 0.5
    assert scores["bigram"].count == 2


def test_smaller_k_trusts_the_counts_more() -> None:
    counts = baselines.TokenCounts.of(TRAIN, vocab=2)
    sharp = baselines.Baselines(counts, k=0.01)
    assert math.exp(sharp.bigram[0, 1]) == pytest.approx((2 + 0.01) / (2 + 0.02))


def test_choose_k_on_validation() -> None:
    rng = np.random.default_rng(0)
    # A deterministic cycle: validation that follows it wants little smoothing ...
    cycle = [np.tile(np.arange(8), 50)]
    counts = baselines.TokenCounts.of(cycle, vocab=8)
    follows = baselines.TokenCounts.of([np.tile(np.arange(8), 5)], vocab=8)
    assert baselines.choose_k(counts, follows) == min(baselines.K_GRID)
    # ... and validation that ignores it wants a lot.
    noise = baselines.TokenCounts.of([rng.integers(0, 8, 400)], vocab=8)
    assert baselines.choose_k(counts, noise) == max(baselines.K_GRID)


def test_bin_values_follow_the_contract() -> None:
    edges = [0.0, 0.5, 1.0]
    values = np.array([0.0, 0.25, 0.5, 0.75, 1.0, 3.0])
    # searchsorted(side=right): exact zero gets its own class 1 (the "chord" class).
    assert schema.classes_of(values, edges).tolist() == [1, 1, 2, 2, 3, 3]
    assert schema.classes_of(np.array([-1.0]), edges).tolist() == [0]


def test_tokens_outside_the_vocabulary_are_refused() -> None:
    with pytest.raises(ValueError, match=r"0\.\.1"):
        baselines.TokenCounts.of([np.array([0, 2])], vocab=2)
