"""Reference sets and controls: what a figure about generated music is measured against.

A figure about generated music means something only beside the same figure for real music and
for music-shaped noise, measured the same way on sets of the same size and length:

- the reference: `set_size` real excerpts of the evaluation length, drawn from the test tracks
  and spread over as many files as there are;
- real: a second draw of real excerpts, disjoint from the reference (from other files where there
  are enough), compared with the reference like the model's pieces: the ceiling;
- shuffled: the real draw with each excerpt's pitches randomly permuted and its rhythm kept, the
  same pitches and the same notes per beat without the order that makes music: the floor.

Every comparison is repeated over `draws` reference draws, and each figure is reported as its
mean and spread (standard deviation) over the draws. Where the notes carry parts, each set's
part figures (music_metrics.PART_FIGURES, and the share of notes outside their part's real range
where those ranges are given) are among them. Pure numpy: no TensorFlow, no files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pipelines import music_metrics as mm

SETS = ("model", "real", "shuffled")  # each compared with the reference draw
# Below this many notes an excerpt says little about a melody (a 2-bar phrase of quarter notes).
MIN_EVAL_NOTES = 16


@dataclass(frozen=True)
class Track:
    """One track's notes, in order (joined from its chunks), and its file's group."""

    file_id: str
    track: int
    notes: dict[str, np.ndarray]  # pitch, step, duration; part where the notes carry one
    group: str = ""  # the file's folder group (a composer, a collection); "" where unknown

    def __len__(self) -> int:
        return len(self.notes["pitch"])


def evaluation_length(track_lengths: Sequence[int], wanted: int, needed: int) -> int:
    """The longest length, at most `wanted` notes, at which the tracks hold `needed`
    non-overlapping excerpts (two reference-sized draws); never below MIN_EVAL_NOTES."""
    lengths = np.asarray(track_lengths, dtype=np.int64)
    floor = min(MIN_EVAL_NOTES, wanted)
    for n in range(wanted, floor, -1):
        if int((lengths // n).sum()) >= needed:
            return n
    return floor


def excerpt_count(track_lengths: Sequence[int], length: int) -> int:
    """How many non-overlapping excerpts of `length` notes the tracks hold."""
    return int((np.asarray(track_lengths, dtype=np.int64) // max(length, 1)).sum())


Excerpt = tuple[int, int]  # (index of the track, first note)


def draw_pair(
    tracks: Sequence[Track], length: int, size: int, rng: np.random.Generator
) -> tuple[list[Excerpt], list[Excerpt]]:
    """Two disjoint sets of `size` non-overlapping excerpts: the reference and the real control.

    Excerpts are taken round-robin over the files (each file's first excerpt before any file's
    second), and each file serves one set only, so the two sets share no piece where the test
    split has files enough; otherwise the rest is filled from any excerpt not yet taken.
    """
    by_file: dict[str, list[Excerpt]] = {}
    for i, track in enumerate(tracks):
        k = len(track) // length
        if k == 0:
            continue
        phase = int(rng.integers(0, len(track) - k * length + 1))  # where the excerpts sit
        by_file.setdefault(track.file_id, []).extend((i, phase + j * length) for j in range(k))
    files = sorted(by_file)
    order = [files[i] for i in rng.permutation(len(files))]
    queues = {f: [by_file[f][i] for i in rng.permutation(len(by_file[f]))] for f in order}
    rounds = max((len(q) for q in queues.values()), default=0)
    candidates = [queues[f][r] for r in range(rounds) for f in order if r < len(queues[f])]

    sets: tuple[list[Excerpt], list[Excerpt]] = ([], [])
    side: dict[str, int] = {}
    left: list[Excerpt] = []
    for excerpt in candidates:
        file_id = tracks[excerpt[0]].file_id
        if file_id not in side:
            open_sides = [s for s in (0, 1) if len(sets[s]) < size]
            if not open_sides:
                left.append(excerpt)
                continue
            side[file_id] = min(open_sides, key=lambda s: len(sets[s]))
        chosen = sets[side[file_id]]
        (chosen if len(chosen) < size else left).append(excerpt)
    for s in (0, 1):  # too few files to keep the sets apart: share files, never excerpts
        while len(sets[s]) < size and left:
            sets[s].append(left.pop(0))
    return sets


def excerpt_piece(track: Track, first: int, length: int, seconds_per_beat: float) -> mm.Piece:
    """`length` notes of a track from note `first`, starting at 0, timed in beats."""
    cut = slice(first, first + length)
    notes = track.notes
    part = notes.get("part")
    piece = mm.Piece.from_steps(
        notes["pitch"][cut],
        notes["step"][cut],
        notes["duration"][cut],
        None if part is None else part[cut],
    )
    return mm.scale(piece, seconds_per_beat)


def cut(piece: mm.Piece, n: int) -> mm.Piece:
    """The first `n` notes of a piece (with their parts)."""
    return mm.first_notes(piece, n)


def stats(values: Sequence[float]) -> dict[str, float]:
    """Mean and spread (sample standard deviation; 0 for one value) over draws."""
    finite = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if not len(finite):
        return {"mean": math.nan, "std": math.nan}
    std = float(finite.std(ddof=1)) if len(finite) > 1 else 0.0
    return {"mean": float(finite.mean()), "std": std}


def piece_means(pieces: Sequence[mm.Piece]) -> dict[str, float]:
    """Each per-piece figure (repetition and pitch, then MusPy's) averaged over a set."""
    figures = {name: [f(p) for p in pieces] for name, f in mm.PIECE_FIGURES.items()}
    means = {name: float(np.nanmean(v)) if len(v) else math.nan for name, v in figures.items()}
    return means | {f"muspy_{k}": v for k, v in mm.mean_metrics(pieces).items()}


def distinct_ngrams(pieces: Sequence[mm.Piece], ngrams: Sequence[int]) -> dict[str, float]:
    return {f"distinct_{n}grams": mm.distinct_ngram_ratio([p.pitch for p in pieces], n)[0]
            for n in ngrams}  # fmt: skip


@dataclass
class Draw:
    """One reference draw: the sets compared and, per set, Yang & Lerch against the reference."""

    reference: list[mm.Piece]
    sets: dict[str, list[mm.Piece]]
    yang_lerch: dict[str, dict[str, mm.FeatureComparison]]


def compare_draw(
    model: Sequence[mm.Piece],
    reference: Sequence[mm.Piece],
    real: Sequence[mm.Piece],
    rng: np.random.Generator,
    points: int,
) -> Draw:
    sets = {"model": list(model), "real": list(real),
            "shuffled": [mm.shuffled(p, rng) for p in real]}  # fmt: skip
    table = mm.feature_table(reference)
    comparisons = {
        name: mm.yang_lerch(mm.feature_table(pieces), table, points=points)
        for name, pieces in sets.items()
    }
    return Draw(list(reference), sets, comparisons)


@dataclass
class Judgement:
    """The model's pieces against real references and both controls, over several draws."""

    summary: dict[str, object]  # eval.json's "music" section, without the copying figures
    first: Draw  # the first draw, for the pictures and the copy detector


def judge(
    generated: Sequence[mm.Piece],
    tracks: Sequence[Track],
    *,
    set_size: int,
    draws: int,
    seed: int,
    seconds_per_beat: float,
    kde_points: int,
    ngrams: Sequence[int],
    part_ranges: mm.PartRanges | None = None,
) -> Judgement:
    """Compare the generated continuations with `draws` reference draws from `tracks`.

    The evaluation length is the continuations' (their shortest), shortened only as far as the
    test tracks need to hold two sets of excerpts; the set size is `set_size`, or fewer where
    there are fewer generated pieces or excerpts, and is the same for every set. `part_ranges`
    (each part's real register, from the training notes) adds outside_range to every set.
    """
    if not generated:
        raise ValueError("no generated piece to judge")
    lengths = [len(t) for t in tracks]
    wanted = min(len(p) for p in generated)
    size = min(set_size, len(generated))
    length = evaluation_length(lengths, wanted, 2 * size)
    available = excerpt_count(lengths, length)
    size = min(size, available // 2)
    if size < 2:
        raise ValueError(
            f"the test split holds {available} excerpts of {length} notes; "
            "two sets of at least 2 are needed"
        )
    rng = np.random.default_rng(seed)
    per_draw: list[dict[str, dict[str, float]]] = []
    first: Draw | None = None
    files_used: set[str] = set()
    for _ in range(draws):
        ref_idx, real_idx = draw_pair(tracks, length, size, rng)
        reference = [excerpt_piece(tracks[i], a, length, seconds_per_beat) for i, a in ref_idx]
        real = [excerpt_piece(tracks[i], a, length, seconds_per_beat) for i, a in real_idx]
        files_used |= {tracks[i].file_id for i, _ in (*ref_idx, *real_idx)}
        chosen = rng.choice(len(generated), size=size, replace=False)
        model = [cut(generated[i], length) for i in sorted(chosen)]
        draw = compare_draw(model, reference, real, rng, kde_points)
        first = first or draw
        per_draw.append(draw_figures(draw, ngrams, part_ranges))
    assert first is not None
    sets_summary: dict[str, object] = {}
    for name in (*SETS, "reference"):
        keys = per_draw[0][name]
        sets_summary[name] = {k: stats([d[name][k] for d in per_draw]) for k in keys}
    summary: dict[str, object] = {
        "eval_notes": length,
        "continuation_notes": wanted,
        "set_size": size,
        "draws": draws,
        "generated_pieces": len(generated),
        "test_tracks": len(tracks),
        "test_tracks_long_enough": sum(n >= length for n in lengths),
        "test_excerpts": available,
        "test_files_used": len(files_used),
        "sets": sets_summary,
    }
    return Judgement(summary, first)


def draw_figures(
    draw: Draw, ngrams: Sequence[int], part_ranges: mm.PartRanges | None = None
) -> dict[str, dict[str, float]]:
    """Per set: mean overlap and KL over the features, each feature's, the piece figures and
    the part figures (nan for pieces without parts)."""
    out: dict[str, dict[str, float]] = {}
    for name, pieces in (*draw.sets.items(), ("reference", draw.reference)):
        figures = piece_means(pieces) | distinct_ngrams(pieces, ngrams)
        figures |= mm.mean_part_figures(pieces, part_ranges)
        if name in draw.yang_lerch:
            summaries = {f: c.summary for f, c in draw.yang_lerch[name].items()}
            figures |= {
                "overlap": float(np.mean([s["overlap_area"] for s in summaries.values()])),
                "kl": float(np.mean([s["kl_divergence"] for s in summaries.values()])),
            }
            for feature, s in summaries.items():
                figures[f"overlap_{feature}"] = s["overlap_area"]
                figures[f"kl_{feature}"] = s["kl_divergence"]
        out[name] = figures
    return out


def beats_shuffled(model: Mapping[str, float], shuffled: Mapping[str, float]) -> bool:
    """The model's mean overlap is above the shuffled control's by more than the spread (the
    larger of the two standard deviations over draws)."""
    spread = max(model["std"], shuffled["std"])
    return bool(model["mean"] - shuffled["mean"] > spread)
