"""Parse stage: the raw archive `data/raw/<source>.tar.gz` (streamed) -> note tables.

Writes `data/notes/notes-NNNNN.parquet` (one row per note), `files.parquet` (one row per input:
ok, empty, duplicate or quarantined), `stats.json` and `plots/`. Files are parsed in worker
processes (pipelines.workers), so a parser that crashes, hangs or eats memory costs one file,
never the run. The parts are written by pipelines.parts, counted by pipelines.note_histograms,
committed for resuming by pipelines.runstore and drawn by pipelines.parse_plots.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from pipelines import midi, storage
from pipelines.archive import iter_members
from pipelines.errors import LakhflowError
from pipelines.note_histograms import NoteHistograms, program_names
from pipelines.parse_plots import Plotter
from pipelines.parts import arrow_column, arrow_strings, write_part
from pipelines.runstore import Batch, RunBuffer, RunStore, add_batch
from pipelines.workers import BatchResult, WorkerSettings, open_pool

if TYPE_CHECKING:
    from pipelines.config import Config, Paths

log = logging.getLogger(__name__)

WORK_FORMAT = 3  # bump when the work folder's layout changes: old work is then ignored

# --------------------------------------------------------------------------- in the worker process


@dataclass(frozen=True)
class MidiParser:
    """A MIDI file's bytes -> its notes, with `library` (symusic or pretty_midi).

    The stage's default parser; `run` takes another (tests/faulty_parsers.py: one that hangs,
    crashes, eats memory or garbles its answer on named files). It is pickled into the worker
    processes, so a parser is a frozen dataclass of a class they can import.
    """

    library: midi.Parser = "symusic"

    def prepare(self) -> None:
        """Import the library (in the worker, before its memory limit)."""
        if self.library == "symusic":
            import symusic  # noqa: F401
        else:
            import pretty_midi  # noqa: F401

    def __call__(self, name: str, data: bytes) -> midi.FileNotes:
        return midi.parse_midi(data, self.library)


def parse_file(name: str, data: bytes, parser: MidiParser) -> tuple:
    """One file's outcome: ("ok", FileNotes, histogram counts) or ("error", type, message)."""
    try:
        notes = parser(name, data)
        counts = NoteHistograms()
        counts.add(notes)
    except Exception as exc:  # every parser error (KeySignatureError is a bare Exception)
        return ("error", type(exc).__name__, str(exc).splitlines()[0][:300] if str(exc) else "")
    return ("ok", notes, counts)


def parse_to_part(
    path: str, files: list[tuple[int, str, str, bytes]], parser: MidiParser, answer: Any
) -> NoteHistograms:
    """Parse a batch of (index, name, file_id, bytes) into the part at `path`, answering one
    row per file as it goes."""
    totals = NoteHistograms()
    parsed: list[tuple[str, dict[str, np.ndarray]]] = []
    for index, name, file_id, data in files:
        outcome = parse_file(name, data, parser)
        if outcome[0] != "ok":
            answer((index, *outcome))
            continue
        notes, counts = outcome[1], outcome[2]
        if notes.n_notes:
            parsed.append((file_id, notes.columns))
            totals.merge(counts)
        answer((index, "ok", notes.n_notes, notes.n_tracks, notes.duration_s))
    tmp = f"{path}.{os.getpid()}.tmp"
    write_part(tmp, parsed)
    Path(tmp).replace(path)
    return totals


@dataclass(frozen=True)
class NotePartJob:
    """The parse stage's batch job (workers.BatchJob): a batch of (name, file_id, bytes) -> one
    notes part, a row per file, and the batch's note counts as its summary."""

    parser: MidiParser

    stage: ClassVar[str] = "parse"
    doing: ClassVar[str] = "parsing"
    process: ClassVar[str] = "parser"

    def prepare(self) -> None:
        self.parser.prepare()
        import pyarrow.parquet  # noqa: F401  (before the memory limit: imports map large libraries)

    def run(self, path: str, items: list[tuple[Any, ...]], answer: Callable[[tuple], None]) -> Any:
        return parse_to_part(path, items, self.parser, answer).to_json()

    def empty(self, path: str) -> Any:
        write_part(path, [])  # no notes, but the part exists like any other
        return NoteHistograms().to_json()


# --------------------------------------------------------------------------- the stage


