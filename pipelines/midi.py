"""MIDI bytes -> note arrays, with symusic (fast, default) or pretty_midi, under one pairing policy;
and the model's `Notes` (pitch, step, duration, velocity) written as a MIDI file (`to_midi`; a
piece in parts, one track per part: `parts_to_midi`), and a written file's notes read back
(`read_midi_notes`; with each note's part from its track's name: `read_midi_parts`).

Both parsers give tick-level notes grouped into tracks; `assemble_notes` turns them into the note
table's columns (seconds from the tempo map, beats = ticks / ticks_per_beat) the same way.

Note pairing policy (FIFO): a note-off (or a note-on with velocity 0) ends the EARLIEST still
open note of the same channel and pitch, even one that started on the same tick (a zero-length
note is kept); a note-off with nothing open is ignored and notes never ended are dropped. A note
keeps the program its channel had at its note-on. symusic 0.6 pairs this way natively; the
pretty_midi path plugs the same policy into pretty_midi's loader (its own policy closes every
open note of the pitch at once and drops same-tick notes, which is why the two used to differ).

Tracks: for each MIDI track in file order, one track per (channel, program) that holds notes,
ordered by channel then program; channel 10 (index 9) is drums. Tempo: set_tempo events of all
tracks, in track order, stably sorted by tick; the last one on a tick wins; the tempo before the
first is 120 qpm; a tempo under 1 ms per quarter (over 60,000 qpm; zero included) is corrupt and
ignored.
"""

from __future__ import annotations

import collections
import io
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipelines.errors import LakhflowError
from pipelines.schema import NOTE_FEATURES

Parser = Literal["symusic", "pretty_midi"]

# pretty_midi's own bound (pretty_midi.MAX_TICK): a larger tick is a corrupt file. Never raise it.
MAX_TICK = 10_000_000
DEFAULT_MSPQ = 500_000  # 120 quarter notes per minute, the MIDI default
MIN_MSPQ = 1_000  # faster than 60,000 qpm is not music but a corrupt tempo event
DRUM_CHANNEL = 9

NOTE_COLUMNS = (
    "track",
    "program",
    "is_drum",
    "pitch",
    "velocity",
    "start",
    "end",
    "start_beat",
    "end_beat",
)
COLUMN_DTYPES: dict[str, Any] = {
    "track": np.int16,
    "program": np.int8,
    "is_drum": np.bool_,
    "pitch": np.int8,
    "velocity": np.int8,
    "start": np.float32,
    "end": np.float32,
    "start_beat": np.float32,
    "end_beat": np.float32,
}


class CorruptMidi(ValueError):
    """A file that reads but cannot be music: huge ticks, no time base."""


@dataclass
class TickTrack:
    """One track's notes in ticks, as a parser found them (any order)."""

    program: int
    is_drum: bool
    start: np.ndarray  # int64 ticks
    end: np.ndarray
    pitch: np.ndarray
    velocity: np.ndarray


@dataclass
class TickNotes:
    """A file's notes in ticks, track after track (tracks with notes only; any order within)."""

    sizes: list[int]  # notes per track
    programs: list[int]
    drums: list[bool]
    start: np.ndarray  # int64 ticks
    end: np.ndarray  # int64 ticks
    pitch: np.ndarray  # any integer type
    velocity: np.ndarray

    @classmethod
    def from_tracks(cls, tracks: list[TickTrack]) -> TickNotes:
        kept = [t for t in tracks if len(t.start)]
        if not kept:
            empty = np.zeros(0, dtype=np.int64)
            return cls([], [], [], empty, empty, empty, empty)
        return cls(
            [len(t.start) for t in kept],
            [t.program for t in kept],
            [t.is_drum for t in kept],
            np.concatenate([t.start for t in kept]).astype(np.int64),
            np.concatenate([t.end for t in kept]).astype(np.int64),
            np.concatenate([t.pitch for t in kept]),
            np.concatenate([t.velocity for t in kept]),
        )


@dataclass
class FileNotes:
    """One file's notes as the note table's columns (no file_id), sorted by track, start, pitch."""

    columns: dict[str, np.ndarray]
    n_tracks: int
    duration_s: float
    ticks_per_beat: int
    # The notes' start and end in ticks (int64, in the columns' order): exact steps and
    # durations for the histograms, without going back through the float32 beats.
    start_ticks: np.ndarray | None = None
    end_ticks: np.ndarray | None = None

    @property
    def n_notes(self) -> int:
        return len(self.columns["pitch"])


