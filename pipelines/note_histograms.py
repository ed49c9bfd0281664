"""Note histograms: pitch, step, duration and program counts of parsed notes.

Each parse worker counts the files of its batch; the stage adds the batches' counts up, keeps
them in its resumable runs, and the plotter draws them. Steps and durations are in quarter notes,
binned on STEP_EDGES (DURATION_EDGES are the same).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipelines import midi
from pipelines.instruments import GM_PROGRAMS

# Quarter notes; the first bin [0, 1/64) holds the chords' zero steps. The last takes the rest.
STEP_EDGES = np.concatenate([[0.0], np.geomspace(1 / 64, 64, 37)])
DURATION_EDGES = STEP_EDGES


class NoteHistograms:
    """Pitch, step, duration and program counts; workers count their files, the stage adds up."""

    def __init__(self, counts: dict[str, Any] | None = None) -> None:
        counts = counts or {}
        self.pitch = np.asarray(counts.get("pitch", np.zeros(128)), dtype=np.int64)
        self.programs = np.asarray(counts.get("programs", np.zeros(128)), dtype=np.int64)
        self.drums = int(counts.get("drums", 0))
        self.step = np.asarray(counts.get("step", np.zeros(len(STEP_EDGES) - 1)), dtype=np.int64)
        self.duration = np.asarray(
            counts.get("duration", np.zeros(len(DURATION_EDGES) - 1)), dtype=np.int64
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "pitch": self.pitch.tolist(),
            "programs": self.programs.tolist(),
            "drums": self.drums,
            "step": self.step.tolist(),
            "duration": self.duration.tolist(),
        }

    def merge(self, other: NoteHistograms) -> None:
        for name in ("pitch", "programs", "step", "duration"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.drums += other.drums

    def add(self, notes: midi.FileNotes) -> None:
        """Count one file's notes (sorted by track, start, pitch)."""
        col = notes.columns
        if len(col["pitch"]) == 0:
            return
        self.pitch += np.bincount(col["pitch"].astype(np.intp), minlength=128)
        drum = col["is_drum"]
        self.drums += int(drum.sum())
        self.programs += np.bincount(col["program"][~drum].astype(np.intp), minlength=128)
        track = col["track"]
        if notes.start_ticks is None or notes.end_ticks is None:
            beats = col["start_beat"].astype(np.float64)
            steps = np.diff(beats)[track[1:] == track[:-1]]
            self.step += _counts(steps, STEP_EDGES)
            self.duration += _counts(col["end_beat"] - beats, DURATION_EDGES)
            return
        # Steps and durations in ticks, binned through a table per time base: a gather where
        # a search of the float edges per note cost the worker a tenth of its time.
        table = _tick_bins(notes.ticks_per_beat)
        cap = len(table) - 1
        start = notes.start_ticks
        steps_ticks = np.diff(start)[track[1:] == track[:-1]]
        steps_bins = table.take(np.minimum(steps_ticks, cap))
        self.step += np.bincount(steps_bins, minlength=len(self.step))
        durations = np.minimum(notes.end_ticks - start, cap)
        self.duration += np.bincount(table.take(durations), minlength=len(self.duration))


def _counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    index = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)
    return np.bincount(index, minlength=len(edges) - 1)


_BIN_TABLES: dict[int, np.ndarray] = {}


def _tick_bins(ticks_per_beat: int) -> np.ndarray:
    """The STEP_EDGES bin of every length from 0 to 64 quarter notes, in ticks (the last bin
    holds every longer one). Steps and durations share the edges (DURATION_EDGES)."""
    table = _BIN_TABLES.get(ticks_per_beat)
    if table is None:
        if len(_BIN_TABLES) >= 16:  # a corpus of odd time bases: keep the cache small
            _BIN_TABLES.clear()
        beats = np.arange(64 * ticks_per_beat + 1) / ticks_per_beat
        index = np.searchsorted(STEP_EDGES, beats, side="right") - 1
        table = np.clip(index, 0, len(STEP_EDGES) - 2).astype(np.int8)
        _BIN_TABLES[ticks_per_beat] = table
    return table


def program_names(hist: NoteHistograms) -> dict[str, int]:
    """Notes per General MIDI instrument name (drums as "Drums"), for the instruments played."""
    names = {GM_PROGRAMS[p]: int(n) for p, n in enumerate(hist.programs) if n}
    if hist.drums:
        names["Drums"] = hist.drums
    return names
