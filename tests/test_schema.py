"""schema: the contracts between stages as DESIGN.md states them (the note, files and splits
tables' columns, types and order; the shard features), and a note part written by the parse
stage's writer read back with exactly the NOTES schema."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import midi, parts, schema

# DESIGN.md, "Note table": one row per note, narrow integer types, sorted by file, track,
# start, pitch.
NOTE_COLUMNS = [
    ("file_id", pa.string()),
    ("track", pa.int16()),
    ("program", pa.int8()),
    ("is_drum", pa.bool_()),
    ("pitch", pa.int8()),
    ("velocity", pa.int8()),
    ("start", pa.float32()),
    ("end", pa.float32()),
    ("start_beat", pa.float32()),
    ("end_beat", pa.float32()),
]
# DESIGN.md, "Files table": one row per input file, whatever became of it.
FILE_COLUMNS = [
    "file_id", "path", "size", "status", "error_type", "error", "n_notes", "n_tracks",
    "duration_s", "group",
]  # fmt: skip


def test_notes_columns_types_and_order() -> None:
    assert [(f.name, f.type) for f in schema.NOTES] == NOTE_COLUMNS
    assert not any(f.nullable for f in schema.NOTES)  # every note has every value
    assert schema.NOTES_SORT == ["file_id", "track", "start", "pitch"]
    assert set(schema.NOTES_SORT) <= set(schema.NOTES.names)


def test_the_midi_reader_gives_the_note_tables_types() -> None:
    """midi.COLUMN_DTYPES (what reading a file gives) is NOTES less the file's id."""
    assert list(midi.COLUMN_DTYPES) == schema.NOTES.names[1:]
    for field in list(schema.NOTES)[1:]:
        assert pa.from_numpy_dtype(np.dtype(midi.COLUMN_DTYPES[field.name])) == field.type


def test_files_columns_types_and_statuses() -> None:
    assert schema.FILES.names == FILE_COLUMNS
    assert [str(f.type) for f in schema.FILES] == [
        "string", "string", "int64", "string", "string", "string", "int64", "int32", "double",
        "string",
    ]  # fmt: skip
    # errors and groups are absent for most files
    assert schema.FILES.field("error").nullable and schema.FILES.field("group").nullable
    assert schema.STATUSES == ("ok", "empty", "duplicate", "quarantined")


def test_splits_table_and_names() -> None:
    assert [(f.name, f.type) for f in schema.SPLITS] == [
        ("file_id", pa.string()),
        ("split_key", pa.string()),
        ("split", pa.string()),
    ]
    assert schema.SPLIT_NAMES == ("train", "val", "test")


def test_shard_features() -> None:
    assert schema.CHUNK_NOTE_FEATURES == {
        "pitch": "int64",
        "step": "float",
        "duration": "float",
        "velocity": "int64",
        "part": "int64",
    }
    assert schema.CHUNK_CONTEXT_FEATURES == {
        "program": "int64",
        "file_id": "bytes",
        "group": "bytes",
        "track": "int64",
        "offset": "int64",
    }
    assert schema.HEADS == ("pitch", "step", "duration", "velocity", "part")
    # a head per note feature the model reads, in order: every feature a chunk's notes carry
    assert schema.HEADS == schema.NOTE_FEATURES == tuple(schema.CHUNK_NOTE_FEATURES)
    # tf.train.Example's three list kinds, and no name in both the notes and the context
    kinds = {*schema.CHUNK_NOTE_FEATURES.values(), *schema.CHUNK_CONTEXT_FEATURES.values()}
    assert kinds <= {"int64", "float", "bytes"}
    assert not set(schema.CHUNK_NOTE_FEATURES) & set(schema.CHUNK_CONTEXT_FEATURES)


def test_a_part_written_by_parse_reads_back_as_notes(tmp_path: Path) -> None:
    def notes(tracks: list[int], pitches: list[int]) -> dict[str, np.ndarray]:
        n = len(pitches)
        values = {
            "track": tracks,
            "program": [0, 40, 40][:n],
            "is_drum": [False, False, True][:n],
            "pitch": pitches,
            "velocity": [100, 90, 80][:n],
            "start": [0.0, 0.5, 1.0][:n],
            "end": [0.5, 1.0, 1.5][:n],
            "start_beat": [0.0, 1.0, 2.0][:n],
            "end_beat": [1.0, 2.0, 3.0][:n],
        }
        return {k: np.array(v, dtype=midi.COLUMN_DTYPES[k]) for k, v in values.items()}

    part = tmp_path / "notes-00000.parquet"
    b_id, a_id = "b" * 32, "a" * 32
    # files given out of order: the part is sorted by file_id
    parts.write_part(str(part), [(b_id, notes([0, 1, 1], [60, 62, 64])), (a_id, notes([0], [72]))])
    table = pq.read_table(part)
    assert table.schema.equals(schema.NOTES)  # names, types, order and no nulls
    rows = table.to_pylist()
    assert [r["file_id"] for r in rows] == [a_id, b_id, b_id, b_id]
    assert rows == sorted(rows, key=lambda r: [r[k] for k in schema.NOTES_SORT])
    assert rows[0] == {
        "file_id": a_id, "track": 0, "program": 0, "is_drum": False, "pitch": 72,
        "velocity": 100, "start": 0.0, "end": 0.5, "start_beat": 0.0, "end_beat": 1.0,
    }  # fmt: skip
    assert rows[3]["is_drum"] is True and rows[3]["pitch"] == 64 and rows[3]["end_beat"] == 3.0
