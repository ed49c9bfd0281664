"""The data contracts between stages: the note and files tables, and the shard features.

See DESIGN.md. Every stage that writes or reads these tables uses the schemas here.
"""

from __future__ import annotations

import pyarrow as pa

NOTES = pa.schema(
    [
        pa.field(name, type_, nullable=False)  # no nulls: Parquet skips definition levels
        for name, type_ in [
            ("file_id", pa.string()),  # md5 of the file's bytes, hex
            ("track", pa.int16()),
            ("program", pa.int8()),
            ("is_drum", pa.bool_()),
            ("pitch", pa.int8()),
            ("velocity", pa.int8()),
            ("start", pa.float32()),  # seconds
            ("end", pa.float32()),
            ("start_beat", pa.float32()),  # quarter notes
            ("end_beat", pa.float32()),
        ]
    ]
)
NOTES_SORT = ["file_id", "track", "start", "pitch"]

STATUSES = ("ok", "empty", "duplicate", "quarantined")
FILES = pa.schema(
    [
        ("file_id", pa.string()),
        ("path", pa.string()),  # member name inside the source
        ("size", pa.int64()),
        ("status", pa.string()),  # one of STATUSES
        ("error_type", pa.string()),
        ("error", pa.string()),
        ("n_notes", pa.int64()),
        ("n_tracks", pa.int32()),
        ("duration_s", pa.float64()),
        ("group", pa.string()),  # the member's top folder, where there is one
    ]
)

SPLITS = pa.schema([("file_id", pa.string()), ("split_key", pa.string()), ("split", pa.string())])
SPLIT_NAMES = ("train", "val", "test")

# One tf.train.Example per track chunk: the per-note features, and the chunk's identity.
CHUNK_NOTE_FEATURES = {"pitch": "int64", "step": "float", "duration": "float", "velocity": "int64"}
CHUNK_CONTEXT_FEATURES = {
    "program": "int64",
    "file_id": "bytes",
    "track": "int64",
    "offset": "int64",
}
HEADS = ("pitch", "step", "duration", "velocity")
