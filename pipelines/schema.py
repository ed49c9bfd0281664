"""The data contracts between stages: the note and files tables, and the shard features.

See DESIGN.md. Every stage that writes or reads these tables uses the schemas here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.errors import LakhflowError

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

# One tf.train.Example per chunk of a stream (a track, or a score's merged tracks): the per-note
# features, and the chunk's identity. The shard writer (shards.chunk_example) and the reader
# (dataset) both follow these. `part` is the note's index in the manifest's part vocabulary
# (sequences: an instrument class and a rank by pitch); `track` is -1 for a merged score.
CHUNK_NOTE_FEATURES = {
    "pitch": "int64",
    "step": "float",
    "duration": "float",
    "velocity": "int64",
    "part": "int64",
}
CHUNK_CONTEXT_FEATURES = {
    "program": "int64",
    "file_id": "bytes",
    "group": "bytes",  # the file's folder group (a composer, an artist...); "" where it has none
    "track": "int64",
    "offset": "int64",
}
SCORE_TRACK = -1  # the `track` of a merged score's chunks
# A note as the model sees it, and its heads (one per feature, in this order).
NOTE_FEATURES = ("pitch", "step", "duration", "velocity", "part")
HEADS = NOTE_FEATURES
# The model's inputs: the note features, and a style-conditioned model's `style` (the piece's
# group, as its index in the model's style vocabulary) at every step.
INPUT_DTYPES = {
    "pitch": "int32",
    "step": "float32",
    "duration": "float32",
    "velocity": "int32",
    "part": "int32",
    "style": "int32",
}
OTHER_STYLE = "other"  # the style of the groups too small to learn on their own (pooled)
BINNED_HEADS = ("step", "duration", "velocity")  # categorical over the manifest's bins
PITCHES = 128  # MIDI pitches: the pitch head's classes


def bin_edges(manifest: Mapping[str, Any], head: str) -> np.ndarray:
    """The ascending inner bin boundaries of a head, as float32 (what the model compares in)."""
    try:
        edges = np.asarray(manifest["bins"][head]["edges"], dtype=np.float32)
    except KeyError:
        raise LakhflowError(f"the shards' manifest has no bins for {head!r}") from None
    if edges.ndim != 1 or np.any(np.diff(edges) <= 0):
        raise LakhflowError(f"the manifest's {head} bin edges are not strictly ascending")
    return edges


def n_classes(manifest: Mapping[str, Any], head: str) -> int:
    """How many classes a categorical head predicts: 128 pitches, the part vocabulary's size,
    or len(edges) + 1 bins."""
    if head == "pitch":
        return PITCHES
    if head == "part":
        try:
            return int(manifest["parts"]["size"])
        except KeyError:
            raise LakhflowError(
                "the shards' manifest has no part vocabulary; run `lakhflow sequences` again"
            ) from None
    return len(bin_edges(manifest, head)) + 1


def classes_of(values: Any, edges: Any) -> np.ndarray:
    """The binning rule: a value's class is searchsorted(edges, x, side='right'), both sides in
    float32, as the shards store the values and the model's Discretization compares them."""
    edges32 = np.asarray(edges, dtype=np.float32)
    found = np.searchsorted(edges32, np.asarray(values, dtype=np.float32), side="right")
    return found.astype(np.int32)