def source_key(source: Path) -> dict[str, Any]:
    """What identifies the input, cheaply (as DVC's own state does): size, mtime and inode, and
    an md5 of the archive's first and last MiB. Hashing all of lmd_full would cost seconds
    before the first file; any new download or checkout is a new file with a new mtime."""
    if source.is_dir():
        listing = [
            (p.relative_to(source).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(source.rglob("*"))
            if p.is_file()
        ]
        return {"folder": storage.stable_hash(listing, 32), "files": len(listing)}
    stat = source.stat()
    ends = hashlib.md5()
    with open(source, "rb") as f:
        ends.update(f.read(1 << 20))
        f.seek(max(stat.st_size - (1 << 20), 0))
        ends.update(f.read(1 << 20))
    return {
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "inode": stat.st_ino,
        "ends_md5": ends.hexdigest(),
    }


def batches_of(
    source: Path, max_bytes: int, part_files: int, duplicate: Callable[[int, Any, str, str], None]
) -> Iterator[Batch]:
    """Stream the members, number them, set duplicates aside, and group the rest in batches."""
    seen: dict[str, str] = {}
    current = Batch(0, [], [], [], [], [], [])
    for seq, member in enumerate(iter_members(source, max_bytes)):
        file_id = hashlib.md5(member.data).hexdigest()
        if file_id in seen:
            duplicate(seq, member, file_id, seen[file_id])
            continue
        seen[file_id] = member.name
        current.seqs.append(seq)
        current.file_ids.append(file_id)
        current.names.append(member.name)
        current.sizes.append(len(member.data))
        current.groups.append(member.group)
        current.data.append(member.data)
        if len(current.seqs) >= part_files:
            yield current
            current = Batch(current.index + 1, [], [], [], [], [], [])
    if current.seqs:
        yield current


def run(cfg: Config, parser: MidiParser | None = None) -> dict[str, Any]:
    """Parse the archive into data/notes with `parser` (default: parse.parser's library)."""
    p = cfg.parse
    parser = parser or MidiParser(p.parser)
    source = cfg.paths.raw_archive(cfg.download.source)
    if not source.exists():
        raise LakhflowError(f"{source} not found: run `lakhflow download` first")
    started = time.perf_counter()
    plotter = Plotter()
    try:
        key = {
            "source": source_key(source),
            "parser": p.parser,
            "part_files": p.part_files,
            "timeout_s": p.timeout_s,
            "max_memory_mb": p.max_memory_mb,
            "format": WORK_FORMAT,
        }
        return parse_all(cfg, source, key, parser, plotter, started)
    finally:
        plotter.close()


def parse_all(
    cfg: Config,
    source: Path,
    key: dict[str, Any],
    parser: MidiParser,
    plotter: Plotter,
    started: float,
) -> dict[str, Any]:
    p = cfg.parse
    work = storage.work_dir(cfg.paths.work, "parse", key)
    store = RunStore(work / "runs")
    pictures = work / "plots"
    resumed_batches = len(store.part_notes)
    settings = WorkerSettings(NotePartJob(parser), p.timeout_s, p.max_memory_mb)
    pool, workers = open_pool("parse", p.executor, p.workers, p.scheduler_address, settings)

    from tqdm import tqdm

    duplicates: dict[int, list[Any]] = {}

    def duplicate(seq: int, member: Any, file_id: str, original: str) -> None:
        duplicates[seq] = [
            file_id, member.name, len(member.data), "duplicate", None,
            f"same bytes as {original}", 0, 0, 0.0, member.group,
        ]  # fmt: skip
        progress.update(1)

    buffer = RunBuffer()
    parsed = 0
    in_flight: dict[Any, Batch] = {}
    max_bytes = int(cfg.download.max_member_mb * 1e6)
    progress = tqdm(desc="parse", unit="file", smoothing=0.05, mininterval=0.5, file=sys.stderr)

    def collect(done: set[Any]) -> None:
        nonlocal parsed, buffer
        for future in done:
            batch = in_flight.pop(future)
            result: BatchResult = future.result()
            if result.data is not None:
                with storage.atomic_path(store.batch_path(batch.index)) as tmp:
                    tmp.write_bytes(result.data)
            add_batch(buffer, batch, result)
            parsed += len(batch.seqs)
            progress.update(len(batch.seqs))
        store.flush(buffer)  # a commit per wait: a kill loses only the batches in flight
        buffer = RunBuffer()
        roll_when_known()

    def roll_when_known() -> None:
        """The piano roll is of the first file with notes (in archive order): drawn as soon
        as the parts before its own are known to be empty, while the rest is parsed."""
        if plotter.rolled:
            return
        sample = store.sample()
        if sample is not None:
            part, seq = sample
            plotter.roll(pictures, part, store.rows[seq][0], store.rows[seq][1])

    try:
        roll_when_known()  # resumed: it may be known already
        for batch in batches_of(source, max_bytes, p.part_files, duplicate):
            if batch.index in store.part_notes:
                progress.update(len(batch.seqs))
                continue
            while len(in_flight) >= 2 * workers:
                collect(pool.wait(set(in_flight)))
            files = list(zip(batch.names, batch.file_ids, batch.data, strict=True))
            in_flight[pool.submit(files, store.batch_path(batch.index))] = batch
            batch.data = []  # the worker has the bytes now; keep memory bounded
        while in_flight:
            collect(pool.wait(set(in_flight)))
    finally:
        progress.close()
        pool.close()
    parse_s = time.perf_counter() - started

    rows = {**store.rows, **duplicates}
    with storage.atomic_dir(cfg.paths.notes, "parse") as out:
        summary = write_outputs(out, cfg.paths, store, rows, plotter, pictures)
    elapsed = time.perf_counter() - started
    n_files = len(rows)
    metrics = {
        **{f"files_{k}": v for k, v in summary["files"].items()},
        "notes": summary["notes"],
        "hours": summary["hours"],
        "parts": summary["parts"],
        "parsed_files": parsed,
        "resumed_batches": resumed_batches,
        "seconds": round(elapsed, 3),
        "files_per_s": round(n_files / max(elapsed, 1e-9), 1),
    }
    f = summary["files"]
    log.info(
        "parse: %d files from %s with %s in %.1f s (%.0f files/s; parsing %.1f s, writing "
        "%.1f s; %d parsed now, %d batches resumed): %d ok, %d empty, %d duplicate, "
        "%d quarantined. Wrote %d notes (%.1f h of music) in %d part(s), files.parquet, "
        "stats.json and plots to %s.",
        n_files, source.name, p.parser, elapsed, metrics["files_per_s"], parse_s,
        elapsed - parse_s, parsed, resumed_batches, f["ok"], f["empty"], f["duplicate"],
        f["quarantined"], summary["notes"], summary["hours"], summary["parts"], cfg.paths.notes,
    )  # fmt: skip
    return metrics


# --------------------------------------------------------------------------- the outputs


def write_outputs(
    out: Path,
    paths: Paths,
    store: RunStore,
    rows: dict[int, list[Any]],
    plotter: Plotter,
    pictures: Path,
) -> dict[str, Any]:
    """Into `out` (data/notes/ to be): the parts (linked from the work folder), the files
    table, stats and plots."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines import schema  # pyarrow's import: only where tables are built

    plotter.histograms(pictures, store.counts)
    parts = [store.batch_path(b) for b, notes in sorted(store.part_notes.items()) if notes]
    for k, part in enumerate(parts):
        storage.link_or_copy(part, out / f"notes-{k:05d}.parquet")
    ordered = [rows[seq] for seq in sorted(rows)]
    columns = []
    for i, f in enumerate(schema.FILES):
        values = [r[i] for r in ordered]
        if f.type == pa.string():
            columns.append(arrow_strings(values))
        else:  # int64, int32, double: numpy reads Arrow's names
            columns.append(arrow_column(np.array(values, dtype=np.dtype(str(f.type))), f.type))
    files = pa.Table.from_arrays(columns, schema=schema.FILES)
    pq.write_table(files, out / paths.files_table.name, compression="zstd")
    stats = file_stats(ordered, store.counts)
    stats["parts"] = len(parts)
    storage.write_json(out / paths.notes_stats.name, stats)
    plotter.wait()
    (out / "plots").mkdir()
    for name in Plotter.PICTURES:  # copies: the plotter rewrites its own files in place
        shutil.copyfile(pictures / name, out / "plots" / name)
    return stats


def file_stats(rows: list[list[Any]], hist: NoteHistograms) -> dict[str, Any]:
    from pipelines import schema

    status = [r[3] for r in rows]
    ok = [r for r in rows if r[3] == "ok"]
    errors: dict[str, int] = {}
    for r in rows:
        if r[3] == "quarantined":
            errors[r[4]] = errors.get(r[4], 0) + 1
    names = program_names(hist)
    most_common = max(names.items(), key=lambda kv: kv[1])[0] if names else None
    return {
        "files": {"inputs": len(rows), **{s: status.count(s) for s in schema.STATUSES}},
        "quarantined_by_error": dict(sorted(errors.items())),
        "notes": int(sum(r[6] for r in ok)),
        "hours": round(sum(r[8] for r in ok) / 3600, 3),
        "tracks": int(sum(r[7] for r in ok)),
        "programs": {
            "distinct": int((hist.programs > 0).sum()),
            "most_common": most_common,
            "drum_notes": hist.drums,
            "notes": {str(p): int(n) for p, n in enumerate(hist.programs) if n},
        },
    }
