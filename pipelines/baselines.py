"""Unigram and bigram (first-order Markov) baselines of each head's tokens, add-k smoothed.

Fitted on the training split's tracks, scored on the same test targets as the model, so the
model's negative log-likelihood can be read against what note counts alone achieve.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

# The smoothing constants tried on the validation split when none is given.
K_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


@dataclass
class TokenCounts:
    """Unigram and bigram counts of one head's tokens over a set of tracks."""

    vocab: int
    unigram: np.ndarray = field(init=False)
    bigram: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.unigram = np.zeros(self.vocab, dtype=np.int64)
        self.bigram = np.zeros((self.vocab, self.vocab), dtype=np.int64)

    def add(self, tokens: np.ndarray, seen: int = 0) -> None:
        """Count one track (or chunk) of tokens; bigrams never cross from one track to another.

        `seen`: how many leading tokens were counted already (a chunk's overlap with the chunk
        before it): they count only as the first note of the bigram that leaves them.
        """
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.vocab):
            msg = f"tokens must lie in 0..{self.vocab - 1}"
            raise ValueError(msg)
        self.unigram += np.bincount(tokens[seen:], minlength=self.vocab)
        tokens = tokens[max(seen - 1, 0) :]
        if len(tokens) > 1:
            pairs = tokens[:-1] * self.vocab + tokens[1:]
            self.bigram += np.bincount(pairs, minlength=self.vocab**2).reshape(
                self.vocab, self.vocab
            )

    @classmethod
    def of(cls, tracks: Iterable[np.ndarray], vocab: int) -> TokenCounts:
        counts = cls(vocab)
        for tokens in tracks:
            counts.add(tokens)
        return counts


def unigram_log_probs(counts: TokenCounts, k: float) -> np.ndarray:
    """log p(token) = log (c(token) + k) / (N + kV)."""
    smoothed = counts.unigram + k
    return np.log(smoothed / smoothed.sum())


def bigram_log_probs(counts: TokenCounts, k: float) -> np.ndarray:
    """[V, V]: log p(next | previous) = log (c(previous, next) + k) / (c(previous, .) + kV)."""
    smoothed = counts.bigram + k
    return np.log(smoothed / smoothed.sum(axis=1, keepdims=True))


@dataclass(frozen=True)
class Score:
    """Mean negative log-likelihood (nats per token) and accuracy of the most likely token."""

    nll: float
    accuracy: float
    count: int

    def as_dict(self) -> dict[str, float]:
        return {"nll": self.nll, "accuracy": self.accuracy, "count": self.count}


def score_unigram(log_probs: np.ndarray, targets: np.ndarray) -> Score:
    targets = np.asarray(targets, dtype=np.int64).ravel()
    if not len(targets):
        return Score(math.nan, math.nan, 0)
    nll = -float(log_probs[targets].mean())
    accuracy = float(np.mean(targets == int(np.argmax(log_probs))))
    return Score(nll, accuracy, len(targets))


def score_bigram(log_probs: np.ndarray, previous: np.ndarray, targets: np.ndarray) -> Score:
    """Each target scored given the note before it (its own previous note in the window)."""
    previous = np.asarray(previous, dtype=np.int64).ravel()
    targets = np.asarray(targets, dtype=np.int64).ravel()
    if not len(targets):
        return Score(math.nan, math.nan, 0)
    nll = -float(log_probs[previous, targets].mean())
    accuracy = float(np.mean(targets == np.argmax(log_probs, axis=1)[previous]))
    return Score(nll, accuracy, len(targets))


def choose_k(counts: TokenCounts, validation: TokenCounts, grid: Sequence[float] = K_GRID) -> float:
    """The add-k constant from `grid` that gives the validation bigrams the lowest NLL."""
    if validation.bigram.sum() == 0:
        return 1.0
    best_k, best_nll = grid[0], math.inf
    for k in grid:
        nll = -float((validation.bigram * bigram_log_probs(counts, k)).sum())
        if nll < best_nll:
            best_k, best_nll = k, nll
    return float(best_k)


@dataclass
class Baselines:
    """A head's unigram and bigram models, fitted from training counts with add-k smoothing."""

    counts: TokenCounts
    k: float

    @property
    def unigram(self) -> np.ndarray:
        return unigram_log_probs(self.counts, self.k)

    @property
    def bigram(self) -> np.ndarray:
        return bigram_log_probs(self.counts, self.k)

    def score(self, previous: np.ndarray, targets: np.ndarray) -> dict[str, Score]:
        return {
            "unigram": score_unigram(self.unigram, targets),
            "bigram": score_bigram(self.bigram, previous, targets),
        }
