"""Metrics of symbolic music, pure functions of note arrays: MusPy's per-piece metrics on MusPy's
own definitions, per-piece figures that tell music from a shuffled control (longest internal
repeat, range, distinct pitches, scale fit) and the control itself, Yang & Lerch's set comparison
(intra/inter-set distances, KDE on one grid, overlap area, KL divergence), distinct n-gram ratios,
and the longest run of notes a piece copies from a corpus. DESCRIPTIONS says what each measures.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

PITCH_CLASSES = 12
MAJOR = (0, 2, 4, 5, 7, 9, 11)
NATURAL_MINOR = (0, 2, 3, 5, 7, 8, 10)
# Yang & Lerch's 12 note-length classes, in beats (quarter notes): whole, half, quarter, 8th, 16th,
# dotted half, dotted quarter, dotted 8th, dotted 16th, half/quarter/8th-note triplets.
NOTE_LENGTH_CLASSES = (4.0, 2.0, 1.0, 0.5, 0.25, 3.0, 1.5, 0.75, 0.375, 4 / 3, 2 / 3, 1 / 3)


@dataclass(frozen=True)
class Piece:
    """The notes of one piece (or excerpt), ordered by start then pitch; times in beats.

    `part` is each note's index in the shards' part vocabulary (the manifest's "parts"), or
    None where the notes carry no part (a track-mode piece, a MIDI file read as one line).
    """

    pitch: np.ndarray
    start: np.ndarray
    end: np.ndarray
    part: np.ndarray | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "pitch", np.asarray(self.pitch, dtype=np.int64))
        object.__setattr__(self, "start", np.asarray(self.start, dtype=np.float64))
        object.__setattr__(self, "end", np.asarray(self.end, dtype=np.float64))
        if not (len(self.pitch) == len(self.start) == len(self.end)):
            msg = "pitch, start and end must have the same length"
            raise ValueError(msg)
        if self.part is not None:
            object.__setattr__(self, "part", np.asarray(self.part, dtype=np.int64))
            if len(self.part) != len(self.pitch):
                msg = "part must have one entry per note"
                raise ValueError(msg)

    @classmethod
    def from_steps(
        cls,
        pitch: Sequence[int] | np.ndarray,
        step: np.ndarray,
        duration: np.ndarray,
        part: Sequence[int] | np.ndarray | None = None,
    ) -> Piece:
        """From the shards' representation: step = onset minus the previous onset."""
        start = np.cumsum(np.asarray(step, dtype=np.float64))
        if len(start):
            start -= start[0]  # the excerpt starts at its first note, whatever came before
        end = start + np.asarray(duration, dtype=np.float64)
        return cls(np.asarray(pitch), start, end, None if part is None else np.asarray(part))

    def __len__(self) -> int:
        return len(self.pitch)

    @property
    def duration(self) -> np.ndarray:
        return np.maximum(self.end - self.start, 0.0)


def scale(piece: Piece, seconds_per_beat: float) -> Piece:
    """A piece timed in seconds, re-timed in beats."""
    spb = seconds_per_beat
    return Piece(piece.pitch, piece.start / spb, piece.end / spb, piece.part)


def first_notes(piece: Piece, n: int) -> Piece:
    """The first `n` notes of a piece, with their parts."""
    part = None if piece.part is None else piece.part[:n]
    return Piece(piece.pitch[:n], piece.start[:n], piece.end[:n], part)


# --- MusPy's per-piece metrics -----------------------------------------------------------------
# As MusPy (salu133445/muspy, muspy/metrics/metrics.py) computes them on a Music of one
# non-drum track whose time 0 is the piece's time 0: times become integer steps of
# `resolution` per beat, rounded as MusPy's `adjust_resolution` rounds them (Python's round,
# half to even; a note's end is rounded, not its duration), and the piece lasts until the last
# note's end (MusPy's `get_end_time`). The time-based ones use MusPy's default resolution, 24.

RESOLUTION = 24  # time steps per beat: muspy.DEFAULT_RESOLUTION


def _steps(piece: Piece, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Each note's start and end in whole time steps (an end never before its start)."""
    start = np.rint(piece.start * resolution).astype(np.int64)
    if len(start) and start.min() < 0:  # MusPy's time steps count from 0
        msg = "a piece's notes must start at time 0 or later to be put on MusPy's time grid"
        raise ValueError(msg)
    end = np.maximum(np.rint(piece.end * resolution).astype(np.int64), start)
    return start, end


def _piano_roll(piece: Piece, resolution: int) -> np.ndarray:
    """MusPy's binary piano roll, [time steps, distinct pitches]: one row per step from 0 to the
    last note's end; a pitch is on when any note of that pitch sounds (unisons count once)."""
    start, end = _steps(piece, resolution)
    length = int(end.max()) if len(piece) else 0
    pitches, column = np.unique(piece.pitch, return_inverse=True)
    change = np.zeros((length + 1, len(pitches)), dtype=np.int64)
    np.add.at(change, (start, column), 1)
    np.add.at(change, (end, column), -1)
    return np.cumsum(change, axis=0)[:length] > 0


def pitch_range(piece: Piece) -> float:
    """The highest pitch minus the lowest, in semitones (MusPy: 0 for a piece without notes)."""
    return float(piece.pitch.max() - piece.pitch.min()) if len(piece) else 0.0


def n_pitches_used(piece: Piece) -> float:
    return float(len(np.unique(piece.pitch)))


def n_pitch_classes_used(piece: Piece) -> float:
    return float(len(np.unique(piece.pitch % PITCH_CLASSES)))


def _entropy(counts: np.ndarray) -> float:
    """Shannon entropy in bits of a histogram."""
    total = counts.sum()
    if total == 0:
        return math.nan
    p = counts[counts > 0] / total
    # + 0.0 turns the -0.0 of a single pitch into 0.0, which a report would print as "-0".
    return float(-(p * np.log2(p)).sum()) + 0.0


def pitch_entropy(piece: Piece) -> float:
    return _entropy(np.bincount(piece.pitch, minlength=128))


def pitch_class_entropy(piece: Piece) -> float:
    return _entropy(np.bincount(piece.pitch % PITCH_CLASSES, minlength=PITCH_CLASSES))


def scale_consistency(piece: Piece) -> float:
    """The largest share of notes that fall in one major or natural-minor scale (MusPy)."""
    if not len(piece):
        return math.nan
    counts = np.bincount(piece.pitch % PITCH_CLASSES, minlength=PITCH_CLASSES)
    best = 0
    for mode in (MAJOR, NATURAL_MINOR):
        for root in range(PITCH_CLASSES):
            best = max(best, int(counts[[(root + d) % PITCH_CLASSES for d in mode]].sum()))
    return best / len(piece)


def polyphony(piece: Piece, resolution: int = RESOLUTION) -> float:
    """The mean number of distinct pitches on, over the time steps where at least one is on
    (MusPy's `polyphony`)."""
    on = _piano_roll(piece, resolution).sum(axis=1)
    sounding = np.count_nonzero(on)
    return float(on.sum() / sounding) if sounding else math.nan


def polyphony_rate(piece: Piece, threshold: int = 2, resolution: int = RESOLUTION) -> float:
    """The share of ALL time steps, from 0 to the last note's end, where more than `threshold`
    distinct pitches are on (MusPy's `polyphony_rate`: with the default 2, three or more)."""
    on = _piano_roll(piece, resolution).sum(axis=1)
    return float(np.count_nonzero(on > threshold) / len(on)) if len(on) else math.nan


def empty_beat_rate(piece: Piece, resolution: int = RESOLUTION) -> float:
    """The share of beats in which no note is played (MusPy's `empty_beat_rate`).

    Beats are `resolution` steps counted from time 0, and there are (last end // resolution) + 1
    of them; a note fills every beat from its onset's to the one its end falls in, both
    included, so a note ending exactly on a beat line fills the beat after it.
    """
    start, end = _steps(piece, resolution)
    length = int(end.max()) if len(piece) else 0
    if length < 1:
        return math.nan
    n_beats = length // resolution + 1
    change = np.zeros(n_beats + 1, dtype=np.int64)
    np.add.at(change, start // resolution, 1)
    np.add.at(change, end // resolution + 1, -1)
    filled = np.count_nonzero(np.cumsum(change)[:n_beats] > 0)
    return 1.0 - filled / n_beats


def onset_pattern_consistency(
    piece: Piece, beats_per_measure: int = 4, resolution: int = RESOLUTION
) -> float:
    """MusPy's groove-consistency formula on windows of one measure's length counted from the
    piece's time 0: 1 minus the mean Hamming distance between the onset patterns of neighbouring
    windows, per step (NaN with fewer than two windows).

    Not called groove consistency: MusPy means real bars, and an excerpt that starts at any note
    has none, so its windows straddle the bar lines wherever the excerpt happened to begin.
    Windows are `beats_per_measure * resolution` steps (MusPy's `measure_resolution`); there are
    (last end // that) + 1 of them, so a piece ending on a window line gets an empty last one.
    """
    window = beats_per_measure * resolution
    if window < 1:
        msg = "a measure must be at least one time step long"
        raise ValueError(msg)
    start, end = _steps(piece, resolution)
    length = int(end.max()) if len(piece) else 0
    n_windows = length // window + 1
    if n_windows < 2:
        return math.nan
    pattern = np.zeros((n_windows, window), dtype=bool)
    pattern[start // window, start % window] = True
    distance = np.count_nonzero(pattern[1:] != pattern[:-1])
    return 1.0 - distance / (window * (n_windows - 1))


MUSPY_METRICS = {
    "pitch_range": pitch_range,
    "n_pitches_used": n_pitches_used,
    "n_pitch_classes_used": n_pitch_classes_used,
    "polyphony": polyphony,
    "polyphony_rate": polyphony_rate,
    "scale_consistency": scale_consistency,
    "pitch_entropy": pitch_entropy,
    "pitch_class_entropy": pitch_class_entropy,
    "empty_beat_rate": empty_beat_rate,
    "onset_pattern_consistency": onset_pattern_consistency,
}


def muspy_metrics(piece: Piece) -> dict[str, float]:
    return {name: metric(piece) for name, metric in MUSPY_METRICS.items()}


def mean_metrics(pieces: Sequence[Piece]) -> dict[str, float]:
    """Each metric's mean over the pieces where it is defined (nan where it is nowhere)."""
    table = np.array([list(muspy_metrics(p).values()) for p in pieces], dtype=np.float64)
    out: dict[str, float] = {}
    for i, name in enumerate(MUSPY_METRICS):
        column = table[:, i] if len(table) else np.array([])
        column = column[np.isfinite(column)]
        out[name] = float(column.mean()) if len(column) else math.nan
    return out


# --- Figures that tell music from music-shaped noise --------------------------------------------


def longest_repeat(piece: Piece) -> float:
    """The length in notes of the longest run of consecutive pitches (exact, not transposed)
    that occurs at least twice in the piece with the two occurrences not overlapping.

    Two occurrences `d` notes apart agree where pitch[i] == pitch[i + d] for a run of positions;
    they do not overlap when the run is at most `d` long, so each shift gives min(run, d).
    """
    pitch = piece.pitch
    n = len(pitch)
    if n < 2:
        return 0.0
    shift = np.arange(1, n)[:, None]
    later = np.arange(n)[None, :] + shift  # [shift, position]: the note `shift` notes later
    same = (later < n) & (pitch[None, :] == pitch[np.minimum(later, n - 1)])
    padded = np.zeros((n - 1, n + 2), dtype=np.int8)
    padded[:, 1:-1] = same
    edges = np.diff(padded, axis=1)
    rows, run_start = np.nonzero(edges == 1)  # row-major order pairs each start with its end
    _, run_end = np.nonzero(edges == -1)
    if not len(rows):
        return 0.0
    return float(np.minimum(run_end - run_start, rows + 1).max())


def shuffled(piece: Piece, rng: np.random.Generator) -> Piece:
    """The shuffled control: the piece's pitches randomly permuted among its notes, each note's
    start and end kept (its rhythm is the piece's; its melody is noise).

    A note's part stays with its start and end, not with its pitch: the control keeps the
    piece's texture (which voice plays when) and scatters the pitches over the voices, so a
    voice's register is noise too, as its melody is.
    """
    pitch = rng.permutation(piece.pitch)
    order = np.lexsort((pitch, piece.start))  # keeps the order by start, then pitch
    part = None if piece.part is None else piece.part[order]
    return Piece(pitch[order], piece.start[order], piece.end[order], part)


PIECE_FIGURES = {
    "longest_repeat": longest_repeat,
    "pitch_range": pitch_range,
    "n_pitches_used": n_pitches_used,
    "scale_consistency": scale_consistency,
}


# --- Parts: voices that keep to their register ---------------------------------------------------
# Figures of a piece whose notes carry their part (score mode). Each is nan for a piece without
# parts, so a set of track-mode pieces averages to nan rather than to a made-up 0.

PartRanges = dict[int, tuple[float, float]]


def _pitch_part_pairs(
    pieces: Iterable[Piece | tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """All notes' pitches and parts, from pieces (those without parts left out) or from
    (pitch, part) column pairs such as the training split's notes."""
    pitches: list[np.ndarray] = [np.empty(0, dtype=np.int64)]
    parts: list[np.ndarray] = [np.empty(0, dtype=np.int64)]
    for item in pieces:
        if isinstance(item, Piece):
            if item.part is None:
                continue
            pitch, part = item.pitch, item.part
        else:
            pitch, part = (np.asarray(a, dtype=np.int64) for a in item)
            if len(pitch) != len(part):
                msg = "pitch and part must have the same length"
                raise ValueError(msg)
        pitches.append(pitch)
        parts.append(part)
    return np.concatenate(pitches), np.concatenate(parts)


def part_ranges(
    pieces: Iterable[Piece | tuple[np.ndarray, np.ndarray]],
    low: float = 0.01,
    high: float = 0.99,
) -> PartRanges:
    """Each part's real register: the `low` and `high` quantiles of its pitches over a set of
    real pieces (the training notes), so that a stray note or two of the data does not widen it.
    """
    if not 0.0 <= low <= high <= 1.0:
        msg = f"the range's quantiles must satisfy 0 <= low <= high <= 1, not {low} and {high}"
        raise ValueError(msg)
    pitch, part = _pitch_part_pairs(pieces)
    out: PartRanges = {}
    for index in np.unique(part):
        own = pitch[part == index]
        lo, hi = np.quantile(own, [low, high])
        out[int(index)] = (float(lo), float(hi))
    return out


def outside_range(piece: Piece, ranges: PartRanges) -> float:
    """The share of the piece's notes whose pitch lies outside its part's real range (a note of
    a part the ranges never saw counts as outside); nan without notes or without parts."""
    if piece.part is None or not len(piece):
        return math.nan
    lo = np.full(len(piece), np.inf)
    hi = np.full(len(piece), -np.inf)  # an unknown part: every pitch is outside
    for index, (a, b) in ranges.items():
        mine = piece.part == index
        lo[mine], hi[mine] = a, b
    outside = (piece.pitch < lo) | (piece.pitch > hi)
    return float(np.count_nonzero(outside) / len(piece))


def part_pitch_range(piece: Piece) -> float:
    """The mean over the piece's parts of each part's own pitch range, in semitones: a voice
    that wanders out of its register shows here even where the whole piece's range does not."""
    if piece.part is None or not len(piece):
        return math.nan
    ranges = [np.ptp(piece.pitch[piece.part == index]) for index in np.unique(piece.part)]
    return float(np.mean(ranges))


def parts_used(piece: Piece) -> float:
    """How many different parts play in the piece (nan where notes carry no part)."""
    return math.nan if piece.part is None else float(len(np.unique(piece.part)))


# Per-piece figures of parts, apart from PIECE_FIGURES (whose set the report and eval.json list):
# nan for a piece without parts. outside_range needs the real ranges: see part_figures.
PART_FIGURES = {
    "part_pitch_range": part_pitch_range,
    "parts_used": parts_used,
}


def part_figures(piece: Piece, ranges: PartRanges | None = None) -> dict[str, float]:
    """PART_FIGURES of one piece, and outside_range where the real ranges are given."""
    out = {name: figure(piece) for name, figure in PART_FIGURES.items()}
    if ranges is not None:
        out["outside_range"] = outside_range(piece, ranges)
    return out


def mean_part_figures(
    pieces: Sequence[Piece], ranges: PartRanges | None = None
) -> dict[str, float]:
    """Each part figure's mean over the pieces where it is defined (nan where it is nowhere,
    as for a set of pieces without parts), without numpy's warning about an empty mean."""
    names = [*PART_FIGURES, *(["outside_range"] if ranges is not None else [])]
    rows = [part_figures(p, ranges) for p in pieces]
    out: dict[str, float] = {}
    for name in names:
        values = np.array([row[name] for row in rows], dtype=np.float64)
        values = values[np.isfinite(values)]
        out[name] = float(values.mean()) if len(values) else math.nan
    return out


# --- Yang & Lerch (2018): features, distances, densities -------------------------------------


def note_length_histogram(piece: Piece) -> np.ndarray:
    """Each note's length assigned to the nearest of the 12 classes (in log time), normalised."""
    lengths = np.maximum(piece.duration, 1e-6)
    classes = np.log2(np.asarray(NOTE_LENGTH_CLASSES))
    nearest = np.abs(np.log2(lengths)[:, None] - classes[None, :]).argmin(axis=1)
    hist = np.bincount(nearest, minlength=len(NOTE_LENGTH_CLASSES)).astype(np.float64)
    return hist / max(hist.sum(), 1.0)


def pitch_class_histogram(piece: Piece) -> np.ndarray:
    hist = np.bincount(piece.pitch % PITCH_CLASSES, minlength=PITCH_CLASSES).astype(np.float64)
    return hist / max(hist.sum(), 1.0)


def voice_steps(piece: Piece) -> tuple[np.ndarray, np.ndarray]:
    """Each pair of consecutive notes in one voice, as (from, to) pitches: the melodic steps.

    A voice is a part (a chorale's soprano, a song's bass): in a score the next note of a voice
    is its part's next note, not whatever another voice plays next. A piece without parts is
    one voice, as a track is.
    """
    if piece.part is None:
        return piece.pitch[:-1], piece.pitch[1:]
    order = np.lexsort((np.arange(len(piece)), piece.part))  # by part, in the piece's order
    pitch, part = piece.pitch[order], piece.part[order]
    same = part[1:] == part[:-1]
    return pitch[:-1][same], pitch[1:][same]


def pitch_class_transitions(piece: Piece) -> np.ndarray:
    """The 12x12 matrix of transitions between consecutive notes' pitch classes within each
    voice, normalised."""
    before, after = voice_steps(piece)
    matrix = np.zeros((PITCH_CLASSES, PITCH_CLASSES))
    np.add.at(matrix, (before % PITCH_CLASSES, after % PITCH_CLASSES), 1.0)
    return (matrix / max(matrix.sum(), 1.0)).ravel()


def average_pitch_interval(piece: Piece) -> float:
    """The mean size of a voice's step from one note to its next, in semitones."""
    before, after = voice_steps(piece)
    return float(np.abs(after - before).mean()) if len(before) else 0.0


def average_inter_onset_interval(piece: Piece) -> float:
    """The mean time between distinct onsets, in beats (notes of one chord share an onset)."""
    onsets = np.unique(piece.start)
    return float(np.diff(onsets).mean()) if len(onsets) > 1 else 0.0


FEATURES = {
    "pitch_count": lambda p: np.array([n_pitches_used(p)]),
    "pitch_class_histogram": pitch_class_histogram,
    "pitch_class_transitions": pitch_class_transitions,
    "pitch_range": lambda p: np.array([pitch_range(p)]),
    "average_pitch_interval": lambda p: np.array([average_pitch_interval(p)]),
    "average_inter_onset_interval": lambda p: np.array([average_inter_onset_interval(p)]),
    "note_length_histogram": note_length_histogram,
}

# What each figure measures, in plain words, for the HTML report.
DESCRIPTIONS = {
    "pitch_range": "The distance in semitones between the piece's highest and lowest note.",
    "n_pitches_used": "How many different pitches the piece uses.",
    "n_pitch_classes_used": "How many of the 12 note names (C, C#, ..., B, in any octave) "
    "the piece uses.",
    "polyphony": "How many different pitches sound at once on average, counted only while "
    "something sounds.",
    "polyphony_rate": "The share of the piece's time in which three or more different pitches "
    "sound together.",
    "scale_consistency": "The share of notes that belong to the one major or natural-minor scale "
    "that fits the piece best.",
    "pitch_entropy": "How evenly the notes are spread over the pitches, in bits (0 when every note "
    "has the same pitch).",
    "pitch_class_entropy": "How evenly the notes are spread over the 12 note names, in bits "
    "(0 for one name, 3.58 for all twelve equally often).",
    "empty_beat_rate": "The share of beats in which no note is played.",
    "onset_pattern_consistency": "How alike the rhythms (where notes start) of neighbouring "
    "four-beat stretches are, from 0 to 1 (1 when every stretch repeats the one before).",
    "longest_repeat": "The length in notes of the longest run of pitches that the piece plays "
    "twice, the two times not overlapping.",
    "part_pitch_range": "The distance in semitones between a part's highest and lowest note, "
    "averaged over the piece's parts.",
    "parts_used": "How many different parts (voices or instruments) play in the piece.",
    "outside_range": "The share of notes pitched outside the range their part has in the "
    "training music (by default its 1st to 99th percentile).",
    "pitch_count": "How many different pitches a piece uses.",
    "pitch_class_histogram": "How often each of the 12 note names occurs, as shares of the "
    "piece's notes.",
    "pitch_class_transitions": "How often each note name is followed by each other note name "
    "in the same voice (part), as shares of the voices' steps from note to note.",
    "average_pitch_interval": "The average size in semitones of a voice's jump from one note to "
    "its next.",
    "average_inter_onset_interval": "The average time in beats from one note or chord starting "
    "to the next one starting.",
    "note_length_histogram": "How often notes of each standard length occur (whole to "
    "sixteenth, dotted and triplet), as shares of the piece's notes.",
}


def feature_table(pieces: Sequence[Piece]) -> dict[str, np.ndarray]:
    """Each feature as an array [pieces, dims]."""
    return {
        name: np.stack([np.asarray(f(p), dtype=np.float64).ravel() for p in pieces])
        for name, f in FEATURES.items()
    }


def intra_set_distances(x: np.ndarray) -> np.ndarray:
    """Euclidean distances between every pair of distinct pieces of one set ([n, d] -> n(n-1)/2)."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    i, j = np.triu_indices(len(x), k=1)
    return np.linalg.norm(x[i] - x[j], axis=1)


def inter_set_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Euclidean distances from every piece of one set to every piece of the other (n*m)."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    return np.linalg.norm(x[:, None, :] - y[None, :, :], axis=2).ravel()


def _bandwidth(samples: np.ndarray) -> float:
    """Scott's rule; a sliver of the scale where the samples do not vary (a point mass)."""
    std = float(np.std(samples, ddof=1)) if len(samples) > 1 else 0.0
    if std > 0:
        return std * len(samples) ** (-1 / 5)
    return 1e-3 * max(abs(float(samples[0])), 1.0)


def common_grid(*sample_sets: np.ndarray, points: int = 256) -> np.ndarray:
    """One grid that covers every set's density (its samples plus 4 bandwidths either side)."""
    lows, highs = [], []
    for samples in sample_sets:
        h = _bandwidth(samples)
        lows.append(float(np.min(samples)) - 4 * h)
        highs.append(float(np.max(samples)) + 4 * h)
    return np.linspace(min(lows), max(highs), points)


def kde(samples: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """A Gaussian kernel density estimate on the grid, normalised to integrate to 1 there."""
    samples = np.asarray(samples, dtype=np.float64).ravel()
    h = _bandwidth(samples)
    z = (grid[:, None] - samples[None, :]) / h
    density = np.exp(-0.5 * z * z).sum(axis=1) / (len(samples) * h * math.sqrt(2 * math.pi))
    area = np.trapezoid(density, grid)
    return density / area if area > 0 else density


def overlap_area(p: np.ndarray, q: np.ndarray, grid: np.ndarray) -> float:
    """The area under the smaller of two densities on one grid (1: identical, 0: disjoint)."""
    return float(np.trapezoid(np.minimum(p, q), grid))


def kl_divergence(p: np.ndarray, q: np.ndarray, grid: np.ndarray, floor: float = 1e-12) -> float:
    """KL(p || q) in nats, of two densities on one grid; `floor` keeps log(p/q) finite."""
    p = np.maximum(p, floor)
    q = np.maximum(q, floor)
    return float(np.trapezoid(p * np.log(p / q), grid))


@dataclass(frozen=True)
class Comparison:
    """Two sample sets' densities on one grid, and how much they agree."""

    grid: np.ndarray
    p: np.ndarray
    q: np.ndarray
    overlap_area: float
    kl_divergence: float


def compare_samples(a: np.ndarray, b: np.ndarray, points: int = 256) -> Comparison:
    """KDE both sample sets on ONE common grid; overlap area and KL(a || b)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if np.ptp(np.concatenate([a, b])) == 0:
        # Both sets are one and the same point (say, every piece has the same pitch range).
        grid = np.array([a[0] - 1.0, a[0], a[0] + 1.0])
        spike = np.array([0.0, 1.0, 0.0])
        return Comparison(grid, spike, spike, 1.0, 0.0)
    grid = common_grid(a, b, points=points)
    p, q = kde(a, grid), kde(b, grid)
    return Comparison(grid, p, q, overlap_area(p, q, grid), kl_divergence(p, q, grid))


@dataclass(frozen=True)
class FeatureComparison:
    """Yang & Lerch for one feature: the distance distributions and their agreement."""

    intra_real: np.ndarray
    intra_generated: np.ndarray
    inter: np.ndarray
    comparison: Comparison  # intra-set (real) vs inter-set, as in Yang & Lerch
    summary: dict[str, float] = field(default_factory=dict)


def yang_lerch(
    generated: dict[str, np.ndarray], real: dict[str, np.ndarray], points: int = 256
) -> dict[str, FeatureComparison]:
    """Per feature: intra-set distances of each set, inter-set distances, and the overlap area
    and KL divergence of the real set's intra-set density against the inter-set density.

    The inter-set distances look like the real set's own spread when the generated pieces are
    drawn from the same distribution as the real ones: overlap near 1, KL near 0.
    """
    out: dict[str, FeatureComparison] = {}
    for name in generated:
        intra_real = intra_set_distances(real[name])
        intra_gen = intra_set_distances(generated[name])
        inter = inter_set_distances(generated[name], real[name])
        comparison = compare_samples(intra_real, inter, points)
        summary = {
            "intra_real_mean": float(intra_real.mean()),
            "intra_real_std": float(intra_real.std()),
            "intra_generated_mean": float(intra_gen.mean()),
            "intra_generated_std": float(intra_gen.std()),
            "inter_mean": float(inter.mean()),
            "inter_std": float(inter.std()),
            "overlap_area": comparison.overlap_area,
            "kl_divergence": comparison.kl_divergence,
        }
        out[name] = FeatureComparison(intra_real, intra_gen, inter, comparison, summary)
    return out


# --- Repetition and copying ------------------------------------------------------------------


def distinct_ngram_ratio(sequences: Sequence[np.ndarray], n: int) -> tuple[float, float]:
    """Distinct n-grams over all n-grams of pitch: the mean over pieces, and over the set pooled.

    1 means no n-gram repeats; a piece that loops a figure scores low.
    """
    per_piece: list[float] = []
    pooled: set[tuple[int, ...]] = set()
    total = 0
    for seq in sequences:
        grams = [tuple(int(x) for x in seq[i : i + n]) for i in range(len(seq) - n + 1)]
        if grams:
            per_piece.append(len(set(grams)) / len(grams))
            pooled.update(grams)
            total += len(grams)
    if not per_piece:
        return math.nan, math.nan
    return float(np.mean(per_piece)), len(pooled) / total


@dataclass(frozen=True)
class CopiedRun:
    """The longest run of a query that occurs in the corpus, and where (corpus sequence, end)."""

    length: int
    source: int = -1  # index of the corpus sequence, -1 for none
    source_end: int = -1  # index just past the run's last note in that sequence


class SuffixAutomaton:
    """A suffix automaton of query sequences (joined by separators no corpus can contain).

    Streaming a corpus through it finds, for every query, the longest run of consecutive
    symbols that also occurs in the corpus: linear in the corpus length, and the corpus is
    never held in memory.
    """

    def __init__(self, queries: Sequence[Sequence[int] | np.ndarray]) -> None:
        self.next: list[dict[int, int]] = [{}]
        self.link = [-1]
        self.length = [0]
        self.prefix_state: list[np.ndarray] = []
        last = 0
        for q, query in enumerate(queries):
            states = np.empty(len(query), dtype=np.int64)
            for i, symbol in enumerate(query):
                last = self._extend(last, int(symbol))
                states[i] = last
            self.prefix_state.append(states)
            last = self._extend(last, -1 - q)  # a separator unique to this query
        n = len(self.link)
        self.best = np.zeros(n, dtype=np.int64)  # longest match seen ending in each state
        self.where = np.full((n, 2), -1, dtype=np.int64)

    def _extend(self, last: int, symbol: int) -> int:
        cur = len(self.link)
        self.next.append({})
        self.link.append(-1)
        self.length.append(self.length[last] + 1)
        p = last
        while p != -1 and symbol not in self.next[p]:
            self.next[p][symbol] = cur
            p = self.link[p]
        if p == -1:
            self.link[cur] = 0
            return cur
        q = self.next[p][symbol]
        if self.length[p] + 1 == self.length[q]:
            self.link[cur] = q
            return cur
        clone = len(self.link)
        self.next.append(dict(self.next[q]))
        self.link.append(self.link[q])
        self.length.append(self.length[p] + 1)
        while p != -1 and self.next[p].get(symbol) == q:
            self.next[p][symbol] = clone
            p = self.link[p]
        self.link[q] = clone
        self.link[cur] = clone
        return cur

    def feed(self, sequence: Iterable[int], source: int, start: int = 0) -> None:
        """Stream one corpus sequence (a track) through the automaton; runs never cross sequences.

        `start` is the index of the sequence's first symbol in the whole source sequence.
        """
        nxt, link, length, best = self.next, self.link, self.length, self.best
        state, matched = 0, 0
        for i, symbol in enumerate(sequence, start):
            while state and symbol not in nxt[state]:
                state = link[state]
                matched = length[state]
            target = nxt[state].get(symbol)
            if target is None:
                continue  # state is the root: nothing matches this symbol
            state, matched = target, matched + 1
            if matched > best[state]:
                best[state] = matched
                self.where[state] = (source, i + 1)

    def runs(self) -> list[CopiedRun]:
        """For each query, its longest run found in what was fed so far."""
        order = np.argsort(self.length, kind="stable")[::-1]
        best = self.best.copy()
        where = self.where.copy()
        # A match ending in a state also matches its suffix-link parent's (shorter) strings.
        for s in order:
            parent = self.link[s]
            if parent > 0 and best[s] > 0 and self.length[parent] > best[parent]:
                best[parent] = self.length[parent]
                where[parent] = where[s]
        # Every substring of a query ending at one of its positions lies on that prefix's chain.
        chain_best = best.copy()
        chain_where = where.copy()
        for s in order[::-1]:
            parent = self.link[s]
            if parent > 0 and chain_best[parent] > chain_best[s]:
                chain_best[s] = chain_best[parent]
                chain_where[s] = chain_where[parent]
        out = []
        for states in self.prefix_state:
            if not len(states):
                out.append(CopiedRun(0))
                continue
            k = int(np.argmax(chain_best[states]))
            s = states[k]
            out.append(CopiedRun(int(chain_best[s]), *(int(x) for x in chain_where[s])))
        return out


def kgram_keys(sequence: np.ndarray, k: int, bits: int = 7) -> np.ndarray:
    """Each k-gram of small non-negative symbols packed exactly into one integer (k*bits <= 63)."""
    if k * bits > 63:
        msg = f"{k}-grams of {bits}-bit symbols do not fit in 63 bits"
        raise ValueError(msg)
    seq = np.asarray(sequence, dtype=np.int64)
    if len(seq) < k:
        return np.empty(0, dtype=np.int64)
    windows = np.lib.stride_tricks.sliding_window_view(seq, k)
    shifts = np.arange(k - 1, -1, -1, dtype=np.int64) * bits
    return (windows << shifts).sum(axis=1)


def anchored_segments(
    sequence: np.ndarray, query_keys: np.ndarray, k: int, bits: int = 7
) -> list[tuple[int, int]]:
    """The stretches of a corpus sequence that can hold a common run of k or more symbols.

    Such a run starts k-grams that all occur in the queries, at consecutive positions; the
    stretch [a, b) of consecutive hits covers runs up to b - a + k - 1 symbols long.
    """
    keys = kgram_keys(sequence, k, bits)
    if not len(keys) or not len(query_keys):
        return []
    pos = np.searchsorted(query_keys, keys)
    hit = query_keys[np.minimum(pos, len(query_keys) - 1)] == keys
    edges = np.diff(np.concatenate([[0], hit.astype(np.int8), [0]]))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return [(int(a), int(b) + k - 1) for a, b in zip(starts, ends, strict=True)]


class CopyDetector:
    """The longest run of each query found in a corpus streamed through `feed`.

    With `anchor=k`, only stretches of the corpus whose k-grams all occur in the queries go
    through the automaton (a vectorised filter): exact for every run of k or more symbols,
    and fast on large corpora; runs shorter than k may then be under-reported. Symbols are
    non-negative and below 2**bits (7 for pitches, 8 for intervals); k is capped to fit 63 bits.
    """

    def __init__(
        self, queries: Sequence[np.ndarray], anchor: int | None = None, bits: int = 7
    ) -> None:
        self.automaton = SuffixAutomaton(queries)
        self.anchor = min(anchor, 63 // bits) if anchor else None
        self.bits = bits
        anchor = self.anchor
        self.query_keys = np.empty(0, dtype=np.int64)
        if anchor:
            keys = [kgram_keys(np.asarray(q), anchor, bits) for q in queries]
            self.query_keys = np.unique(np.concatenate([*keys, np.empty(0, dtype=np.int64)]))
        self.fed = 0

    def feed(self, sequence: np.ndarray, source: int) -> None:
        sequence = np.asarray(sequence, dtype=np.int64)
        self.fed += len(sequence)
        if not self.anchor:
            self.automaton.feed(sequence.tolist(), source)
            return
        for a, b in anchored_segments(sequence, self.query_keys, self.anchor, self.bits):
            self.automaton.feed(sequence[a:b].tolist(), source, start=a)

    def runs(self) -> list[CopiedRun]:
        return self.automaton.runs()


def intervals(pitch: np.ndarray) -> np.ndarray:
    """Consecutive pitch intervals shifted to 0..254: a run of n equal intervals is a run of
    n + 1 notes copied up to transposition."""
    return np.diff(np.asarray(pitch, dtype=np.int64)) + 127