def parse_midi(data: bytes, parser: Parser = "symusic") -> FileNotes:
    """Parse one MIDI file's bytes into note columns; raises on a corrupt file."""
    if parser == "symusic":
        notes, tempos, tpb = symusic_notes(data)
    elif parser == "pretty_midi":
        tracks, tempos, tpb = pretty_midi_tracks(data)
        notes = TickNotes.from_tracks(tracks)
    else:
        raise ValueError(f"unknown parser {parser!r}")
    return assemble_notes(notes, tempos, tpb)


def symusic_notes(data: bytes) -> tuple[TickNotes, list[tuple[int, int]], int]:
    import symusic

    score: Any = symusic.Score.from_midi(data)
    sizes, programs, drums = [], [], []
    times, durations, pitches, velocities = [], [], [], []
    for track in score.tracks:
        notes = track.notes.numpy()
        time = notes["time"]
        if len(time):
            sizes.append(len(time))
            programs.append(int(track.program))
            drums.append(bool(track.is_drum))
            times.append(time)
            durations.append(notes["duration"])
            pitches.append(notes["pitch"])
            velocities.append(notes["velocity"])
    tempo_arrays = score.tempos.numpy()
    tempos = list(zip(tempo_arrays["time"].tolist(), tempo_arrays["mspq"].tolist(), strict=True))
    tpb = int(score.ticks_per_quarter)
    if not sizes:
        return TickNotes.from_tracks([]), tempos, tpb
    # One concatenation per column for the whole file, not a conversion per track.
    start = np.concatenate(times).astype(np.int64)
    end = start + np.concatenate(durations)
    notes = TickNotes(
        sizes, programs, drums, start, end, np.concatenate(pitches), np.concatenate(velocities)
    )
    return notes, tempos, tpb


def pretty_midi_tracks(data: bytes) -> tuple[list[TickTrack], list[tuple[int, int]], int]:
    with warnings.catch_warnings():
        # "Tempo ... on non-zero tracks": the policy reads tempo from every track on purpose.
        warnings.simplefilter("ignore", RuntimeWarning)
        midi = _policy_pretty_midi()(io.BytesIO(data))
    return midi.tick_tracks, midi.tick_tempos, int(midi.resolution)


_POLICY_CLASS: Any = None


def _policy_pretty_midi() -> Any:
    """pretty_midi.PrettyMIDI with the project's pairing, tracks and tempo map plugged in.

    pretty_midi reads the file (mido), makes ticks absolute and refuses ticks over MAX_TICK;
    the hooks below replace only what the policy fixes, and skip the float array of
    max_tick + 1 entries that pretty_midi would otherwise allocate.
    """
    global _POLICY_CLASS
    if _POLICY_CLASS is not None:
        return _POLICY_CLASS
    import pretty_midi

    class PolicyMIDI(pretty_midi.PrettyMIDI):
        tick_tracks: list[TickTrack]
        tick_tempos: list[tuple[int, int]]

        def _load_tempo_changes(self, midi_data: Any) -> None:
            self.tick_tempos = [
                (int(event.time), int(event.tempo))
                for track in midi_data.tracks
                for event in track
                if event.type == "set_tempo"
            ]

        def _update_tick_to_time(self, max_tick: int) -> None:
            pass  # seconds come from `assemble_notes`'s tempo map, not a max_tick-long array

        def _load_metadata(self, midi_data: Any) -> None:
            pass  # key/time signatures and lyrics are not part of the note table

        def _load_instruments(self, midi_data: Any) -> None:
            self.instruments: list[Any] = []
            self.tick_tracks = []
            for track in midi_data.tracks:
                self.tick_tracks.extend(pair_events(track))

    _POLICY_CLASS = PolicyMIDI
    return PolicyMIDI


