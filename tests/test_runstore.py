"""The parse stage's resumable runs: committed batches come back; damaged parts are redone."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from test_parts import note_columns

from pipelines.parts import write_part
from pipelines.runstore import Batch, RunBuffer, RunStore, add_batch
from pipelines.workers import BatchResult


def commit_batch(store: RunStore, index: int, notes: int) -> None:
    """A batch of two files (the second quarantined) whose part holds `notes` notes."""
    write_part(str(store.batch_path(index)), [(f"id{index}", note_columns(notes, index))])
    batch = Batch(index, [2 * index, 2 * index + 1], [f"id{index}", f"bad{index}"],
                  ["a.mid", "b.mid"], [10, 20], ["g", "g"], [])  # fmt: skip
    outcomes = [("ok", notes, 1, 1.5), ("error", "Timeout", "took too long")]
    counts = {"pitch": [notes] + [0] * 127, "drums": 0}
    buffer = RunBuffer()
    add_batch(buffer, batch, BatchResult(outcomes, counts))
    store.flush(buffer)


def test_committed_runs_come_back_with_their_rows_and_counts(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs")
    commit_batch(store, 0, 4)
    commit_batch(store, 1, 6)
    (tmp_path / "runs" / "batch-000002.parquet.123.tmp").write_bytes(b"half")  # a killed writer

    again = RunStore(tmp_path / "runs")
    assert again.part_notes == {0: 4, 1: 6} and again.runs == 2
    assert again.rows[0] == ["id0", "a.mid", 10, "ok", None, None, 4, 1, 1.5, "g"]
    assert again.rows[3] == ["bad1", "b.mid", 20, "quarantined", "Timeout", "took too long",
                             0, 0, 0.0, "g"]  # fmt: skip
    assert int(again.counts.pitch[0]) == 10
    assert again.sample() == (again.batch_path(0), 0)
    assert not list((tmp_path / "runs").glob("*.tmp"))


def test_a_run_naming_a_damaged_part_is_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = RunStore(tmp_path / "runs")
    commit_batch(store, 0, 4)
    commit_batch(store, 1, 6)
    part = store.batch_path(1)
    part.write_bytes(part.read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        again = RunStore(tmp_path / "runs")
    assert "names a damaged part" in caplog.text and part.name in caplog.text
    assert again.part_notes == {0: 4} and set(again.rows) == {0, 1}
    assert not (tmp_path / "runs" / "run-00001.json").exists()
