"""MIDI bytes -> notes: the FIFO pairing policy, tracks, tempo and the traps, for both parsers."""

from __future__ import annotations

import random
from pathlib import Path

import mido
import numpy as np
import pytest
from conftest import make_midi

from pipelines import midi
from pipelines.errors import LakhflowError

PARSERS = ["symusic", "pretty_midi"]


def on(tick: int, pitch: int, velocity: int = 64, channel: int = 0):
    return (tick, mido.Message("note_on", note=pitch, velocity=velocity, channel=channel))


def off(tick: int, pitch: int, channel: int = 0):
    return (tick, mido.Message("note_off", note=pitch, velocity=0, channel=channel))


def program(tick: int, number: int, channel: int = 0):
    return (tick, mido.Message("program_change", program=number, channel=channel))


def tempo(tick: int, bpm: float | None = None, mspq: int | None = None):
    value = mspq if mspq is not None else mido.bpm2tempo(bpm)
    return (tick, mido.MetaMessage("set_tempo", tempo=value))


def notes_of(data: bytes, parser: str) -> list[tuple]:
    """(track, start_beat, end_beat, pitch, velocity) per note, at tpb 480 -> beats exact."""
    c = midi.parse_midi(data, parser).columns
    return [
        (int(t), float(s), float(e), int(p), int(v))
        for t, s, e, p, v in zip(
            c["track"], c["start_beat"], c["end_beat"], c["pitch"], c["velocity"], strict=True
        )
    ]


def beats(ticks: int) -> float:
    return float(np.float32(ticks / 480))  # the table stores float32


@pytest.mark.parametrize("parser", PARSERS)
def test_overlapping_note_ons_pair_first_in_first_out(parser: str) -> None:
    data = make_midi(
        [[on(0, 60, 10), on(100, 60, 20), on(150, 60, 30), off(200, 60), off(300, 60)]]
    )
    # The first off ends the earliest open note; the third note is never ended: dropped.
    assert notes_of(data, parser) == [
        (0, 0.0, beats(200), 60, 10),
        (0, beats(100), beats(300), 60, 20),
    ]


@pytest.mark.parametrize("parser", PARSERS)
def test_note_on_and_off_on_the_same_tick(parser: str) -> None:
    zero_length = make_midi([[on(0, 60, 10), off(0, 60), on(100, 62, 20), off(200, 62)]])
    assert notes_of(zero_length, parser) == [
        (0, 0.0, 0.0, 60, 10),  # kept, zero length
        (0, beats(100), beats(200), 62, 20),
    ]
    # A retrigger: the off at tick 100 ends the note from tick 0, not the one starting at 100.
    retrigger = make_midi([[on(0, 60, 10), off(100, 60), on(100, 60, 20), off(200, 60)]])
    on_first = make_midi([[on(0, 60, 10), on(100, 60, 20), off(100, 60), off(200, 60)]])
    expected = [(0, 0.0, beats(100), 60, 10), (0, beats(100), beats(200), 60, 20)]
    assert notes_of(retrigger, parser) == expected
    assert notes_of(on_first, parser) == expected
    # Two notes on one tick and an off on that tick: FIFO ends the first one there.
    same_tick = make_midi([[on(0, 60, 10), on(0, 60, 20), off(0, 60), off(100, 60)]])
    assert notes_of(same_tick, parser) == [(0, 0.0, 0.0, 60, 10), (0, 0.0, beats(100), 60, 20)]


@pytest.mark.parametrize("parser", PARSERS)
def test_note_off_sent_as_note_on_with_velocity_zero(parser: str) -> None:
    data = make_midi([[on(0, 62, 30), on(0, 64, 40), on(240, 62, 0), on(480, 64, 0), off(500, 64)]])
    # The spurious off at 500 (nothing open) is ignored.
    assert notes_of(data, parser) == [
        (0, 0.0, beats(240), 62, 30),
        (0, 0.0, beats(480), 64, 40),
    ]


@pytest.mark.parametrize("parser", PARSERS)
def test_tracks_split_by_channel_and_program_at_note_on(parser: str) -> None:
    data = make_midi(
        [
            [tempo(0, bpm=120)],
            [
                program(0, 40, channel=3), on(0, 60, channel=3), off(10, 60, channel=3),
                program(0, 7), on(0, 50), program(5, 5), off(10, 50), on(20, 51), off(30, 51),
                on(0, 36, channel=9), off(10, 36, channel=9),
                on(0, 70, channel=4),  # never ended: its (channel, program) has no notes
            ],
            [on(0, 80, channel=1), off(10, 80, channel=1)],
        ]
    )  # fmt: skip
    parsed = midi.parse_midi(data, parser)
    c = parsed.columns
    # MIDI track order, then channel, then program; the note 50 keeps program 7 (its note-on).
    assert parsed.n_tracks == 5
    assert c["track"].tolist() == [0, 1, 2, 3, 4]
    assert c["pitch"].tolist() == [51, 50, 60, 36, 80]
    assert c["program"].tolist() == [5, 7, 40, 0, 0]
    assert c["is_drum"].tolist() == [False, False, False, True, False]