def pair_events(events: Any) -> list[TickTrack]:
    """FIFO pairing of one MIDI track's messages (absolute ticks in `.time`) into tracks."""
    program = [0] * 16
    open_notes: dict[tuple[int, int], collections.deque[tuple[int, int, int]]] = (
        collections.defaultdict(collections.deque)
    )
    groups: dict[tuple[int, int], list[tuple[int, int, int, int]]] = {}
    for event in events:
        kind = event.type
        if kind == "note_on" and event.velocity > 0:
            open_notes[(event.channel, event.note)].append(
                (event.time, event.velocity, program[event.channel])
            )
        elif kind == "note_off" or kind == "note_on":
            queue = open_notes.get((event.channel, event.note))
            if queue:
                start, velocity, note_program = queue.popleft()
                groups.setdefault((event.channel, note_program), []).append(
                    (start, event.time, event.note, velocity)
                )
        elif kind == "program_change":
            program[event.channel] = event.program
    tracks = []
    for channel, note_program in sorted(groups):
        notes = np.array(groups[(channel, note_program)], dtype=np.int64)
        tracks.append(
            TickTrack(
                program=note_program,
                is_drum=channel == DRUM_CHANNEL,
                start=notes[:, 0],
                end=notes[:, 1],
                pitch=notes[:, 2],
                velocity=notes[:, 3],
            )
        )
    return tracks


