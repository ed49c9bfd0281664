"""The parse stage's resumable state: the parts the workers wrote and the runs that commit them.

A run is a JSON file naming finished batches (with the notes in each part), their files' rows
and their note counts; the stage writes one per wait for the workers, so a kill loses only the
batches in flight. On resume, a run whose parts are missing or damaged is dropped and its
batches are parsed again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines import storage
from pipelines.note_histograms import NoteHistograms
from pipelines.workers import BatchResult

log = logging.getLogger(__name__)

FILE_FIELDS = (
    "file_id", "path", "size", "status", "error_type", "error",
    "n_notes", "n_tracks", "duration_s", "group",
)  # fmt: skip


@dataclass
class Batch:
    """Files of the archive parsed together into one part."""

    index: int
    seqs: list[int]  # input numbers, in archive order
    file_ids: list[str]
    names: list[str]
    sizes: list[int]
    groups: list[str]
    data: list[bytes]


@dataclass
class RunBuffer:
    """Finished batches not yet committed; flushed as one run (a JSON file)."""

    batches: list[list[int]] = field(default_factory=list)  # [batch, notes in its part]
    rows: list[list[Any]] = field(default_factory=list)  # [seq, *FILE_FIELDS]
    counts: NoteHistograms = field(default_factory=NoteHistograms)


class RunStore:
    """The stage's resumable state: the parts (written by the workers) and the runs, JSON files
    that commit them. A part no run names is parsed again on resume."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.part_notes: dict[int, int] = {}  # batch -> notes in its part, for the done ones
        self.rows: dict[int, list[Any]] = {}
        self.counts = NoteHistograms()
        self.runs = 0
        for meta_path in sorted(folder.glob("run-*.json")):
            run = int(meta_path.stem.removeprefix("run-"))
            self.runs = max(self.runs, run + 1)
            meta = storage.read_state(meta_path)
            if meta is not None and self._whole(meta_path, meta):
                self._add(meta)
        for stray in folder.glob("*.tmp"):
            stray.unlink()  # a worker killed while writing

    def _whole(self, meta_path: Path, meta: Any) -> bool:
        """Whether every part a run names is there and readable with the notes it counted; a
        run that fails is dropped, so its batches are parsed again rather than trusted."""
        import pyarrow.parquet as pq

        try:
            for batch, notes in meta["batches"]:
                part = self.batch_path(int(batch))
                try:
                    whole = not notes or pq.read_metadata(part).num_rows == int(notes)
                except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
                    raise ValueError(f"{part.name}: {exc}") from None
                if not whole:
                    raise ValueError(f"{part.name} holds other notes than the run counted")
        except (ValueError, KeyError, TypeError) as exc:
            log.warning(
                "%s names a damaged part (%s); its batches are parsed again", meta_path, exc
            )
            meta_path.unlink(missing_ok=True)
            return False
        return True

    def _add(self, meta: dict[str, Any]) -> None:
        self.part_notes.update((batch, notes) for batch, notes in meta["batches"])
        for row in meta["rows"]:
            self.rows[row[0]] = row[1:]
        self.counts.merge(NoteHistograms(meta["counts"]))

    def batch_path(self, batch: int) -> Path:
        return self.folder / f"batch-{batch:06d}.parquet"

    def sample(self) -> tuple[Path, int] | None:
        """(part, seq) of the first file with notes in archive order, once that is known: its
        part is done and every earlier part is done and empty."""
        batch = 0
        while self.part_notes.get(batch) == 0:
            batch += 1
        if batch not in self.part_notes:
            return None
        seq = min(seq for seq, row in self.rows.items() if row[3] == "ok")
        return self.batch_path(batch), seq

    def flush(self, buffer: RunBuffer) -> None:
        """Commit the buffer's batches as the next run."""
        if not buffer.batches:
            return
        meta = {"batches": buffer.batches, "rows": buffer.rows, "counts": buffer.counts.to_json()}
        # The JSON is the commit: parts are complete before a run names them.
        storage.write_json(self.folder / f"run-{self.runs:05d}.json", meta, indent=None)
        self._add(meta)
        self.runs += 1


def add_batch(buffer: RunBuffer, batch: Batch, result: BatchResult) -> None:
    """A finished batch's rows (one per file, by its worker's outcome) and counts, buffered."""
    buffer.counts.merge(NoteHistograms(result.summary))
    notes = 0
    for k, outcome in enumerate(result.outcomes):
        seq = batch.seqs[k]
        base = [batch.file_ids[k], batch.names[k], batch.sizes[k]]
        if outcome[0] == "ok":
            n, n_tracks, duration_s = outcome[1:4]
            status = "ok" if n else "empty"
            buffer.rows.append([seq, *base, status, None, None, n, n_tracks, duration_s])
            notes += n
        else:
            _, error_type, error = outcome
            buffer.rows.append([seq, *base, "quarantined", error_type, error, 0, 0, 0.0])
        buffer.rows[-1].append(batch.groups[k])
    buffer.batches.append([batch.index, notes])