@pytest.mark.parametrize("parser", PARSERS)
def test_seconds_follow_tempo_changes_in_any_track(parser: str) -> None:
    data = make_midi(
        [
            [tempo(0, bpm=100), tempo(480, bpm=60), tempo(1440, mspq=0)],  # zero tempo: ignored
            [tempo(960, bpm=200), on(0, 60), off(480, 60), on(960, 61), off(1440, 61)],
        ]
    )
    parsed = midi.parse_midi(data, parser)
    c = parsed.columns
    np.testing.assert_allclose(c["start"], [0.0, 0.6 + 1.0], rtol=1e-6)
    np.testing.assert_allclose(c["end"], [0.6, 1.6 + 0.3], rtol=1e-6)
    np.testing.assert_allclose(c["start_beat"], [0.0, 2.0])
    np.testing.assert_allclose(c["end_beat"], [1.0, 3.0])
    assert parsed.duration_s == pytest.approx(1.9, rel=1e-6)
    for name, dtype in midi.COLUMN_DTYPES.items():
        assert c[name].dtype == dtype


@pytest.mark.parametrize("parser", PARSERS)
def test_corrupt_files_raise(parser: str) -> None:
    huge = make_midi([[on(0, 60), off(20_000_000, 60)]])
    with pytest.raises(ValueError, match="largest tick"):
        midi.parse_midi(huge, parser)
    for broken in (b"", b"MThx" + huge[4:], bytes(range(256)), huge[:20]):
        with pytest.raises(Exception):  # noqa: B017 (each parser raises its own types)
            midi.parse_midi(broken, parser)


def random_midi(rng: random.Random) -> bytes:
    tracks = []
    for _ in range(rng.randint(1, 4)):
        events = []
        for _ in range(rng.randint(0, 60)):
            tick, channel, pitch = rng.randint(0, 2000), rng.choice([0, 1, 9]), rng.choice([60, 62])
            r = rng.random()
            if r < 0.4:
                events.append(on(tick, pitch, rng.randint(1, 127), channel))
            elif r < 0.6:
                events.append(off(tick, pitch, channel))
            elif r < 0.8:
                events.append(on(tick, pitch, 0, channel))
            elif r < 0.9:
                events.append(program(tick, rng.randint(0, 3), channel))
            else:
                events.append(tempo(tick, mspq=rng.choice([0, 12, 300_000, 500_000, 1_000_000])))
        tracks.append(events)
    return make_midi(tracks, tpb=rng.choice([96, 220, 480]))


def test_both_parsers_agree_on_random_overlapping_files() -> None:
    rng = random.Random(7)
    for _ in range(150):
        data = random_midi(rng)
        a, b = (midi.parse_midi(data, parser) for parser in PARSERS)
        assert (a.n_tracks, a.duration_s) == (b.n_tracks, b.duration_s)
        for name in midi.NOTE_COLUMNS:
            np.testing.assert_array_equal(a.columns[name], b.columns[name], err_msg=name)


def test_tempo_map_policy() -> None:
    ticks, mspq = midi.tempo_map([(0, 600_000), (0, 1_000_000), (10, 0), (20, 12), (30, 400_000)])
    assert ticks.tolist() == [0, 30]
    assert mspq.tolist() == [1_000_000, 400_000]
    assert midi.tempo_map([])[1].tolist() == [midi.DEFAULT_MSPQ]


# --------------------------------------------------------------------------- the model's notes


def test_a_written_piece_reads_back_in_beats_and_seconds(tmp_path: Path) -> None:
    piece = midi.Notes(
        np.array([64, 60, 67]), np.array([0.0, 0.0, 1.5]), np.array([1.0, 2.0, 0.5]),
        np.array([90, 80, 70]), np.zeros(3, np.int64),
    )  # fmt: skip
    assert piece.starts().tolist() == [0.0, 0.0, 1.5]
    path = tmp_path / "piece.mid"
    one = {0: midi.PartTrack("piano-1", 0)}
    midi.to_midi(piece, {"time_unit": "beats"}, tempo_bpm=120.0, tracks=one).write(str(path))
    pitch, start, end = midi.read_midi_notes(path, "beats")
    # Ordered by start then pitch, whatever order the piece gave them in.
    assert pitch.tolist() == [60, 64, 67]
    assert start.tolist() == pytest.approx([0.0, 0.0, 1.5])
    assert end.tolist() == pytest.approx([2.0, 1.0, 2.0])
    _, seconds, _ = midi.read_midi_notes(path, "seconds")
    assert seconds.tolist() == pytest.approx([0.0, 0.0, 0.75])  # 120 beats per minute