def tempo_map(tempos: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """(ticks, mspq) of each tempo segment, starting at tick 0, per the policy above."""
    ticks = [0]
    mspq = [DEFAULT_MSPQ]
    for tick, value in sorted(tempos, key=lambda t: t[0]):  # sorted() is stable
        if value < MIN_MSPQ:
            continue
        if tick == ticks[-1]:
            mspq[-1] = value
        else:
            ticks.append(tick)
            mspq.append(value)
    return np.array(ticks, dtype=np.int64), np.array(mspq, dtype=np.float64)


def ticks_to_seconds(ticks: np.ndarray, tempos: list[tuple[int, int]], tpb: int) -> np.ndarray:
    starts, mspq = tempo_map(tempos)
    seconds_per_tick = mspq / 1e6 / tpb
    if len(starts) == 1:  # one tempo for the whole file, as in most
        return ticks * seconds_per_tick[0]
    segment_seconds = np.concatenate([[0.0], np.cumsum(np.diff(starts) * seconds_per_tick[:-1])])
    index = np.searchsorted(starts, ticks, side="right")
    index -= 1
    # segment_seconds + (ticks - segment start) * seconds_per_tick, the same operations in the
    # same order (so the same floats), in place and with take(): twice as fast as fancy indexing
    seconds = np.subtract(ticks, starts.take(index)).astype(np.float64)
    seconds *= seconds_per_tick.take(index)
    seconds += segment_seconds.take(index)
    return seconds


def note_order(
    track: np.ndarray, start: np.ndarray, pitch: np.ndarray, end: np.ndarray, velocity: np.ndarray
) -> np.ndarray:
    """Sort by track, start, pitch, then end and velocity: a total order on the notes' content,
    so both parsers' outputs sort to the same rows whatever order they came in."""
    # One packed key holds all five where it fits in 63 bits (nearly always: a file needs
    # 2**10 tracks, 2**20 ticks and notes 2**12 ticks long to come near), and one stable sort
    # of it (timsort, quick on the nearly sorted tracks parsers give) is ten times faster than
    # lexsort. With start equal, the order of the duration is the order of the end.
    duration = end - start
    widths = [int(a.max()).bit_length() for a in (track, start, duration)]
    in_range = min(int(duration.min()), int(pitch.min()), int(velocity.min())) >= 0
    if in_range and max(int(pitch.max()), int(velocity.max())) < 128 and sum(widths) + 14 <= 63:
        key = track << widths[1]
        key |= start
        key <<= 7
        key |= pitch
        key <<= widths[2]
        key |= duration
        key <<= 7
        key |= velocity
        return np.argsort(key, kind="stable")
    # Packed keys (track < 2**15, start <= MAX_TICK < 2**24, pitch < 2**7) then ties.
    key = (track << 31) | (start << 7) | pitch
    order = np.argsort(key, kind="stable")
    if np.any(np.diff(key[order]) == 0):
        # ties: sort by (end, velocity) first, then stably by the key (end <= MAX_TICK too)
        order = np.argsort((end << 7) | velocity, kind="stable")
        order = order[np.argsort(key[order], kind="stable")]
    return order


def assemble_notes(notes: TickNotes, tempos: list[tuple[int, int]], tpb: int) -> FileNotes:
    """Tick notes -> the note table's columns, with both times, sorted by track/start/pitch."""
    if tpb <= 0:
        raise CorruptMidi(f"ticks per quarter note is {tpb} (SMPTE or corrupt time base)")
    if not notes.sizes:
        empty = {name: np.zeros(0, dtype=dtype) for name, dtype in COLUMN_DTYPES.items()}
        return FileNotes(empty, n_tracks=0, duration_s=0.0, ticks_per_beat=tpb)
    start, end = notes.start, notes.end
    largest = int(end.max())
    if largest > MAX_TICK or int(start.min()) < 0:
        raise CorruptMidi(f"MIDI file has a largest tick of {largest}, it is likely corrupt")
    sizes = notes.sizes
    track = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
    pitch = notes.pitch.astype(np.int64)
    velocity = notes.velocity.astype(np.int64)
    order = note_order(track, start, pitch, end, velocity)
    # Track leads the sort and the tracks are already concatenated in order, so `track` (and
    # with it program and is_drum) needs no reordering; the narrow columns are gathered narrow.
    start, end = start.take(order), end.take(order)
    pitch8 = notes.pitch.astype(np.int8).take(order)
    velocity8 = notes.velocity.astype(np.int8).take(order)
    program = np.repeat(np.array(notes.programs, dtype=np.int8), sizes)
    is_drum = np.repeat(np.array(notes.drums, dtype=np.bool_), sizes)
    seconds = ticks_to_seconds(np.concatenate([start, end]), tempos, tpb)
    n = len(start)
    columns: dict[str, np.ndarray] = {
        "track": track.astype(np.int16),
        "program": program,
        "is_drum": is_drum,
        "pitch": pitch8,
        "velocity": velocity8,
        "start": seconds[:n].astype(np.float32),
        "end": seconds[n:].astype(np.float32),
        "start_beat": (start / tpb).astype(np.float32),
        "end_beat": (end / tpb).astype(np.float32),
    }
    return FileNotes(
        columns,
        n_tracks=len(sizes),
        duration_s=float(seconds[n:].max()),
        ticks_per_beat=tpb,
        start_ticks=start,
        end_ticks=end,
    )


# --------------------------------------------------------------------------- the model's notes

FEATURES = NOTE_FEATURES  # a note as the model sees it (schema)
DEFAULT_TEMPO_BPM = 120.0


@dataclass
class Notes:
    """Notes of one piece (or a batch of equally long pieces) in the model's time unit."""

    pitch: np.ndarray
    step: np.ndarray
    duration: np.ndarray
    velocity: np.ndarray
    part: np.ndarray  # each note's index in the manifest's part vocabulary

    def __len__(self) -> int:
        return int(self.pitch.shape[-1])

    def repeated(self, count: int) -> Notes:
        """This piece `count` times over, as a batch [count, P]."""
        return Notes(**{k: np.repeat(getattr(self, k)[None], count, axis=0) for k in FEATURES})

    def as_inputs(self) -> dict[str, np.ndarray]:
        return {
            "pitch": self.pitch.astype(np.int32),
            "step": self.step.astype(np.float32),
            "duration": self.duration.astype(np.float32),
            "velocity": self.velocity.astype(np.int32),
            "part": self.part.astype(np.int32),
        }

    def take(self, index: Any) -> Notes:
        return Notes(**{k: getattr(self, k)[index] for k in FEATURES})

    def starts(self) -> np.ndarray:
        """Onsets from the first note (the first note's own step is the gap before the piece)."""
        step = np.asarray(self.step, dtype=np.float64)
        return np.cumsum(step) - step[..., :1]


def tempo_of(manifest: Mapping[str, Any]) -> float:
    tempo = manifest.get("tempo_bpm")
    return float(tempo) if tempo and tempo > 0 else DEFAULT_TEMPO_BPM


def seconds_per_unit(manifest: Mapping[str, Any], tempo_bpm: float) -> float:
    return 60.0 / tempo_bpm if manifest.get("time_unit", "beats") == "beats" else 1.0


# --------------------------------------------------------------------------- MIDI files


@dataclass(frozen=True)
class PartTrack:
    """How one part is written: its track's name ("piano-1"), program, and whether it is drums."""

    name: str
    program: int
    is_drum: bool = False


def parts_to_midi(
    pitch: np.ndarray,
    start_s: np.ndarray,
    end_s: np.ndarray,
    velocity: np.ndarray,
    part: np.ndarray,
    tracks: Mapping[int, PartTrack],
    tempo_bpm: float,
) -> Any:
    """A pretty_midi.PrettyMIDI of one piece in parts: one instrument per part present, in
    part-index order, named and voiced by `tracks[part]`; times in seconds at `tempo_bpm`."""
    import pretty_midi

    part = np.asarray(part, dtype=np.int64)
    missing = sorted(set(np.unique(part).tolist()) - set(tracks))
    if missing:
        raise ValueError(f"parts {missing} have no track")
    midi = pretty_midi.PrettyMIDI(initial_tempo=tempo_bpm)
    starts = np.asarray(start_s, dtype=np.float64)
    # A note needs some length to exist in a MIDI file: at least one tick.
    min_length = 60.0 / (tempo_bpm * midi.resolution)
    ends = np.maximum(np.asarray(end_s, dtype=np.float64), starts + min_length)
    for index in np.unique(part).tolist():
        track = tracks[index]
        instrument = pretty_midi.Instrument(
            program=track.program, is_drum=track.is_drum, name=track.name
        )
        rows = np.flatnonzero(part == index)  # the piece's own order within the part
        instrument.notes = [
            pretty_midi.Note(
                velocity=int(velocity[i]),
                pitch=int(pitch[i]),
                start=float(starts[i]),
                end=float(ends[i]),
            )
            for i in rows.tolist()
        ]
        midi.instruments.append(instrument)
    return midi


def to_midi(
    piece: Notes, manifest: Mapping[str, Any], tempo_bpm: float, tracks: Mapping[int, PartTrack]
) -> Any:
    """A pretty_midi.PrettyMIDI of one piece, a track per part it plays (`parts_to_midi`);
    beats are written at `tempo_bpm`."""
    scale = seconds_per_unit(manifest, tempo_bpm)
    starts = piece.starts() * scale
    ends = starts + np.asarray(piece.duration, np.float64) * scale
    return parts_to_midi(piece.pitch, starts, ends, piece.velocity, piece.part, tracks, tempo_bpm)


def _read_instruments(path: Path, time_unit: str) -> list[tuple[Any, np.ndarray, np.ndarray]]:
    """A written MIDI file's instruments, each with its notes' starts and ends in beats or
    seconds (in the instrument's note order)."""
    import pretty_midi

    try:
        midi = pretty_midi.PrettyMIDI(str(path))
    except Exception as exc:  # a generated file that does not read is the user's to fix
        raise LakhflowError(f"{path} is not a readable MIDI file ({exc})") from None
    out = []
    for inst in midi.instruments:
        start = np.array([n.start for n in inst.notes], dtype=np.float64)
        end = np.array([n.end for n in inst.notes], dtype=np.float64)
        if time_unit == "beats" and len(inst.notes):
            ticks_per_beat = float(midi.resolution)
            start = np.array([midi.time_to_tick(t) for t in start], np.float64) / ticks_per_beat
            end = np.array([midi.time_to_tick(t) for t in end], np.float64) / ticks_per_beat
        out.append((inst, start, end))
    return out


def read_midi_notes(path: Path, time_unit: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A MIDI file's pitched notes ordered by start then pitch, timed in beats or seconds."""
    instruments = _read_instruments(path, time_unit)
    pitched = [(inst, s, e) for inst, s, e in instruments if not inst.is_drum]
    pitch = np.array([n.pitch for inst, _, _ in pitched for n in inst.notes], dtype=np.int64)
    start = np.concatenate([np.empty(0), *(s for _, s, _ in pitched)])
    end = np.concatenate([np.empty(0), *(e for _, _, e in pitched)])
    order = np.lexsort((pitch, start))
    return pitch[order], start[order], end[order]


def read_midi_parts(
    path: Path, time_unit: str, parts: Mapping[str, int], *, score: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A written piece in parts read back: every note (drum tracks too: a part of the model's
    may be drums), each with its part, the index `parts` gives its track's name ("piano-1", as
    parts_to_midi names them); -1 for a track of any other name. The notes are in the order the
    training streams hold them: a score's by start, then part, then pitch from high to low (the
    sequences stage's merge); a track's by start, then pitch."""
    instruments = _read_instruments(path, time_unit)
    pitch = np.array([n.pitch for inst, _, _ in instruments for n in inst.notes], dtype=np.int64)
    part = np.concatenate(
        [np.empty(0, np.int64)]
        + [
            np.full(len(inst.notes), parts.get(inst.name, -1), np.int64)
            for inst, _, _ in instruments
        ]
    )
    start = np.concatenate([np.empty(0), *(s for _, s, _ in instruments)])
    end = np.concatenate([np.empty(0), *(e for _, _, e in instruments)])
    # lexsort is stable and sorts by its last key first
    order = np.lexsort((-pitch, part, start)) if score else np.lexsort((pitch, start))
    return pitch[order], start[order], end[order], part[order]
