"""Note histograms: counted in ticks where a parser gives them, else from the beats, alike."""

from __future__ import annotations

import dataclasses

import mido
import numpy as np
from conftest import make_midi

from pipelines import midi
from pipelines.note_histograms import STEP_EDGES, NoteHistograms, program_names


def two_track_midi() -> bytes:
    """A piano line of eighths, quarters and a chord, and a bass of half notes (480 ticks/beat)."""
    tracks = []
    for channel, program, notes in [
        (0, 0, [(0, 60, 240), (240, 64, 480), (720, 67, 480), (720, 72, 960)]),
        (1, 33, [(0, 36, 960), (960, 43, 960)]),
    ]:
        events = [(0, mido.Message("program_change", channel=channel, program=program))]
        for start, pitch, length in notes:
            events.append(
                (start, mido.Message("note_on", channel=channel, note=pitch, velocity=90))
            )
            events.append((start + length, mido.Message("note_off", channel=channel, note=pitch)))
        events.sort(key=lambda e: (e[0], e[1].type == "note_on"))
        tracks.append(events)
    return make_midi(tracks)


def bin_of(beats: float) -> int:
    return int(np.searchsorted(STEP_EDGES, beats, side="right") - 1)


def test_ticks_and_beats_give_the_same_counts() -> None:
    notes = midi.parse_midi(two_track_midi())
    assert notes.start_ticks is not None  # symusic gives ticks: the table path
    by_ticks, by_beats = NoteHistograms(), NoteHistograms()
    by_ticks.add(notes)
    by_beats.add(dataclasses.replace(notes, start_ticks=None, end_ticks=None))
    assert by_ticks.to_json() == by_beats.to_json()
    # Steps within a track only: piano 0.5, 1, 0 (the chord); bass 2.
    expected_steps = np.bincount([bin_of(b) for b in (0.5, 1.0, 0.0, 2.0)], minlength=37)
    np.testing.assert_array_equal(by_ticks.step, expected_steps)
    assert (
        int(by_ticks.duration.sum()) == 6
        and int(by_ticks.pitch[[60, 64, 67, 72, 36, 43]].sum()) == 6
    )
    assert program_names(by_ticks) == {"Acoustic Grand Piano": 4, "Electric Bass (finger)": 2}


def test_merged_counts_survive_their_json() -> None:
    one = NoteHistograms()
    one.add(midi.parse_midi(two_track_midi()))
    total = NoteHistograms(one.to_json())
    total.merge(one)
    assert total.to_json()["pitch"][60] == 2 and total.drums == 0
    assert NoteHistograms(total.to_json()).to_json() == total.to_json()
