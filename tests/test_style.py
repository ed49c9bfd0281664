"""The style classifier: it tells clearly different synthetic styles apart on pieces it was not
fitted on, it scores near chance where the labels say nothing about the music, and its features
are fixed-length, deterministic, blind to the key and defined for pieces without parts."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines import music_metrics as mm
from pipelines import style

N_PARTS = 8
GROUPS = ("chorale", "etude", "folk")
MAJOR = np.array(mm.MAJOR)
PENTATONIC = np.array([0, 2, 4, 7, 9])


def in_scale(
    rng: np.random.Generator, scale: np.ndarray, low: int, high: int, n: int
) -> np.ndarray:
    pitches = np.array([p for p in range(low, high + 1) if p % 12 in set(scale.tolist())])
    return rng.choice(pitches, n)


def chorale(rng: np.random.Generator) -> mm.Piece:
    """Four voices (parts 0-3) in their registers, a chord of quarter or half notes per onset,
    in a major key."""
    registers = [(40, 55), (50, 64), (55, 69), (60, 76)]
    lengths = rng.choice([1.0, 1.0, 1.0, 2.0], int(rng.integers(12, 24)))
    starts = np.concatenate([[0.0], np.cumsum(lengths)[:-1]])
    pitch, start, end, part = [], [], [], []
    for t, length in zip(starts, lengths, strict=True):
        for voice, (low, high) in enumerate(registers):
            pitch.append(int(in_scale(rng, MAJOR, low, high, 1)[0]))
            start.append(t)
            end.append(t + length)
            part.append(voice)
    return mm.Piece(pitch, start, end, part)


def etude(rng: np.random.Generator) -> mm.Piece:
    """One part (4), running sixteenth notes over a wide chromatic range."""
    n = int(rng.integers(48, 96))
    start = np.arange(n) * 0.25
    return mm.Piece(rng.integers(48, 85, n), start, start + 0.25, np.full(n, 4))


def folk(rng: np.random.Generator) -> mm.Piece:
    """One part (5), a narrow pentatonic tune in eighths and dotted quarters."""
    n = int(rng.integers(32, 64))
    lengths = rng.choice([0.5, 0.5, 1.5], n)
    start = np.concatenate([[0.0], np.cumsum(lengths)[:-1]])
    return mm.Piece(in_scale(rng, PENTATONIC, 62, 74, n), start, start + lengths, np.full(n, 5))


MAKERS = {"chorale": chorale, "etude": etude, "folk": folk}


def transposed(piece: mm.Piece, semitones: int) -> mm.Piece:
    return mm.Piece(piece.pitch + semitones, piece.start, piece.end, piece.part)


def corpus(per_group: int, seed: int) -> tuple[list[mm.Piece], list[str]]:
    """`per_group` pieces of each style, each in a random key."""
    rng = np.random.default_rng(seed)
    pieces, labels = [], []
    for group in GROUPS:
        for _ in range(per_group):
            pieces.append(transposed(MAKERS[group](rng), int(rng.integers(-6, 6))))
            labels.append(group)
    return pieces, labels


def test_clearly_different_styles_are_told_apart_on_held_out_pieces() -> None:
    pieces, labels = corpus(40, seed=0)
    features = style.feature_matrix(pieces, N_PARTS)
    # Three excerpts to a "file": a file's excerpts are never split between fitting and testing.
    files = [f"{label}/{i // 3}" for i, label in enumerate(labels)]
    predicted = style.held_out_predictions(features, labels, files, folds=5, seed=0)
    assert style.accuracy(predicted, labels) > 0.9
    assert all(a > 0.9 for a in style.accuracy_by_group(predicted, labels).values())
    # A classifier fitted on one draw labels a fresh draw (other seeds, other keys) as well.
    classifier = style.StyleClassifier().fit(features, labels, seed=0)
    assert classifier.classes == sorted(GROUPS)
    fresh, fresh_labels = corpus(15, seed=1)
    assert (
        style.accuracy(classifier.predict(style.feature_matrix(fresh, N_PARTS)), fresh_labels) > 0.9
    )
    probabilities = classifier.predict_proba(style.feature_matrix(fresh, N_PARTS))
    assert probabilities.shape == (45, 3)
    assert np.allclose(probabilities.sum(axis=1), 1.0)


def test_labels_that_say_nothing_about_the_music_score_near_chance() -> None:
    # The same varied pieces, labelled at random: no feature can know the label. With 300
    # pieces a guess at chance (1/3) has a standard deviation of sqrt(1/3 * 2/3 / 300) = 0.027,
    # so 0.1 is about 3.7 of them: a classifier that found signal in noise would exceed it.
    # (Over 20 random labellings of these pieces: mean 0.333, sd 0.032, from 0.27 to 0.38.)
    pieces, _ = corpus(100, seed=2)
    labels = [GROUPS[i] for i in np.random.default_rng(3).integers(0, 3, len(pieces))]
    features = style.feature_matrix(pieces, N_PARTS)
    chance = style.chance_levels(labels)
    assert chance["uniform"] == pytest.approx(1 / 3)
    assert 1 / 3 <= chance["majority"] < 0.4
    for seed in (0, 1):
        accuracy = style.held_out_accuracy(features, labels, folds=5, seed=seed)
        assert abs(accuracy - chance["uniform"]) < 0.1, accuracy


def test_accuracy_by_group_and_chance_levels_by_hand() -> None:
    predicted = ["bach", "bach", "palestrina", "bach", "monteverdi"]
    requested = ["bach", "palestrina", "palestrina", "bach", "palestrina"]
    assert style.accuracy(predicted, requested) == pytest.approx(3 / 5)
    assert style.accuracy_by_group(predicted, requested) == {"bach": 1.0, "palestrina": 1 / 3}
    assert style.chance_levels(requested) == {"uniform": 0.5, "majority": 0.6}
    classes = ["bach", "monteverdi", "palestrina"]
    assert style.chance_levels(requested, classes)["uniform"] == pytest.approx(1 / 3)
    assert math.isnan(style.accuracy([], []))
    with pytest.raises(ValueError, match="predictions"):
        style.accuracy_by_group(["bach"], [])


def test_features_have_a_fixed_length_are_deterministic_and_blind_to_the_key() -> None:
    rng = np.random.default_rng(4)
    width = len(style.feature_names(N_PARTS))
    assert len(set(style.feature_names(N_PARTS))) == width
    for piece in (chorale(rng), etude(rng), folk(rng), mm.Piece([60], [0.0], [1.0], [0])):
        features = style.style_features(piece, N_PARTS)
        assert features.shape == (width,)
        assert np.all(np.isfinite(features))
        assert np.array_equal(features, style.style_features(piece, N_PARTS))
        # Up a tritone: only the mean pitch moves, and by the interval.
        moved = style.style_features(transposed(piece, 6), N_PARTS)
        mean = style.feature_names(N_PARTS).index("mean_pitch")
        assert moved[mean] == pytest.approx(features[mean] + 6)
        assert np.allclose(np.delete(moved, mean), np.delete(features, mean))
    # The part shares are each part's share of the notes.
    shares = style.part_shares(
        mm.Piece([60, 62, 64, 65], [0, 0, 1, 2], [1, 1, 2, 3], [0, 3, 3, 3]), 4
    )
    assert shares.tolist() == [0.25, 0.0, 0.0, 0.75]
    with pytest.raises(ValueError, match="vocabulary of 4 parts"):
        style.part_shares(mm.Piece([60], [0.0], [1.0], [4]), 4)
    # The spectrum of one pitch class is flat; of the whole chromatic scale, zero.
    assert np.allclose(style.pitch_class_spectrum(mm.Piece([60], [0.0], [1.0])), 1.0)
    chromatic = mm.Piece(np.arange(60, 72), np.arange(12.0), np.arange(12.0) + 1)
    assert np.allclose(style.pitch_class_spectrum(chromatic), 0.0)


def test_a_piece_without_parts_or_notes_has_features_too() -> None:
    rng = np.random.default_rng(5)
    piece = folk(rng)
    bare = mm.Piece(piece.pitch, piece.start, piece.end)
    with_parts = style.style_features(piece, N_PARTS)
    without = style.style_features(bare, N_PARTS)
    assert without.shape == with_parts.shape
    assert np.all(without[-N_PARTS:] == 0.0)
    assert np.array_equal(without[:-N_PARTS], with_parts[:-N_PARTS])
    empty = style.style_features(mm.Piece([], [], []), N_PARTS)
    assert empty.shape == with_parts.shape and np.all(empty == 0.0)
    assert style.feature_matrix([], N_PARTS).shape == (0, len(with_parts))
    # A classifier fitted on pieces with parts labels pieces without them.
    pieces, labels = corpus(10, seed=6)
    classifier = style.StyleClassifier().fit(style.feature_matrix(pieces, N_PARTS), labels)
    assert classifier.predict(without[None])[0] in GROUPS


def test_the_classifier_needs_two_groups_and_a_fit() -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        style.StyleClassifier().predict(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="two groups"):
        style.StyleClassifier().fit(np.zeros((4, 3)), ["bach"] * 4)
    with pytest.raises(ValueError, match="labels"):
        style.StyleClassifier().fit(np.zeros((4, 3)), ["bach", "palestrina"])


FIT_AND_PREDICT = """
import hashlib, json, sys
sys.path.insert(0, {tests!r})
from test_style import N_PARTS, corpus
from pipelines import style
pieces, labels = corpus(20, seed=7)
features = style.feature_matrix(pieces, N_PARTS)
classifier = style.StyleClassifier().fit(features, labels, seed=0)
print(json.dumps({{
    "features": hashlib.sha256(features.tobytes()).hexdigest(),
    "proba": hashlib.sha256(classifier.predict_proba(features).round(12).tobytes()).hexdigest(),
    "held_out": style.held_out_predictions(features, labels, folds=4, seed=0),
}}))
"""


def test_features_and_predictions_are_the_same_in_another_process() -> None:
    pieces, labels = corpus(20, seed=7)
    features = style.feature_matrix(pieces, N_PARTS)
    classifier = style.StyleClassifier().fit(features, labels, seed=0)
    here = {
        "features": hashlib.sha256(features.tobytes()).hexdigest(),
        "proba": hashlib.sha256(classifier.predict_proba(features).round(12).tobytes()).hexdigest(),
        "held_out": style.held_out_predictions(features, labels, folds=4, seed=0),
    }
    script = FIT_AND_PREDICT.format(tests=str(Path(__file__).parent))
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env
    )
    assert json.loads(done.stdout) == here
