"""Primers: a list of pitches at the training data's typical note, a MIDI file's first notes and
tempo (read back from a file the generate stage's own writer made), and windows as one batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import FOUR_VOICES

from pipelines import midi, primers
from pipelines.errors import LakhflowError, ParamsError

# Only what primers read of a shards manifest: each binned head's class values.
MANIFEST: dict[str, Any] = {
    "time_unit": "beats",
    "bins": {
        "step": {"edges": [0.1, 0.4, 0.75, 1.5], "values": [0.0, 0.25, 0.5, 1.0, 2.0]},
        "duration": {"edges": [0.4, 0.75, 1.5, 3.0], "values": [0.25, 0.5, 1.0, 2.0, 4.0]},
        "velocity": {"edges": [50.0, 70.0, 90.0], "values": [40.0, 60.0, 80.0, 100.0]},
    },
    "parts": FOUR_VOICES,
}


def test_a_pitch_list_primer_uses_the_typical_note() -> None:
    primer = primers.pitches_primer("60 62, 64", MANIFEST)
    assert primer.pitch.tolist() == [60, 62, 64]
    assert primer.step.tolist() == [0.0, 0.5, 0.5] and set(primer.velocity) == {80}
    with pytest.raises(ParamsError, match="primer_pitches"):
        primers.pitches_primer("60 do re", MANIFEST)


@pytest.mark.parametrize("text", ["", "60 128", "-1"])
def test_a_pitch_list_outside_midi_is_refused(text: str) -> None:
    with pytest.raises(
        ParamsError, match=r"^generate\.primer_pitches: .* needs pitches in 0\.\.127"
    ):
        primers.pitches_primer(text, MANIFEST)


def test_the_typical_note_is_the_middle_class() -> None:
    assert primers.class_values(MANIFEST, "duration").tolist() == [0.25, 0.5, 1.0, 2.0, 4.0]
    assert primers.typical_note(MANIFEST) == (0.5, 1.0, 80)


def test_windows_become_one_batch_of_their_first_notes() -> None:
    rows = [{k: np.arange(10) + 100 * i for k in midi.FEATURES} for i in range(3)]
    batch = primers.window_primers(rows, 4)
    assert batch.pitch.shape == (3, 4) and len(batch) == 4
    assert batch.step[2].tolist() == [200, 201, 202, 203]


def test_a_midi_primer_is_the_files_first_notes_and_tempo(tmp_path: Path) -> None:
    piece = midi.Notes(
        np.array([60, 64, 67, 72, 71, 69]),
        np.array([0.0, 0.5, 0.5, 1.0, 0.25, 0.25]),
        np.array([0.5, 0.5, 1.0, 0.25, 0.25, 2.0]),
        np.array([70, 80, 90, 100, 90, 80]),
        np.zeros(6, np.int64),
    )
    path = tmp_path / "primer.mid"
    midi.to_midi(piece, MANIFEST, 100.0, {0: midi.PartTrack("piano-1", 0)}).write(str(path))
    primer, tempo = primers.midi_primer(path, 4, MANIFEST)
    assert tempo == pytest.approx(100.0)
    assert primer.pitch.tolist() == [60, 64, 67, 72]
    assert primer.step.tolist() == pytest.approx([0.0, 0.5, 0.5, 1.0])
    assert primer.duration.tolist() == pytest.approx([0.5, 0.5, 1.0, 0.25])
    assert primer.velocity.tolist() == [70, 80, 90, 100]


def test_a_folder_as_primer_midi_is_called_a_folder(tmp_path: Path) -> None:
    with pytest.raises(LakhflowError, match=r"^generate\.primer_midi: .* is a folder, not a MIDI"):
        primers.midi_primer(tmp_path, 8, {})
    with pytest.raises(LakhflowError, match=r"^generate\.primer_midi: .* does not exist$"):
        primers.midi_primer(tmp_path / "nowhere.mid", 8, {})


def test_a_file_that_is_not_midi_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "notes.mid"
    path.write_bytes(b"not a MIDI file")
    with pytest.raises(LakhflowError, match=r"^generate\.primer_midi: notes\.mid is not a MIDI"):
        primers.midi_primer(path, 8, {})


def test_a_midi_primer_in_score_mode_is_all_its_tracks_merged_with_their_parts(
    tmp_path: Path,
) -> None:
    # a soprano over a bass, both pianos: piano-1 and piano-2, merged by onset, higher first
    start = np.array([0.0, 0.0, 1.0, 1.0, 2.0])
    part = np.array([0, 1, 0, 1, 0])
    pitch = np.array([72, 48, 74, 50, 76])
    tracks = {0: midi.PartTrack("piano-1", 0), 1: midi.PartTrack("piano-2", 0)}
    written = midi.parts_to_midi(pitch, start * 0.6, start * 0.6 + 0.5, np.full(5, 80), part,
                                 tracks, tempo_bpm=100.0)  # fmt: skip
    path = tmp_path / "two-voices.mid"
    written.write(str(path))
    score = {**MANIFEST, "mode": "score"}
    primer, _ = primers.midi_primer(path, 4, score)
    assert primer.pitch.tolist() == [72, 48, 74, 50]
    assert primer.part.tolist() == [0, 1, 0, 1]
    assert primer.step.tolist() == pytest.approx([0.0, 0.0, 1.0, 0.0])
    # in track mode it is the first track alone, as the model's training streams were
    alone, _ = primers.midi_primer(path, 4, {**MANIFEST, "mode": "track"})
    assert alone.pitch.tolist() == [72, 74, 76] and set(alone.part.tolist()) == {0}
