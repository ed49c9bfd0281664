"""The music metrics on hand-made pieces whose values can be worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines import music_metrics as mm

C_MAJOR = [60, 62, 64, 65, 67, 69, 71, 72]


def phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def scale_piece(pitches: list[int]) -> mm.Piece:
    """One note per beat, each a beat long."""
    n = len(pitches)
    return mm.Piece.from_steps(pitches, np.ones(n), np.ones(n))


def test_c_major_scale_metrics() -> None:
    metrics = mm.muspy_metrics(scale_piece(C_MAJOR))
    assert metrics["scale_consistency"] == 1.0
    assert metrics["pitch_range"] == 12
    assert metrics["n_pitches_used"] == 8
    assert metrics["n_pitch_classes_used"] == 7
    # 8 distinct pitches, equally often: log2(8) bits.
    assert metrics["pitch_entropy"] == pytest.approx(3.0)
    # C twice, six others once: -(1/4 log2 1/4 + 6/8 log2 1/8) = 0.5 + 2.25.
    assert metrics["pitch_class_entropy"] == pytest.approx(2.75)
    assert metrics["polyphony"] == pytest.approx(1.0)
    assert metrics["polyphony_rate"] == 0.0
    # MusPy: 8 beats end at step 192, so 192 // 24 + 1 = 9 beats; note k fills beats k and k + 1.
    assert metrics["empty_beat_rate"] == 0.0
    # MusPy's groove formula with 96-step windows: the piece ends at step 192, a window line, so
    # there are 192 // 96 + 1 = 3 windows, onsets {0, 24, 48, 72}, the same, and none. Hamming
    # distances 0 and 4 over 2 * 96 positions: 1 - 4 / 192.
    assert metrics["onset_pattern_consistency"] == pytest.approx(1 - 4 / 192)


def test_chromatic_scale_is_not_in_one_scale() -> None:
    piece = scale_piece(list(range(60, 72)))
    assert mm.scale_consistency(piece) == pytest.approx(7 / 12)
    assert mm.pitch_class_entropy(piece) == pytest.approx(math.log2(12))


def test_polyphony_and_empty_beats_of_chords_and_rests() -> None:
    # A C-major triad for 2 beats, 2 silent beats, then one note for 2 beats.
    piece = mm.Piece(
        pitch=[60, 64, 67, 72],
        start=[0.0, 0.0, 0.0, 4.0],
        end=[2.0, 2.0, 2.0, 6.0],
    )
    # MusPy's piano roll at 24 steps a beat runs to the last end, step 144: 3 pitches on at
    # steps 0-47, none at 48-95, 1 at 96-143.
    # polyphony: pitches over steps with one or more on = (48 * 3 + 48 * 1) / 96.
    assert mm.polyphony(piece) == pytest.approx(2.0)
    # polyphony_rate: steps with MORE than 2 pitches over ALL 144 steps = 48 / 144.
    assert mm.polyphony_rate(piece) == pytest.approx(1 / 3)
    assert mm.polyphony_rate(piece, threshold=0) == pytest.approx(96 / 144)
    # empty_beat_rate: 144 // 24 + 1 = 7 beats; the triad fills beats 0..2 (its end, step 48,
    # falls in beat 2), the last note beats 4..6 (its end, step 144, in beat 6): beat 3 is empty.
    assert mm.empty_beat_rate(piece) == pytest.approx(1 / 7)
    assert mm.average_inter_onset_interval(piece) == pytest.approx(4.0)


def test_polyphony_counts_pitches_on_the_muspy_grid() -> None:
    # Two beats of C and E; G sounds for one step (1/24 beat) in the middle.
    piece = mm.Piece(pitch=[60, 64, 67], start=[0.0, 0.0, 1.0], end=[2.0, 2.0, 1 + 1 / 24])
    # 48 steps: 47 with 2 pitches on, 1 with 3.
    assert mm.polyphony_rate(piece) == pytest.approx(1 / 48)
    assert mm.polyphony(piece) == pytest.approx((47 * 2 + 3) / 48)
    # MusPy's roll is binary per pitch: two voices in unison on C count as one pitch.
    unison = mm.Piece(pitch=[60, 60, 64], start=[0.0, 0.0, 0.0], end=[2.0, 2.0, 2.0])
    assert mm.polyphony(unison) == pytest.approx(2.0)
    assert mm.polyphony_rate(unison) == 0.0


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        # A beat of C, a beat's rest, a beat of D. MusPy: ends at step 72, 72 // 24 + 1 = 4 beats;
        # C ends on the line at step 24, so it fills beats 0 and 1; D fills beats 2 and 3: none
        # is empty (measuring sounding time instead would call beat 1 empty: 1/3).
        ([0.0, 2.0], [1.0, 3.0], 0.0),
        # Two beats' rest instead: 96 // 24 + 1 = 5 beats; C fills 0-1, D fills 3-4; beat 2 empty.
        ([0.0, 3.0], [1.0, 4.0], 1 / 5),
        # Notes ending inside their beat: C in beat 0, D (step 60 to 66) in beat 2; 66 // 24 + 1
        # = 3 beats, beat 1 empty.
        ([0.0, 2.5], [0.5, 2.75], 1 / 3),
    ],
)
def test_empty_beat_rate_counts_the_beat_a_note_ends_in(
    start: list[float], end: list[float], expected: float
) -> None:
    assert mm.empty_beat_rate(mm.Piece([60, 62], start, end)) == pytest.approx(expected)


def test_onset_pattern_consistency_is_muspys_groove_formula() -> None:
    # Four quarter notes, then two notes at beats 4 and 6, the last ending at 7.5 (step 180):
    # 180 // 96 + 1 = 2 windows, onsets {0, 24, 48, 72} and {0, 48}: Hamming distance 2 of 96.
    piece = mm.Piece([60] * 6, [0.0, 1.0, 2.0, 3.0, 4.0, 6.0], [1.0, 2.0, 3.0, 4.0, 5.5, 7.5])
    assert mm.onset_pattern_consistency(piece) == pytest.approx(1 - 2 / 96)
    # In 3/4 the same onsets make windows of 72 steps: 180 // 72 + 1 = 3 windows, onsets
    # {0, 24, 48}, {0, 24} (beats 3, 4) and {0} (beat 6): distances 1 and 1 over 2 * 72.
    assert mm.onset_pattern_consistency(piece, beats_per_measure=3) == pytest.approx(1 - 2 / 144)
    # One window only (ends before step 96): undefined, as in MusPy.
    assert math.isnan(mm.onset_pattern_consistency(scale_piece([60, 62, 64])))


def test_empty_piece_follows_muspy() -> None:
    empty = mm.Piece([], [], [])
    assert mm.pitch_range(empty) == 0.0  # MusPy returns 0 when there is no note
    assert mm.n_pitches_used(empty) == 0.0
    for name in ("polyphony", "polyphony_rate", "empty_beat_rate", "onset_pattern_consistency"):
        assert math.isnan(mm.MUSPY_METRICS[name](empty))
    for name in ("pitch_entropy", "pitch_class_entropy", "scale_consistency"):
        assert math.isnan(mm.MUSPY_METRICS[name](empty))


def test_time_grid_starts_at_zero() -> None:
    # A rounding error below half a step still lands on step 0; a note before 0 has no step.
    assert mm.polyphony(mm.Piece([60], [-1e-9], [1.0])) == 1.0
    with pytest.raises(ValueError, match="time 0"):
        mm.polyphony(mm.Piece([60], [-1.0], [1.0]))


def test_entropy_of_one_pitch_is_plus_zero() -> None:
    value = mm.pitch_entropy(scale_piece([60, 60, 60]))
    assert value == 0.0
    assert math.copysign(1.0, value) == 1.0  # not -0.0, which a report prints as "-0"


def brute_force_longest_repeat(pitch: list[int]) -> int:
    best = 0
    n = len(pitch)
    for length in range(1, n // 2 + 1):
        for i in range(n - length + 1):
            for j in range(i + length, n - length + 1):
                if pitch[i : i + length] == pitch[j : j + length]:
                    best = length
    return best


@pytest.mark.parametrize(
    ("pitches", "expected"),
    [
        ([60, 62, 64, 60, 62, 64], 3),  # the whole figure twice
        ([60, 62, 64, 65, 60, 62, 64, 67], 3),
        ([60, 60, 60, 60, 60], 2),  # 60 60 at 0 and 2; three 60s twice would need six notes
        ([60, 62, 60, 62, 60], 2),  # 60 62 60 at 0 and 2 overlap
        ([60, 62, 64, 65, 67, 69, 71, 72], 0),  # nothing repeats
        ([60, 62, 64, 62, 64, 66], 2),  # 62 64 exactly; the transposed 60 62 64 / 62 64 66 not
        ([60], 0),
        ([], 0),
    ],
)
def test_longest_repeat(pitches: list[int], expected: int) -> None:
    n = len(pitches)
    piece = mm.Piece(pitches, np.arange(n, dtype=float), np.arange(n, dtype=float) + 1)
    assert mm.longest_repeat(piece) == expected


def test_longest_repeat_matches_brute_force() -> None:
    rng = np.random.default_rng(5)
    for _ in range(200):
        pitches = rng.integers(60, 60 + int(rng.integers(1, 4)), int(rng.integers(0, 30)))
        piece = scale_piece(pitches.tolist())
        assert mm.longest_repeat(piece) == brute_force_longest_repeat(pitches.tolist())


def test_shuffled_keeps_rhythm_and_pitches_and_moves_the_melody() -> None:
    rng = np.random.default_rng(0)
    pitches = list(rng.integers(55, 80, 64))
    piece = mm.Piece.from_steps(pitches, rng.choice([0.5, 1.0, 1.5], 64), np.full(64, 0.5))
    control = mm.shuffled(piece, np.random.default_rng(1))
    assert np.array_equal(control.start, piece.start)
    assert np.array_equal(control.end, piece.end)
    assert sorted(control.pitch) == sorted(piece.pitch)
    assert not np.array_equal(control.pitch, piece.pitch)
    again = mm.shuffled(piece, np.random.default_rng(1))
    assert np.array_equal(again.pitch, control.pitch)  # the generator alone decides
    # A chord's notes stay ordered by pitch, as a Piece's notes are.
    chords = mm.Piece([60, 64, 67, 62, 65], [0, 0, 0, 1, 1], [1, 1, 1, 2, 2])
    for seed in range(5):
        mixed = mm.shuffled(chords, np.random.default_rng(seed))
        assert list(mixed.start) == [0, 0, 0, 1, 1]
        assert list(mixed.pitch[:3]) == sorted(mixed.pitch[:3])
        assert list(mixed.pitch[3:]) == sorted(mixed.pitch[3:])


def test_every_figure_is_described() -> None:
    names = set(mm.MUSPY_METRICS) | set(mm.PIECE_FIGURES) | set(mm.FEATURES)
    assert names <= set(mm.DESCRIPTIONS)
    for name in names:
        text = mm.DESCRIPTIONS[name]
        assert text[0].isupper() and text.endswith(".") and ". " not in text, name
    piece = scale_piece(C_MAJOR)
    figures = {name: figure(piece) for name, figure in mm.PIECE_FIGURES.items()}
    assert figures == {
        "longest_repeat": 0.0,
        "pitch_range": 12.0,
        "n_pitches_used": 8.0,
        "scale_consistency": 1.0,
    }


def test_note_length_histogram_classes() -> None:
    piece = mm.Piece(pitch=[60] * 4, start=[0, 1, 2, 3], end=[1, 1.5, 2 + 1 / 3, 7])
    hist = mm.note_length_histogram(piece)
    classes = list(mm.NOTE_LENGTH_CLASSES)
    assert hist.sum() == pytest.approx(1.0)
    for length in (1.0, 0.5, 1 / 3, 4.0):
        assert hist[classes.index(length)] == pytest.approx(0.25)


def test_overlap_and_kl_of_two_gaussians_match_closed_form() -> None:
    rng = np.random.default_rng(7)
    a = rng.normal(0.0, 1.0, 4000)
    b = rng.normal(1.0, 1.0, 4000)
    result = mm.compare_samples(a, b, points=256)
    # N(0,1) vs N(1,1): the densities cross at 0.5, overlap = 2 * Phi(-0.5); KL = 1/2.
    assert result.overlap_area == pytest.approx(2 * phi(-0.5), abs=0.04)
    assert result.kl_divergence == pytest.approx(0.5, abs=0.08)
    # Both densities live on one grid and integrate to 1 there.
    assert np.trapezoid(result.p, result.grid) == pytest.approx(1.0)
    assert np.trapezoid(result.q, result.grid) == pytest.approx(1.0)
    same = mm.compare_samples(a, rng.normal(0.0, 1.0, 4000))
    assert same.overlap_area > 0.9
    assert same.kl_divergence < 0.05
    far = mm.compare_samples(a, rng.normal(8.0, 1.0, 4000))
    assert far.overlap_area < 0.01


def test_compare_identical_point_masses() -> None:
    result = mm.compare_samples(np.zeros(5), np.zeros(7))
    assert result.overlap_area == 1.0
    assert result.kl_divergence == 0.0


def test_set_distances() -> None:
    x = np.array([[0.0], [3.0], [4.0]])
    assert sorted(mm.intra_set_distances(x)) == [1.0, 3.0, 4.0]
    y = np.array([[0.0, 0.0]])
    x2 = np.array([[3.0, 4.0], [0.0, 1.0]])
    assert list(mm.inter_set_distances(x2, y)) == [5.0, 1.0]


def test_yang_lerch_prefers_a_set_like_the_real_one() -> None:
    rng = np.random.default_rng(0)

    def random_pieces(low: int, high: int, n: int) -> list[mm.Piece]:
        return [scale_piece(list(rng.integers(low, high, 64))) for _ in range(n)]

    real = mm.feature_table(random_pieces(55, 80, 20))
    like = mm.feature_table(random_pieces(55, 80, 20))
    unlike = mm.feature_table(random_pieces(30, 100, 20))
    good = mm.yang_lerch(like, real)
    bad = mm.yang_lerch(unlike, real)
    assert set(good) == set(mm.FEATURES)
    assert good["pitch_range"].summary["overlap_area"] > bad["pitch_range"].summary["overlap_area"]
    mean_good = np.mean([f.summary["overlap_area"] for f in good.values()])
    mean_bad = np.mean([f.summary["overlap_area"] for f in bad.values()])
    assert mean_good > 0.6 > mean_bad


def test_distinct_ngram_ratio() -> None:
    loop = np.array([60, 62] * 8)  # 16 notes, 15 bigrams, 2 distinct
    scale = np.array(C_MAJOR)  # 7 bigrams, all distinct, one of them (60 62) in the loop too
    per_piece, pooled = mm.distinct_ngram_ratio([loop, scale], 2)
    assert per_piece == pytest.approx((2 / 15 + 1.0) / 2)
    assert pooled == pytest.approx((2 + 6) / (15 + 7))


def brute_force_longest_run(query: list[int], corpus: list[list[int]]) -> int:
    best = 0
    for seq in corpus:
        for i in range(len(query)):
            for j in range(len(seq)):
                n = 0
                while i + n < len(query) and j + n < len(seq) and query[i + n] == seq[j + n]:
                    n += 1
                best = max(best, n)
    return best


@pytest.mark.parametrize("anchor", [None, 4, 8])
def test_copy_detector_finds_a_planted_run(anchor: int | None) -> None:
    rng = np.random.default_rng(3)
    corpus = [rng.integers(48, 84, 400) for _ in range(50)]
    generated = rng.integers(48, 84, 128)
    generated[30:53] = corpus[17][200:223]  # a planted copy of 23 notes
    control = rng.integers(48, 84, 128)
    detector = mm.CopyDetector([generated, control], anchor=anchor)
    for i, track in enumerate(corpus):
        detector.feed(track, source=i)
    planted, chance = detector.runs()
    assert planted == mm.CopiedRun(length=23, source=17, source_end=223)
    assert chance.length < 8
    if anchor is None:  # exact at every length without the k-gram filter
        expected = brute_force_longest_run(control.tolist(), [t.tolist() for t in corpus])
        assert chance.length == expected


def test_copy_detector_matches_brute_force_on_small_alphabets() -> None:
    rng = np.random.default_rng(11)
    for _ in range(20):
        queries = [rng.integers(0, 3, int(rng.integers(1, 15))) for _ in range(3)]
        corpus = [rng.integers(0, 3, int(rng.integers(0, 20))) for _ in range(4)]
        detector = mm.CopyDetector(queries)
        for i, track in enumerate(corpus):
            detector.feed(track, source=i)
        found = [run.length for run in detector.runs()]
        expected = [
            brute_force_longest_run(q.tolist(), [t.tolist() for t in corpus]) for q in queries
        ]
        assert found == expected


def test_copy_up_to_transposition_counts_notes() -> None:
    source = np.array([60, 62, 64, 65, 67, 65, 64, 62, 60, 59, 60])
    transposed = np.concatenate([[30, 90, 31], source + 5, [100, 20]])
    detector = mm.CopyDetector([mm.intervals(transposed)], anchor=4, bits=8)
    detector.feed(mm.intervals(source), source=0)
    (run,) = detector.runs()
    assert run.length + 1 == len(source)  # n intervals are n + 1 notes
    plain = mm.CopyDetector([transposed])
    plain.feed(source, source=0)
    assert plain.runs()[0].length < 4  # only chance agreement without transposition