def test_the_time_unit_and_tempo_come_from_the_manifest() -> None:
    assert midi.tempo_of({"tempo_bpm": 90}) == 90.0
    assert midi.tempo_of({}) == midi.tempo_of({"tempo_bpm": 0}) == midi.DEFAULT_TEMPO_BPM
    assert midi.seconds_per_unit({"time_unit": "beats"}, 120.0) == 0.5
    assert midi.seconds_per_unit({"time_unit": "seconds"}, 120.0) == 1.0


def test_a_generated_file_that_does_not_read_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.mid"
    path.write_bytes(b"MThd")
    with pytest.raises(LakhflowError, match=r"broken\.mid is not a readable MIDI file") as e:
        midi.read_midi_notes(path, "beats")
    assert "\n" not in str(e.value)


# A chorale's soprano and bass on piano and cello, strings above them, and a drum kit: given in
# time order, as a sampler writes them, with the parts interleaved.
PARTS = {
    0: midi.PartTrack("piano-1", 0),
    3: midi.PartTrack("piano-4", 42),
    20: midi.PartTrack("strings-1", 48),
    64: midi.PartTrack("drums-1", 0, is_drum=True),
}


def test_a_piece_in_parts_is_one_track_per_part_in_part_order(tmp_path: Path) -> None:
    import pretty_midi

    part = np.array([64, 3, 0, 20, 0, 3, 64])
    pitch = np.array([36, 48, 72, 84, 74, 50, 38])
    start = np.array([0.0, 0.0, 0.0, 0.5, 0.5, 1.0, 1.0])
    end = np.array([0.25, 1.0, 0.5, 1.5, 1.0, 2.0, 1.0])  # the last: a zero-length drum hit
    velocity = np.array([100, 60, 90, 70, 80, 65, 110])
    path = tmp_path / "parts.mid"
    written = midi.parts_to_midi(pitch, start, end, velocity, part, PARTS, tempo_bpm=120.0)
    written.write(str(path))

    back = pretty_midi.PrettyMIDI(str(path))
    assert [(i.name, i.program, i.is_drum) for i in back.instruments] == [
        ("piano-1", 0, False), ("piano-4", 42, False), ("strings-1", 48, False),
        ("drums-1", 0, True),
    ]  # fmt: skip
    tick = 60.0 / (120.0 * back.resolution)
    for instrument, index in zip(back.instruments, sorted(PARTS), strict=True):
        rows = np.flatnonzero(part == index)
        notes = [(n.pitch, n.velocity, n.start, n.end) for n in instrument.notes]
        want = [(pitch[i], velocity[i], start[i], max(end[i], start[i] + tick)) for i in rows]
        assert [n[:2] for n in notes] == [w[:2] for w in want], instrument.name
        assert np.allclose([n[2:] for n in notes], [w[2:] for w in want], atol=1e-6)
    assert back.instruments[3].notes[1].end - back.instruments[3].notes[1].start == (
        pytest.approx(tick)  # at least one tick long, as in to_midi
    )


def test_a_part_without_a_track_is_refused() -> None:
    one = np.ones(1)
    with pytest.raises(ValueError, match=r"parts \[7\] have no track"):
        midi.parts_to_midi(one * 60, one * 0, one, one * 90, np.array([7]), PARTS, 120.0)


def test_to_midi_writes_each_part_on_its_track() -> None:
    piece = midi.Notes(np.array([60, 64, 48]), np.array([0.0, 1.0, 0.0]),
                       np.array([1.0, 0.0, 2.0]), np.array([90, 80, 70]),
                       np.array([0, 0, 3]))  # fmt: skip
    tracks = {0: midi.PartTrack("piano-1", 40), 3: midi.PartTrack("piano-4", 42)}
    written = midi.to_midi(piece, {"time_unit": "beats"}, tempo_bpm=60.0, tracks=tracks)
    high, low = written.instruments
    assert (high.name, high.program, low.name, low.program) == ("piano-1", 40, "piano-4", 42)
    assert [(n.pitch, n.start) for n in high.notes] == [(60, 0.0), (64, 1.0)]
    assert [(n.pitch, n.start, n.end) for n in low.notes] == [(48, 1.0, 3.0)]
    assert high.notes[1].end - high.notes[1].start == pytest.approx(1 / written.resolution)
