"""Note parts: a batch's notes written as one Parquet part, and one file's notes read back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipelines import midi, schema
from pipelines.parts import read_file_notes, write_part


def note_columns(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    start = np.sort(rng.uniform(0, 10, n))
    columns = {
        "track": np.zeros(n), "program": rng.integers(0, 128, n), "is_drum": rng.random(n) < 0.2,
        "pitch": rng.integers(0, 128, n), "velocity": rng.integers(1, 128, n),
        "start": start, "end": start + 0.5, "start_beat": start * 2, "end_beat": start * 2 + 1,
    }  # fmt: skip
    return {name: values.astype(midi.COLUMN_DTYPES[name]) for name, values in columns.items()}


def test_a_part_holds_its_files_by_file_id_and_gives_each_back(tmp_path: Path) -> None:
    files = {"f2": note_columns(5, 0), "f1": note_columns(3, 1), "f3": note_columns(4, 2)}
    part = tmp_path / "part.parquet"
    write_part(str(part), list(files.items()))
    table = pq.read_table(part)
    assert table.schema.equals(schema.NOTES)
    assert table.column("file_id").to_pylist() == ["f1"] * 3 + ["f2"] * 5 + ["f3"] * 4
    # read_file_notes reads the fixed-width columns over their buffers: not is_drum (bits)
    names = [name for name in midi.COLUMN_DTYPES if name != "is_drum"]
    for file_id, columns in files.items():
        back = read_file_notes(part, file_id, names)
        assert list(back) == names
        for name in names:
            values = columns[name]
            assert back[name].dtype == values.dtype
            np.testing.assert_array_equal(back[name], values, err_msg=f"{file_id} {name}")


def test_a_part_without_notes_is_a_table_like_any_other(tmp_path: Path) -> None:
    part = tmp_path / "empty.parquet"
    write_part(str(part), [])
    table = pq.read_table(part)
    assert table.num_rows == 0 and table.schema.equals(schema.NOTES)
