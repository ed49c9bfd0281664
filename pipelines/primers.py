"""Primers: the notes a generated piece starts from, as the model's `Notes` [count, P].

From a list of pitches (at the training data's typical step, duration and velocity, in the most
common part), from a MIDI file (its tracks as the sequences stage would stream them: merged into
one score with their parts in score mode, the first track in track mode), or from windows of the
test split chosen by the seed.
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
        np.asarray(pitches, np.int64),
        steps,
        np.full(n, duration),
        np.full(n, velocity, np.int64),
        np.full(n, common_part(manifest), np.int64),
    )


def common_part(manifest: Mapping[str, Any]) -> int:
    """The part with the most training notes (the first of equals); 0 without a vocabulary."""
    vocabulary = (manifest.get("parts") or {}).get("vocabulary") or []
    best = max(vocabulary, key=lambda p: p["notes"], default=None)
    return int(best["index"]) if best else 0


def window_primers(rows: Sequence[Mapping[str, np.ndarray]], length: int) -> Notes:
    """The first `length` notes of each window as one [B, length] batch."""
    return Notes(*(np.stack([np.asarray(r[k])[:length] for r in rows]) for k in FEATURES))


def midi_primer(path: Path, length: int, manifest: dict[str, Any]) -> tuple[Notes, float | None]:
    """The first `length` notes of a MIDI file as the model's training streams held them, and
    the file's first tempo. In score mode all its tracks (drums only where the model learned a
    drum part), merged with their parts; in track mode its first such track."""
    from pipelines import streams
    from pipelines.config import Sequences
    from pipelines.midi import parse_midi

    if path.is_dir():
        raise LakhflowError(f"generate.primer_midi: {path} is a folder, not a MIDI file")
    if not path.is_file():
        raise LakhflowError(f"generate.primer_midi: {path} does not exist")
    try:
        parsed = parse_midi(path.read_bytes())
    except Exception as exc:  # every parser error, as the parse stage (some are bare Exception)
        raise LakhflowError(
            f"generate.primer_midi: {path.name} is not a MIDI file ({type(exc).__name__})"
        ) from None
    parts = manifest.get("parts") or {}
    p = Sequences(
        mode=manifest.get("mode", "track"),
        time_unit=manifest.get("time_unit", "beats"),
        max_part_rank=int(parts.get("max_rank", Sequences().max_part_rank)),
    )
    notes = parsed.columns
    drums = any(v["family"] == "drums" for v in parts.get("vocabulary", []))
    tracks = [
        (track, rows)
        for track, rows in streams.track_slices(notes)
        if drums or not notes["is_drum"][rows.start]
    ]
    if not tracks:
        raise LakhflowError(f"generate.primer_midi: {path.name} has no notes")
    part = streams.track_parts(notes, tracks, p.max_part_rank)
    voices = [
        streams.Stream(t, np.arange(rows.start, rows.stop), np.full(rows.stop - rows.start, q))
        for (t, rows), q in zip(tracks, part, strict=True)
    ]
    stream = streams.merge(notes, voices, p) if p.mode == "score" else voices[0]
    stream = streams.Stream(stream.track, stream.rows[:length], stream.part[:length])
    features = streams.stream_features(notes, stream, p)
    primer = Notes(
        **{
            k: features[k].astype(np.float64 if k in ("step", "duration") else np.int64)
            for k in FEATURES
        }
    )
    return primer, first_tempo(path)


def first_tempo(path: Path) -> float | None:
    import pretty_midi

    try:
        _, tempi = pretty_midi.PrettyMIDI(str(path)).get_tempo_changes()
    except Exception:  # parse_midi read it; a tempo pretty_midi cannot read is left to the data
        return None
    return float(tempi[0]) if len(tempi) else None
