"""Figures of pieces in parts: a Piece carries its notes' parts through every helper that builds
a new one, and the per-part figures (real ranges, notes outside them, each voice's range, parts
used) have the values worked out by hand, and nan where notes carry no part."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from pipelines import controls
from pipelines import music_metrics as mm

# Four voices' registers (bass, tenor, alto, soprano), as parts 0-3.
REGISTERS = [(40, 55), (50, 64), (55, 69), (60, 76)]


def four_voices(rng: np.random.Generator, chords: int) -> mm.Piece:
    """One chord a beat, each voice somewhere in its own register."""
    pitch = [int(rng.integers(lo, hi + 1)) for _ in range(chords) for lo, hi in REGISTERS]
    start = np.repeat(np.arange(chords, dtype=float), 4)
    part = np.tile(np.arange(4), chords)
    return mm.Piece(pitch, start, start + 1.0, part)


def test_a_piece_carries_its_parts_or_none() -> None:
    plain = mm.Piece([60, 62], [0.0, 1.0], [1.0, 2.0])
    assert plain.part is None
    piece = mm.Piece([60, 62], [0.0, 1.0], [1.0, 2.0], [3, 1])
    assert piece.part is not None and piece.part.dtype == np.int64
    assert piece.part.tolist() == [3, 1]
    with pytest.raises(ValueError, match="one entry per note"):
        mm.Piece([60, 62], [0.0, 1.0], [1.0, 2.0], [3])
    stepped = mm.Piece.from_steps([60, 64, 67], np.array([2.0, 0.0, 1.0]), np.ones(3), [0, 1, 2])
    assert stepped.start.tolist() == [0.0, 0.0, 1.0]
    assert stepped.part is not None and stepped.part.tolist() == [0, 1, 2]
    assert mm.Piece.from_steps([60], np.ones(1), np.ones(1)).part is None
    seconds = mm.scale(stepped, 0.5)
    assert seconds.part is not None and seconds.part.tolist() == [0, 1, 2]
    assert seconds.start.tolist() == [0.0, 0.0, 2.0]
    first = controls.cut(stepped, 2)
    assert first.part is not None and first.part.tolist() == [0, 1]
    assert controls.cut(plain, 1).part is None


def test_excerpts_of_a_track_keep_their_parts() -> None:
    notes = {
        "pitch": np.array([60, 64, 67, 62, 65]),
        "step": np.array([0.5, 0.0, 0.0, 0.5, 0.0]),
        "duration": np.full(5, 0.5),
    }
    bare = controls.excerpt_piece(controls.Track("a", 0, notes), 1, 3, 0.5)
    assert bare.part is None
    track = controls.Track("a", 0, notes | {"part": np.array([0, 1, 2, 0, 1])})
    excerpt = controls.excerpt_piece(track, 1, 3, 0.5)
    assert excerpt.part is not None and excerpt.part.tolist() == [1, 2, 0]
    assert excerpt.pitch.tolist() == [64, 67, 62]
    assert excerpt.start.tolist() == [0.0, 0.0, 1.0]


def test_the_shuffled_control_keeps_each_parts_rhythm_and_scatters_the_pitches() -> None:
    piece = four_voices(np.random.default_rng(0), 32)
    control = mm.shuffled(piece, np.random.default_rng(1))
    assert control.part is not None and piece.part is not None
    # Each note's time stays with its part: the texture (who plays when) is the piece's.
    slots = sorted(zip(piece.start, piece.end, piece.part, strict=True))
    assert sorted(zip(control.start, control.end, control.part, strict=True)) == slots
    assert sorted(control.pitch) == sorted(piece.pitch)
    # The pitches land in any voice: the voices leave their registers.
    ranges = mm.part_ranges([piece], 0.0, 1.0)
    assert mm.outside_range(piece, ranges) == 0.0
    assert mm.outside_range(control, ranges) > 0.2
    assert mm.part_pitch_range(control) > mm.part_pitch_range(piece)
    assert (
        mm.shuffled(mm.Piece([60, 62], [0.0, 1.0], [1.0, 2.0]), np.random.default_rng(0)).part
        is None
    )


def test_part_ranges_are_quantiles_of_each_parts_pitches() -> None:
    bass = mm.Piece(np.arange(40, 51), np.arange(11.0), np.arange(11.0) + 1, np.zeros(11))
    soprano = (np.array([60, 70, 65]), np.array([3, 3, 3]))  # columns, as the training notes
    ranges = mm.part_ranges([bass, soprano, mm.Piece([99], [0.0], [1.0])], 0.1, 0.9)
    # Pitches 40..50: the 10% and 90% quantiles (linear) are 41 and 49; 60, 65, 70: 61 and 69.
    assert ranges == {0: (41.0, 49.0), 3: (61.0, 69.0)}
    assert mm.part_ranges([bass], 0.0, 1.0) == {0: (40.0, 50.0)}
    assert mm.part_ranges([mm.Piece([60], [0.0], [1.0])]) == {}
    with pytest.raises(ValueError, match="quantiles"):
        mm.part_ranges([bass], 0.9, 0.1)
    with pytest.raises(ValueError, match="same length"):
        mm.part_ranges([(np.array([60, 61]), np.array([0]))])


def test_outside_range_counts_notes_outside_their_parts_register() -> None:
    ranges = {0: (40.0, 50.0), 1: (55.0, 65.0)}
    piece = mm.Piece(
        pitch=[40, 50, 51, 56, 54, 60],
        start=[0, 0, 1, 1, 2, 2],
        end=[1, 1, 2, 2, 3, 3],
        part=[0, 0, 0, 1, 1, 2],  # 51 (part 0) and 54 (part 1) stray; part 2 was never seen
    )
    assert mm.outside_range(piece, ranges) == pytest.approx(3 / 6)
    assert mm.outside_range(piece, {}) == 1.0
    assert math.isnan(mm.outside_range(mm.Piece([60], [0.0], [1.0]), ranges))
    assert math.isnan(mm.outside_range(mm.Piece([], [], [], []), ranges))


def test_each_parts_own_range_and_the_parts_used() -> None:
    # Part 0 spans 48..52 (4 semitones), part 1 60..70 (10): mean 7, though the piece spans 22.
    piece = mm.Piece([48, 60, 52, 70], [0, 0, 1, 1], [1, 1, 2, 2], [0, 1, 0, 1])
    assert mm.part_pitch_range(piece) == pytest.approx(7.0)
    assert mm.pitch_range(piece) == 22.0
    assert mm.parts_used(piece) == 2.0
    plain = mm.Piece([48, 60], [0, 0], [1, 1])
    assert math.isnan(mm.part_pitch_range(plain))
    assert math.isnan(mm.parts_used(plain))
    assert mm.parts_used(mm.Piece([], [], [], [])) == 0.0
    assert mm.part_figures(piece) == {"part_pitch_range": 7.0, "parts_used": 2.0}
    figures = mm.part_figures(piece, {0: (48.0, 52.0), 1: (60.0, 65.0)})
    assert figures == {"part_pitch_range": 7.0, "parts_used": 2.0, "outside_range": 0.25}


def test_set_means_skip_pieces_without_parts_quietly() -> None:
    with_parts = mm.Piece([48, 60, 52, 70], [0, 0, 1, 1], [1, 1, 2, 2], [0, 1, 0, 1])
    plain = mm.Piece([48, 60], [0, 0], [1, 1])
    ranges = {0: (48.0, 52.0), 1: (60.0, 65.0)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "mean of empty slice" would fail here
        means = mm.mean_part_figures([with_parts, plain], ranges)
        assert means == {"part_pitch_range": 7.0, "parts_used": 2.0, "outside_range": 0.25}
        nothing = mm.mean_part_figures([plain, plain])
        assert set(nothing) == set(mm.PART_FIGURES)
        assert all(math.isnan(v) for v in nothing.values())
    # The per-piece figures of every set are untouched by parts (eval.json's columns stay).
    assert set(controls.piece_means([with_parts])) == set(controls.piece_means([plain]))


def test_every_part_figure_is_described() -> None:
    for name in (*mm.PART_FIGURES, "outside_range"):
        text = mm.DESCRIPTIONS[name]
        assert text[0].isupper() and text.endswith(".") and ". " not in text, name
    assert not set(mm.PART_FIGURES) & set(mm.PIECE_FIGURES)


def test_melodic_features_follow_each_voice_of_a_score() -> None:
    # a soprano and a bass, each moving by step, interleaved in time order: the merged stream
    # leaps two octaves at every note, the voices never more than two semitones
    soprano, bass = [72, 74, 76, 77], [48, 47, 45, 43]
    pitch = np.array([p for pair in zip(soprano, bass, strict=True) for p in pair])
    start = np.repeat(np.arange(4.0), 2)
    part = np.tile([0, 1], 4)
    voiced = mm.Piece(pitch, start, start + 1, part=part)
    merged = mm.Piece(pitch, start, start + 1)
    assert mm.average_pitch_interval(voiced) == pytest.approx((2 + 2 + 1 + 1 + 2 + 2) / 6)
    assert mm.average_pitch_interval(merged) > 20
    transitions = mm.pitch_class_transitions(voiced).reshape(12, 12)
    assert transitions[0, 2] > 0 and transitions[0, 0] == 0  # C -> D in the soprano, no C -> C
    assert transitions.sum() == pytest.approx(1.0)
    # the shuffled control scatters pitches over the voices: their steps grow
    shuffled = mm.shuffled(voiced, np.random.default_rng(0))
    assert mm.average_pitch_interval(shuffled) > 2 * mm.average_pitch_interval(voiced)
