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
    assert metrics["empty_beat_rate"] == 0.0
    # Two measures of four quarter notes: identical onset patterns.
    assert metrics["groove_consistency"] == 1.0


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
    # Sounding for 4 beats: 3 notes for 2 of them, 1 note for the other 2.
    assert mm.polyphony(piece) == pytest.approx((3 * 2 + 1 * 2) / 4)
    assert mm.polyphony_rate(piece) == pytest.approx(0.5)
    assert mm.empty_beat_rate(piece) == pytest.approx(2 / 6)
    assert mm.average_inter_onset_interval(piece) == pytest.approx(4.0)


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
