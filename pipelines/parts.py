"""Note parts: the Parquet files a batch's notes are written to, and one file's notes read back.

A worker writes its batch's notes straight into the work folder as one Parquet part: the batch's
files sorted by file_id, each file's notes sorted by track, start and pitch. Only a small row per
file travels back to the stage, never the notes; once every batch is done the parts become
data/notes/notes-NNNNN.parquet as they are, without being read again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipelines import midi

FLOAT_COLUMNS = ("start", "end", "start_beat", "end_beat")


def arrow_column(values: np.ndarray, arrow_type: Any) -> Any:
    """A numpy column as an Arrow array over its memory (booleans packed into bits).

    Built from buffers because pa.array() imports pandas (0.2 s in each worker) to ask
    whether the column is a pandas object.
    """
    import pyarrow as pa

    if arrow_type == pa.bool_():
        data = np.packbits(values.astype(np.bool_, copy=False), bitorder="little")
    else:
        data = np.ascontiguousarray(values)
    return pa.Array.from_buffers(arrow_type, len(values), [None, pa.py_buffer(data)])


def arrow_strings(values: list[str | None]) -> Any:
    """Python strings (None: null) as an Arrow string array, built from buffers (as
    arrow_column is)."""
    import pyarrow as pa

    encoded = [b"" if v is None else v.encode() for v in values]
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    valid = np.array([v is not None for v in values], dtype=np.bool_)
    nulls = len(values) - int(valid.sum())
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
    buffers = [bitmap, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))]
    return pa.Array.from_buffers(pa.string(), len(values), buffers, null_count=nulls)


def write_part(path: str, files: list[tuple[str, dict[str, np.ndarray]]]) -> None:
    """Write `(file_id, note columns)` of a batch's files as one Parquet part, by file_id."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines import schema

    files = sorted(files, key=lambda f: f[0])
    sizes = np.array([len(columns["pitch"]) for _, columns in files], dtype=np.int64)
    # Dictionary-encoded file_id, written as Parquet's dictionary page as is: no string column
    # of one 32-character id per note is ever built. Readers get plain strings (schema.NOTES),
    # since the Arrow schema is not stored and Parquet's own types say string, int8, ...
    indices = arrow_column(np.repeat(np.arange(len(files), dtype=np.int32), sizes), pa.int32())
    dictionary = arrow_strings([file_id for file_id, _ in files])
    arrays = [pa.DictionaryArray.from_arrays(indices, dictionary)]
    for f in list(schema.NOTES)[1:]:
        dtype = midi.COLUMN_DTYPES[f.name]
        pieces = [columns[f.name] for _, columns in files]
        column = np.concatenate(pieces).astype(dtype, copy=False) if pieces else np.zeros(0, dtype)
        arrays.append(arrow_column(column, f.type))
    few_valued = ["file_id", "track", "program", "is_drum", "pitch", "velocity"]
    pq.write_table(
        pa.Table.from_arrays(arrays, schema=schema.NOTES),
        path,
        compression="zstd",
        # dictionaries for the few-valued columns only: floats would fall back to plain anyway
        use_dictionary=few_valued,
        # min/max where a reader filters (a file_id, programs, pitches); the times' cost a
        # twentieth of the writing and serve no filter
        write_statistics=few_valued,
        # The times' bytes split by significance: zstd packs them 10% smaller, and the writer
        # spends less time on them than on plain floats.
        column_encoding=dict.fromkeys(FLOAT_COLUMNS, "BYTE_STREAM_SPLIT"),
        row_group_size=256 * 1024,
        store_schema=False,
    )


def _numpy(array: Any, dtype: Any) -> np.ndarray:
    """A fixed-width Arrow array without nulls as numpy, over its buffer (to_numpy() would
    import pandas, a quarter of a second in the plotter)."""
    values = np.frombuffer(array.buffers()[1], dtype=dtype)
    return values[array.offset : array.offset + len(array)]


def read_file_notes(part: Path, file_id: str, columns: list[str]) -> dict[str, np.ndarray]:
    """One file's note columns from a part."""
    import pyarrow.parquet as pq

    table = pq.ParquetFile(part, read_dictionary=["file_id"]).read(columns=["file_id", *columns])
    table = table.combine_chunks()
    ids = table.column("file_id").chunk(0)
    code = ids.dictionary.to_pylist().index(file_id)
    keep = _numpy(ids.indices, np.int32) == code
    return {
        name: _numpy(table.column(name).chunk(0), midi.COLUMN_DTYPES[name])[keep]
        for name in columns
    }
