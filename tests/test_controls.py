"""Reference sets and controls: the evaluation length, disjoint draws spread over files, and
figures that put real music above its shuffled notes and a copy of real music at real's level."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from pipelines import controls
from pipelines import music_metrics as mm


def track(file_id: str, number: int, pitch: np.ndarray, step: float = 0.5) -> controls.Track:
    n = len(pitch)
    notes = {"pitch": np.asarray(pitch), "step": np.full(n, step), "duration": np.full(n, step)}
    return controls.Track(file_id, number, notes)


def tune(rng: np.random.Generator, n: int) -> np.ndarray:
    """A melody that sounds like one: a motif in a major scale, repeated and moved up and down."""
    scale = np.array([0, 2, 4, 5, 7, 9, 11, 12])
    motif = rng.integers(0, len(scale), 8)
    offsets = rng.integers(0, 3, n // 8 + 1)
    degrees = np.concatenate([np.clip(motif + o, 0, 7) for o in offsets])[:n]
    return 60 + scale[degrees]


def test_the_evaluation_length_is_the_continuations_unless_the_tracks_are_too_short() -> None:
    assert controls.evaluation_length([300, 300], wanted=128, needed=4) == 128
    # 8 tracks of 70 notes hold 8 excerpts of 70 notes but no 64-note pair per track
    assert controls.evaluation_length([70] * 8, wanted=128, needed=8) == 70
    assert controls.evaluation_length([70] * 8, wanted=128, needed=16) == 35
    assert controls.evaluation_length([5] * 8, wanted=128, needed=16) == controls.MIN_EVAL_NOTES
    assert controls.evaluation_length([5], wanted=10, needed=16) == 10  # never above the wanted
    assert controls.excerpt_count([70, 35, 34], 35) == 3


def test_draws_are_disjoint_spread_over_files_and_seeded() -> None:
    rng = np.random.default_rng(0)
    tracks = [track(f"f{i // 4}", i % 4, rng.integers(50, 70, 80)) for i in range(40)]  # 10 files
    ref, real = controls.draw_pair(tracks, 40, 8, np.random.default_rng(3))
    assert len(ref) == len(real) == 8
    assert not set(ref) & set(real)
    files = [{tracks[i].file_id for i, _ in s} for s in (ref, real)]
    assert not files[0] & files[1]  # ten files: each set has its own
    assert len(files[0]) + len(files[1]) == 10  # every file serves before any serves twice
    for i, first in (*ref, *real):
        assert first >= 0 and first + 40 <= len(tracks[i])
    again = controls.draw_pair(tracks, 40, 8, np.random.default_rng(3))
    assert again == (ref, real)
    # Two files, one track each holding 6 excerpts: the sets share files, never an excerpt.
    few = [track("a", 0, np.arange(60)), track("b", 0, np.arange(60))]
    ref, real = controls.draw_pair(few, 10, 5, np.random.default_rng(1))
    assert len(ref) == len(real) == 5 and not set(ref) & set(real)
    starts = sorted(first for i, first in (*ref, *real) if i == 0)
    assert all(b - a >= 10 for a, b in itertools.pairwise(starts))  # no overlap


def test_an_excerpt_starts_at_zero_and_is_timed_in_beats() -> None:
    t = track("f", 0, np.arange(60, 80), step=0.25)
    piece = controls.excerpt_piece(t, 4, 8, seconds_per_beat=0.5)  # seconds at 120 bpm
    assert piece.pitch.tolist() == list(range(64, 72))
    assert piece.start[0] == 0 and piece.start[1] == pytest.approx(0.5)
    assert piece.duration.tolist() == pytest.approx([0.5] * 8)


def test_real_music_beats_its_shuffled_notes_and_a_copy_of_real_scores_like_real() -> None:
    rng = np.random.default_rng(11)
    tracks = [track(f"f{i // 2}", i % 2, tune(rng, 96)) for i in range(120)]
    settings = {"set_size": 16, "draws": 4, "seed": 2, "seconds_per_beat": 1.0,
                "kde_points": 64, "ngrams": [2, 4]}  # fmt: skip
    # "Generated" pieces that are other real tunes, and pieces of random pitches.
    like_real = [controls.excerpt_piece(track("g", 0, tune(rng, 64)), 0, 64, 1.0)
                 for _ in range(20)]  # fmt: skip
    noise = [mm.shuffled(p, rng) for p in like_real]
    judged = controls.judge(like_real, tracks, **settings).summary
    sets = judged["sets"]
    assert judged["eval_notes"] == 64 and judged["set_size"] == 16 and judged["draws"] == 4
    assert sets["real"]["overlap"]["mean"] > sets["shuffled"]["overlap"]["mean"]
    assert sets["real"]["longest_repeat"]["mean"] > 2 * sets["shuffled"]["longest_repeat"]["mean"]
    assert sets["model"]["overlap"]["mean"] > 0.9 * sets["real"]["overlap"]["mean"]
    assert controls.beats_shuffled(sets["model"]["overlap"], sets["shuffled"]["overlap"])
    noisy = controls.judge(noise, tracks, **settings).summary["sets"]
    assert not controls.beats_shuffled(noisy["model"]["overlap"], noisy["shuffled"]["overlap"])
    # The shuffle keeps each piece's pitches and rhythm: the pitch figures equal real's.
    for figure in ("pitch_range", "n_pitches_used", "scale_consistency"):
        assert sets["shuffled"][figure]["mean"] == pytest.approx(sets["real"][figure]["mean"])
    again = controls.judge(like_real, tracks, **settings).summary
    assert json.dumps(again, sort_keys=True) == json.dumps(judged, sort_keys=True)


def test_sets_shrink_to_what_there_is_and_too_little_is_one_clear_error() -> None:
    rng = np.random.default_rng(0)
    gen = [mm.Piece.from_steps(rng.integers(50, 70, 32), np.ones(32), np.ones(32))
           for _ in range(5)]  # fmt: skip
    tracks = [track(f"f{i}", 0, rng.integers(50, 70, 200)) for i in range(10)]
    judged = controls.judge(gen, tracks, set_size=32, draws=2, seed=0, seconds_per_beat=1.0,
                            kde_points=32, ngrams=[2]).summary  # fmt: skip
    assert judged["set_size"] == 5 and judged["eval_notes"] == 32
    with pytest.raises(ValueError, match="excerpts of 16 notes"):
        controls.judge(gen, [track("f", 0, np.arange(40))], set_size=32, draws=1,
                       seed=0, seconds_per_beat=1.0, kde_points=32, ngrams=[2])  # fmt: skip


def test_beating_the_shuffled_control_needs_more_than_the_spread() -> None:
    assert controls.beats_shuffled({"mean": 0.9, "std": 0.02}, {"mean": 0.85, "std": 0.03})
    assert not controls.beats_shuffled({"mean": 0.9, "std": 0.06}, {"mean": 0.85, "std": 0.03})
    assert not controls.beats_shuffled({"mean": 0.8, "std": 0.0}, {"mean": 0.85, "std": 0.0})
    assert controls.stats([1.0, 3.0]) == {"mean": 2.0, "std": pytest.approx(2**0.5)}
    assert controls.stats([4.0]) == {"mean": 4.0, "std": 0.0}


def test_sets_carry_part_figures_and_the_shuffle_takes_voices_out_of_their_registers() -> None:
    """Four voices in separate registers: real excerpts keep to the real ranges, the shuffled
    control (pitches permuted across the voices) does not; every set has the part figures, and
    outside_range only where the ranges are given."""
    registers = [(40, 52), (53, 62), (63, 71), (72, 84)]
    rng = np.random.default_rng(5)

    def chorale(file_id: str, chords: int) -> controls.Track:
        pitch = [int(rng.integers(lo, hi + 1)) for _ in range(chords) for lo, hi in registers]
        step = np.tile([1.0, 0.0, 0.0, 0.0], chords)
        notes = {"pitch": np.array(pitch), "step": step, "duration": np.ones(4 * chords),
                 "part": np.tile(np.arange(4), chords)}  # fmt: skip
        return controls.Track(file_id, -1, notes, "bach")

    tracks = [chorale(f"f{i}", 40) for i in range(20)]
    ranges = mm.part_ranges((t.notes["pitch"], t.notes["part"]) for t in tracks)
    generated = [controls.excerpt_piece(chorale("g", 16), 0, 64, 1.0) for _ in range(8)]
    settings = {"set_size": 8, "draws": 3, "seed": 0, "seconds_per_beat": 1.0,
                "kde_points": 32, "ngrams": [2]}  # fmt: skip
    sets = controls.judge(generated, tracks, part_ranges=ranges, **settings).summary["sets"]
    for name in (*controls.SETS, "reference"):
        figures = sets[name]
        assert 0 <= figures["outside_range"]["mean"] <= 1, name
        assert figures["parts_used"]["mean"] == 4, name
        assert figures["part_pitch_range"]["mean"] > 0, name
        assert figures["muspy_polyphony"]["mean"] == pytest.approx(4, abs=0.5), name
    assert sets["real"]["outside_range"]["mean"] < 0.1
    assert sets["shuffled"]["outside_range"]["mean"] > 0.4
    assert sets["model"]["outside_range"]["mean"] < 0.1
    plain = controls.judge(generated, tracks, **settings).summary["sets"]
    assert "outside_range" not in plain["model"] and plain["model"]["parts_used"]["mean"] == 4
    # Pieces whose notes carry no part: the part figures are undefined, not 0.
    bare = [mm.Piece(p.pitch, p.start, p.end) for p in generated]
    unparted = controls.judge(bare, tracks, part_ranges=ranges, **settings).summary["sets"]
    assert np.isnan(unparted["model"]["outside_range"]["mean"])
    assert np.isnan(unparted["model"]["parts_used"]["mean"])
