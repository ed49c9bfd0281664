"""How one file's notes become the model's streams: its tracks, each track's part, and a
stream's note features. The sequences stage builds its shards with these, and a MIDI primer is
read with them, so a primer is what a training stream was.

Streams (`sequences.mode`). `track`: each selected track is a stream, as in the TensorFlow
tutorial. `score`: a file's selected tracks merged into one stream in time order; a note's step
is the onset difference in the merged stream (0 for notes that sound together), and notes with
one onset go by part (lowest index first: for one instrument class, the highest voice first),
then pitch from high to low, then track.

Parts. Every note carries its part, in both modes: its track's (instrument class, rank). The class
is the General MIDI family of the track's program (16 of them), or drums; the rank orders the
file's selected tracks of that class by median pitch, 1 the highest (ties by track number),
ranks past `sequences.max_part_rank` sharing the last. The index is class * max_part_rank +
rank - 1, the same in every file and corpus: a chorale's four voices, all pianos, are piano-1
(soprano) to piano-4 (bass); `instruments.part_name` names them.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass

import numpy as np

from pipelines import instruments, schema
from pipelines.config import Sequences
from pipelines.instruments import PART_CLASSES

Notes = dict[str, np.ndarray]  # one file's notes: a numpy array per column of schema.NOTES


def track_slices(notes: Notes) -> list[tuple[int, slice]]:
    """The (track, rows) runs of one file's notes, which are sorted by track."""
    tracks = notes["track"]
    cuts = [0, *(np.flatnonzero(tracks[1:] != tracks[:-1]) + 1).tolist(), len(tracks)]
    return [(int(tracks[lo]), slice(lo, hi)) for lo, hi in itertools.pairwise(cuts)]


DRUMS = PART_CLASSES.index(instruments.DRUMS)  # the drums' class


def part_class(program: int, is_drum: bool) -> int:
    return DRUMS if is_drum else program // 8


def part_index(klass: int, rank: int, max_rank: int) -> int:
    """A part's index in the vocabulary; rank counts from 1, ranks past max_rank share the last."""
    return klass * max_rank + min(rank, max_rank) - 1


def track_parts(notes: Notes, tracks: list[tuple[int, slice]], max_rank: int) -> list[int]:
    """The part of each of a file's selected tracks: its class, and its rank by median pitch
    among the file's selected tracks of that class (highest first, ties by track number)."""
    classes = [
        part_class(int(notes["program"][rows.start]), bool(notes["is_drum"][rows.start]))
        for _, rows in tracks
    ]
    medians = [float(np.median(notes["pitch"][rows])) for _, rows in tracks]
    order = sorted(range(len(tracks)), key=lambda i: (classes[i], -medians[i], tracks[i][0]))
    parts = [0] * len(tracks)
    ranks: Counter[int] = Counter()
    for i in order:
        ranks[classes[i]] += 1
        parts[i] = part_index(classes[i], ranks[classes[i]], max_rank)
    return parts


@dataclass
class Stream:
    """A track's notes, or a file's selected tracks merged into one score, in playing order."""

    track: int  # the track's number; schema.SCORE_TRACK for a merged score
    rows: np.ndarray  # the notes' rows in the file's note columns, in the stream's order
    part: np.ndarray  # each note's part

    def __len__(self) -> int:
        return len(self.rows)


def onsets(notes: Notes, p: Sequences) -> np.ndarray:
    return notes["start_beat" if p.time_unit == "beats" else "start"]


def merge(notes: Notes, tracks: list[Stream], p: Sequences) -> Stream:
    """Tracks as one score: by onset, then part, then pitch from high to low, then track."""
    rows = np.concatenate([t.rows for t in tracks])
    part = np.concatenate([t.part for t in tracks])
    pitch = notes["pitch"][rows].astype(np.int64)
    # lexsort is stable and sorts by its last key first
    order = np.lexsort((notes["track"][rows], -pitch, part, onsets(notes, p)[rows]))
    return Stream(schema.SCORE_TRACK, rows[order], part[order])


def stream_features(notes: Notes, stream: Stream, p: Sequences) -> dict[str, np.ndarray]:
    """pitch, step, duration, velocity and part of a stream's notes; the first note's step is 0."""
    rows = stream.rows
    beats = p.time_unit == "beats"
    start = onsets(notes, p)[rows].astype(np.float64)
    end = notes["end_beat" if beats else "end"][rows].astype(np.float64)
    step = np.diff(start, prepend=start[:1])
    return {
        "pitch": notes["pitch"][rows].astype(np.int64),
        "step": np.clip(step, 0.0, p.max_step).astype(np.float32),
        "duration": np.clip(end - start, 0.0, p.max_duration).astype(np.float32),
        "velocity": notes["velocity"][rows].astype(np.int64),
        "part": stream.part.astype(np.int64),
    }
