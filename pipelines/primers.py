"""Primers: the notes a generated piece starts from, as the model's `Notes` [count, P].

From a list of pitches (at the training data's typical step, duration and velocity), from a MIDI
file's first track, or from windows of the test split chosen by the seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.errors import LakhflowError, ParamsError
from pipelines.midi import FEATURES, Notes

# Test windows the default primers are chosen from (the first ones in shard order): enough
# variety for a batch, without reading a whole Lakh-sized test split.
PRIMER_CANDIDATES = 4096


@dataclass
class Primers:
    notes: Notes  # [count, P]
    described: list[dict[str, Any]] = field(default_factory=list)
    tempo_bpm: float | None = None  # a primer MIDI file's own tempo


def class_values(manifest: Mapping[str, Any], head: str) -> np.ndarray:
    """The value each class of `head` stands for, as the shards' manifest gives it."""
    return np.asarray(manifest["bins"][head]["values"], dtype=np.float64)


def typical_note(manifest: Mapping[str, Any]) -> tuple[float, float, int]:
    """A primer note's step, duration and velocity when only pitches are given.

    The middle class of quantile bins holds the training median, so its value stands for it.
    """
    values = [class_values(manifest, h) for h in ("step", "duration", "velocity")]
    step, duration, velocity = (float(v[len(v) // 2]) for v in values)
    return step, duration, int(np.clip(round(velocity), 1, 127))


def pitches_primer(text: str, manifest: Mapping[str, Any]) -> Notes:
    """ "60 62 64" -> primer notes at the training data's typical step, duration and velocity."""
    try:
        pitches = [int(p) for p in text.replace(",", " ").split()]
    except ValueError:
        raise ParamsError(f"generate.primer_pitches: {text!r} is not a list of numbers") from None
    if not pitches or not all(0 <= p <= 127 for p in pitches):
        raise ParamsError(f"generate.primer_pitches: {text!r} needs pitches in 0..127")
    step, duration, velocity = typical_note(manifest)
    n = len(pitches)
    steps = np.full(n, step)
    steps[0] = 0.0
    return Notes(
        np.asarray(pitches, np.int64), steps, np.full(n, duration), np.full(n, velocity, np.int64)
    )


def window_primers(rows: Sequence[Mapping[str, np.ndarray]], length: int) -> Notes:
    """The first `length` notes of each window as one [B, length] batch."""
    return Notes(*(np.stack([np.asarray(r[k])[:length] for r in rows]) for k in FEATURES))


def midi_primer(path: Path, length: int, manifest: dict[str, Any]) -> tuple[Notes, float | None]:
    """The first `length` notes of a MIDI file's first (non-drum) track, and its tempo."""
    import pretty_midi

    if path.is_dir():
        raise LakhflowError(f"generate.primer_midi: {path} is a folder, not a MIDI file")
    if not path.is_file():
        raise LakhflowError(f"generate.primer_midi: {path} does not exist")
    try:
        midi = pretty_midi.PrettyMIDI(str(path))
    except Exception as exc:  # mido/pretty_midi raise many types for a file that is not MIDI
        raise LakhflowError(
            f"generate.primer_midi: {path.name} is not a MIDI file ({type(exc).__name__})"
        ) from None
    tracks = [i for i in midi.instruments if i.notes and not i.is_drum] or [
        i for i in midi.instruments if i.notes
    ]
    if not tracks:
        raise LakhflowError(f"generate.primer_midi: {path.name} has no notes")
    notes = sorted(tracks[0].notes, key=lambda n: (n.start, n.pitch))[:length]
    start = np.asarray([n.start for n in notes])
    end = np.asarray([n.end for n in notes])
    if manifest.get("time_unit", "beats") == "beats":
        start = np.asarray([midi.time_to_tick(t) for t in start]) / midi.resolution
        end = np.asarray([midi.time_to_tick(t) for t in end]) / midi.resolution
    step = np.diff(start, prepend=start[0])
    _, tempi = midi.get_tempo_changes()
    tempo = float(tempi[0]) if len(tempi) else None
    primer = Notes(
        np.asarray([n.pitch for n in notes], np.int64),
        step.astype(np.float64),
        (end - start).astype(np.float64),
        np.asarray([n.velocity for n in notes], np.int64),
    )
    return primer, tempo
