"""Sequences stage: the note tables become streams of notes, chunked into GZIP TFRecord shards,
split and binned.

Reads `data/notes/notes-*.parquet` and `data/notes/files.parquet`; writes `data/shards/`:
`{train,val,test}-NNNNN-of-MMMMM.tfrecord.gz`, `splits.parquet` and `manifest.json` (DESIGN.md).
Here: reading the note tables, selecting tracks and `run`; how a file's notes become streams
with parts is in `streams`, split keys in `splits`, the bins in `bins`, the chunk encoding, keyed
runs and shard writer in `shards`. The instrument filters (drums, programs, instrument) choose
tracks in both modes; the length filters (min_notes, seq_length) apply to the stream: a track in
track mode, the merged score in score mode, so a short track still plays in its score. The
manifest lists the parts that occur: name, family, rank, the program most of their notes had,
and their notes.

On all cores. The stage passes over the notes twice, a notes part at a time in worker processes
(`workers.open_pool`: local processes, or a Dask cluster's): pass 1 surveys each file for its
split key (content hash, tune, shared-run fingerprints, kept on disk), the stage groups the files
and splits them, pass 2 turns each file into keyed chunks and counts; then local workers write
shard i of each split from the i-th range of chunk keys. Every merge follows the parts' order and
every order the chunk keys, so the shards, splits and manifest are the same bytes whatever the
number of workers or the executor (tests/test_sequences.py builds them in separate processes).

Groups. Every chunk carries its file's folder group (the files table's `group`: a composer for the
music21 source, an artist or collection folder for a user's own MIDI); the manifest counts each
group's files per split, which is what `train.condition: group` turns into styles.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from pipelines import instruments, schema, storage
from pipelines.bins import Histogram, make_bins
from pipelines.config import MANIFEST_FILE, Config, Paths, Sequences
from pipelines.errors import LakhflowError, ParamsError
from pipelines.instruments import PART_CLASSES, describe, part_name, select_programs
from pipelines.shards import (
    ChunkEncoder,
    Runs,
    compression_ratio,
    shard_count,
    shard_ranges,
    shuffle_key,
    write_runs,
    write_shard,
)
from pipelines.splits import (
    PAIRING_SLICES,
    SLICE_FINGERPRINTS,
    FileSurvey,
    content_hash,
    pairs_of,
    shared_run_fingerprints,
    slice_bounds,
    slice_pairs,
    split_keys,
    split_of,
    tune_fingerprint,
)
from pipelines.streams import (
    Notes,
    Stream,
    merge,
    stream_features,
    track_parts,
    track_slices,
)
from pipelines.workers import Pool, WorkerSettings, open_pool, run_batches

log = logging.getLogger(__name__)

NOTE_COLUMNS = [f.name for f in schema.NOTES]


# ---------------------------------------------------------------- reading the note tables


def read_files(path: Path) -> pa.Table:
    """The files table (data/notes/files.parquet)."""
    if not path.exists():
        raise LakhflowError(f"{path} not found; run `lakhflow parse` (or `dvc repro parse`) first")
    return pq.read_table(path)


def note_parts(notes_dir: Path) -> list[Path]:
    return sorted(notes_dir.glob("notes-*.parquet"))


def iter_file_notes(
    parts: Iterable[Path | bytes], batch_rows: int = 1 << 16
) -> Iterator[tuple[str, Notes]]:
    """Each file's notes as numpy columns, streaming the parts (memory: one batch plus one file);
    a part is a path or a Parquet file's bytes."""
    pending_id: str | None = None
    pending: list[Notes] = []
    seen: set[str] = set()

    def flush() -> tuple[str, Notes]:
        assert pending_id is not None
        seen.add(pending_id)
        if len(pending) == 1:
            return pending_id, pending[0]
        return pending_id, {k: np.concatenate([p[k] for p in pending]) for k in NOTE_COLUMNS[1:]}

    for part in parts:
        source = pa.BufferReader(part) if isinstance(part, bytes) else part
        name = getattr(part, "name", "a notes part")
        # file ids dictionary-encoded: their runs are found on integer codes, not strings
        table = pq.ParquetFile(source, read_dictionary=["file_id"])
        for batch in table.iter_batches(batch_size=batch_rows, columns=NOTE_COLUMNS):
            if batch.num_rows == 0:
                continue
            column = batch.column("file_id")
            codes, names = column.indices.to_numpy(), column.dictionary.to_pylist()
            cols = {k: batch.column(k).to_numpy(zero_copy_only=False) for k in NOTE_COLUMNS[1:]}
            cuts = [0, *(np.flatnonzero(codes[1:] != codes[:-1]) + 1).tolist(), len(codes)]
            for lo, hi in itertools.pairwise(cuts):
                file_id = names[codes[lo]]
                if file_id != pending_id:
                    if pending_id is not None:
                        yield flush()
                    if file_id in seen:
                        msg = f"{name}: notes of file {file_id} are not contiguous (not sorted)"
                        raise LakhflowError(msg)
                    pending_id, pending = file_id, []
                pending.append({k: v[lo:hi] for k, v in cols.items()})
    if pending_id is not None:
        yield flush()


# ---------------------------------------------------------------- selecting tracks

FILTERS = (
    "sequences.include_drums",
    "sequences.programs",
    "sequences.instrument",
    "sequences.min_notes",
    "sequences.seq_length",
)


INSTRUMENT_FILTERS = FILTERS[:3]  # of tracks; the others are of streams
SCORES = "scores"  # Selection.kept's count of files with a selected track (score mode)


@dataclass
class Selection:
    """Which tracks and streams become training data, and how many each filter let through."""

    programs: frozenset[int] | None
    include_drums: bool
    min_notes: int
    window: int  # seq_length + 1: a stream shorter than one window gives nothing
    score: bool  # sequences.mode == score: the length filters see a file's merged tracks
    only_program: int | None = None  # set by instrument: most_common after the survey
    kept: Counter[str] = field(default_factory=Counter)

    @classmethod
    def from_params(cls, p: Sequences) -> Selection:
        return cls(
            select_programs(p.programs),
            p.include_drums,
            p.min_notes,
            p.seq_length + 1,
            p.mode == "score",
        )

    def plays(self, program: int, is_drum: bool, *, count: bool = False) -> bool:
        """The instrument filters: whether a track's notes are used at all."""
        checks = (
            self.include_drums or not is_drum,
            is_drum or self.programs is None or program in self.programs,
            self.only_program is None or (program == self.only_program and not is_drum),
        )
        return self._check(INSTRUMENT_FILTERS, checks, count)

    def long_enough(self, n: int, *, count: bool = False) -> bool:
        """The length filters, of a stream of n notes."""
        return self._check(FILTERS[3:], (n >= self.min_notes, n >= self.window), count)

    def _check(self, names: tuple[str, ...], checks: tuple[bool, ...], count: bool) -> bool:
        for name, ok in zip(names, checks, strict=True):
            if not ok:
                return False
            if count:
                self.kept[name] += 1
        return True

    def empty_reason(self, tracks: int) -> str:
        """Names the filter that removed every track (score mode: every score)."""
        left, unit = tracks, "tracks"
        for name in FILTERS:
            if self.score and name == "sequences.min_notes":
                left, unit = self.kept[SCORES], SCORES
            if self.kept[name] == 0:
                value = {
                    "sequences.include_drums": str(self.include_drums).lower(),
                    "sequences.programs": sorted(self.programs or []),
                    "sequences.instrument": (
                        "most_common" if self.only_program is not None else "all"
                    ),
                    "sequences.min_notes": self.min_notes,
                    "sequences.seq_length": f"{self.window - 1} ({unit} need seq_length+1 notes)",
                }[name]
                return f"{name}={value} removed all {left} remaining {unit}"
            left = self.kept[name]
        return "no stream gave a window"


# ---------------------------------------------------------------- streams, features and chunks


def file_streams(notes: Notes, selection: Selection, p: Sequences) -> list[Stream]:
    """A file's streams (sequences.mode), with every filter applied and counted."""
    tracks = [
        (track, rows)
        for track, rows in track_slices(notes)
        if selection.plays(
            int(notes["program"][rows.start]), bool(notes["is_drum"][rows.start]), count=True
        )
    ]
    parts = track_parts(notes, tracks, p.max_part_rank)
    streams = [
        Stream(track, np.arange(rows.start, rows.stop), np.full(rows.stop - rows.start, part))
        for (track, rows), part in zip(tracks, parts, strict=True)
    ]
    if selection.score and streams:
        selection.kept[SCORES] += 1
        streams = [merge(notes, streams, p)]
    return [s for s in streams if selection.long_enough(len(s), count=True)]


def chunk_starts(n: int, chunk_notes: int, seq_length: int) -> list[int]:
    """Chunks overlap by seq_length notes, so every window of the track lies in one chunk.

    A chunk starting at s holds the windows starting at s .. s+chunk_notes-seq_length-1; the next
    chunk starts right after, and exists only if it holds at least one window.
    """
    hop = chunk_notes - seq_length
    starts = [0]
    while starts[-1] + hop + seq_length + 1 <= n:
        starts.append(starts[-1] + hop)
    return starts


def windows_in(length: int, seq_length: int, stride: int) -> int:
    """Windows of seq_length+1 notes that the reader cuts from a chunk of `length` notes."""
    return max(0, (length - seq_length - 1) // stride + 1)


def median_from_counts(counts: Counter[int], resolution: float) -> float:
    """The median cell of counts per cell, times the cell's width (120 with no counts)."""
    total = sum(counts.values())
    if total == 0:
        return 120.0
    cells = sorted(counts)
    acc = np.cumsum([counts[c] for c in cells])
    return round(cells[int(np.searchsorted(acc, (total + 1) / 2))] * resolution, 2)


# ---------------------------------------------------------------- the stage

PART_TIMEOUT_S = 3600.0  # a notes part (or a shard) in a worker: seconds at most; an hour, a hang
WORKER_MEMORY_MB = 4096  # a worker's address space: one part's chunks, or one shard's
SAMPLE_BYTES = 4 << 20  # of train chunks, compressed to size the shards


@dataclass
class SplitTotals:
    files: set[str] = field(default_factory=set)
    streams: int = 0  # tracks in track mode, scores in score mode
    tracks: int = 0
    chunks: int = 0
    notes: int = 0
    windows: int = 0

    def merge(self, other: SplitTotals) -> None:
        self.files |= other.files
        for name in ("streams", "tracks", "chunks", "notes", "windows"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class Corpus:
    """The files the note tables list with status ok, and where their notes are."""

    file_ids: list[str]  # sorted
    groups: dict[str, str]  # file_id -> its folder group, "" where it has none
    parts: list[Path]  # the notes-*.parquet tables, in the order they are streamed


@dataclass
class Tally:
    """What pass 2 counts: per-split totals, the train split's histograms, tempi, programs,
    parts (each part's notes per program), groups (each group's files per split) and what the
    filters let through. A worker counts its part; the stage merges them in part order."""

    totals: dict[str, SplitTotals]
    step: Histogram
    duration: Histogram
    velocity: Histogram
    tempo: Counter[int]  # notes per 0.01 bpm cell
    programs: Counter[int]
    parts: dict[int, Counter[int]]
    groups: dict[str, Counter[str]]
    kept: Counter[str] = field(default_factory=Counter)

    @classmethod
    def start(cls, p: Sequences) -> Tally:
        return cls(
            totals={name: SplitTotals() for name in schema.SPLIT_NAMES},
            step=Histogram.for_range(p.max_step),
            duration=Histogram.for_range(p.max_duration),
            velocity=Histogram.for_velocity(),
            tempo=Counter(),
            programs=Counter(),
            parts={},
            groups={},
        )

    def merge(self, other: Tally) -> None:
        for name, totals in other.totals.items():
            self.totals[name].merge(totals)
        self.step.merge(other.step)
        self.duration.merge(other.duration)
        self.velocity.merge(other.velocity)
        self.tempo.update(other.tempo)
        self.programs.update(other.programs)
        for part, by_program in other.parts.items():
            self.parts.setdefault(part, Counter()).update(by_program)
        for group, by_split in other.groups.items():
            self.groups.setdefault(group, Counter()).update(by_split)
        self.kept.update(other.kept)


def run(cfg: Config) -> dict[str, Any]:
    """survey -> split keys -> chunks counted, binned and keyed -> shards, splits, manifest.

    Each pass runs on a notes part at a time in worker processes (sequences.workers; or a Dask
    cluster's, sequences.executor), so the stage keeps all cores busy; whatever their number,
    every output byte is the same."""
    p = cfg.sequences
    started = time.perf_counter()
    selection = select_tracks(p)
    corpus = read_corpus(cfg.paths)
    # scratch for the passes' outputs, emptied before and after: nothing here is resumed
    work = storage.work_dir(cfg.paths.work, "sequences", {"format": 2})
    for folder in ("survey", "runs"):
        shutil.rmtree(work / folder, ignore_errors=True)
        (work / folder).mkdir(parents=True)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        seconds[name] = round(time.perf_counter() - clock, 3)
        clock = time.perf_counter()

    pools = Pools(p)
    try:
        # Pass 1: split keys and the corpus' programs, before any note is binned or written.
        units = part_units(corpus.parts)
        survey = survey_parts(pools, units, set(corpus.file_ids), work / "survey")
        lap("survey")
        run_pairs = pair_files(survey, corpus.file_ids)
        keys = split_keys(corpus.file_ids, corpus.groups, survey.files, p.split_by, run_pairs)
        grouping = split_grouping(keys, run_pairs)
        lap("grouping")
        splits = {f: split_of(keys[f], p.seed, p.split) for f in corpus.file_ids}
        only_program = None
        if p.instrument == "most_common" and survey.programs:
            only_program = most_common(survey.programs)

        # Pass 2: features and chunks keyed per split, train-only histograms for the bins.
        files = {f: (splits[f], corpus.groups.get(f, "")) for f in corpus.file_ids}
        tally, runs = chunk_parts(pools, units, survey, files, only_program, work / "runs")
        lap("chunks")
        selection.only_program, selection.kept = only_program, tally.kept
        check_windows(tally, selection, survey.tracks, keys, corpus)
        bins = make_bins(tally.step, tally.duration, tally.velocity, p)
        manifest = write_shard_dir(cfg, pools, runs, corpus, keys, splits, bins, tally, grouping)
        lap("shards")
    finally:
        pools.close()
        shutil.rmtree(work, ignore_errors=True)
    seconds["total"] = round(time.perf_counter() - started, 3)
    return summarise(manifest, cfg.paths.shards, seconds)


def select_tracks(p: Sequences) -> Selection:
    try:
        return Selection.from_params(p)
    except ParamsError as exc:
        raise ParamsError(f"sequences.programs: {exc}") from None


def read_corpus(paths: Paths) -> Corpus:
    notes_dir = paths.notes
    files = read_files(paths.files_table).to_pylist()
    ok_files = sorted({f["file_id"] for f in files if f["status"] == "ok"})
    if not ok_files:
        raise LakhflowError(f"{paths.files_table} lists no file with status ok")
    groups = {f["file_id"]: f["group"] or "" for f in files if f["status"] == "ok"}
    parts = note_parts(notes_dir)
    if not parts:
        raise LakhflowError(f"no notes-*.parquet in {notes_dir}; run `lakhflow parse` first")
    return Corpus(ok_files, groups, parts)


# ---------------------------------------------------------------- the passes, in workers


def part_units(parts: list[Path]) -> list[list[Path]]:
    """The parts in units of work: consecutive parts that one file spans (a streaming writer may
    cut a file's notes across parts; parse never does) are one unit, read by one worker."""
    units: list[list[Path]] = []
    last: str | None = None
    for part in parts:
        table = pq.ParquetFile(part, read_dictionary=["file_id"])
        groups = [i for i in range(table.num_row_groups) if table.metadata.row_group(i).num_rows]
        if not groups:
            continue
        first = table.read_row_group(groups[0], columns=["file_id"]).column(0)[0].as_py()
        if units and first == last:
            units[-1].append(part)
        else:
            units.append([part])
        last = table.read_row_group(groups[-1], columns=["file_id"]).column(0)[-1].as_py()
    return units


class Pools:
    """The stage's worker pools, opened on first use and kept through its passes (a worker
    process outlives a pass): `sequences.executor`'s for the passes over the notes, local
    processes for the shards (they read the keyed runs on this disk)."""

    def __init__(self, p: Sequences) -> None:
        self.p = p
        self.settings = WorkerSettings(SequencesJob(p), PART_TIMEOUT_S, WORKER_MEMORY_MB)
        self.opened: dict[str, tuple[Pool, int]] = {}

    def get(self, executor: str) -> tuple[Pool, int]:
        if executor not in self.opened:
            p = self.p
            self.opened[executor] = open_pool(
                "sequences", executor, p.workers, p.scheduler_address, self.settings
            )
        return self.opened[executor]

    def close(self) -> None:
        for pool, _ in self.opened.values():
            pool.close()


def run_pass(
    pools: Pools,
    items: Iterable[tuple[tuple[Any, ...], Path]],
    names: list[str],
    desc: str,
    executor: str,
) -> Iterator[tuple[int, Any]]:
    """SequencesJob on every item (a batch of one): (index, summary) as each finishes, with a
    progress bar. A lost item ends the stage: the note tables were checked by parse, so a worker
    dying here is a bug or the machine."""
    pool, n = pools.get(executor)
    batches = (([item], path) for item, path in items)
    bar = tqdm(total=len(names), desc=desc, unit=" batches", disable=None, leave=False)
    try:
        for index, result in run_batches(pool, batches, 2 * n):
            for outcome in result.outcomes:
                if outcome[0] != "ok":
                    raise LakhflowError(f"the sequences stage lost {names[index]}: {outcome[-1]}")
            bar.update(1)
            yield index, result.summary
    finally:
        bar.close()


def sources(unit: list[Path], remote: bool) -> list[str | bytes]:
    """A unit's parts as paths, or as bytes for a cluster that may not share this disk."""
    return [part.read_bytes() if remote else str(part) for part in unit]


def unit_name(unit: list[Path]) -> str:
    return unit[0].name if len(unit) == 1 else f"{unit[0].name}..{unit[-1].name}"


@dataclass(frozen=True)
class SequencesJob:
    """The stage's work in a worker process (workers.BatchJob), one item a batch:
    ("survey", parts) -> pass 1's arrays file; ("chunks", parts, files, only_program) -> the
    keyed runs of the parts' chunks, and their Tally; ("shard", split, lo, hi, runs) -> a shard.
    One job for the three passes: the worker processes live through the stage."""

    p: Sequences

    stage: ClassVar[str] = "sequences"
    doing: ClassVar[str] = "its work on a notes part"
    process: ClassVar[str] = "sequences worker"

    def prepare(self) -> None:
        import google_crc32c  # noqa: F401  (before the memory limit)
        import pyarrow.parquet  # noqa: F401
        from isal import igzip  # noqa: F401

    def run(self, path: str, items: list[tuple[Any, ...]], answer: Callable[[tuple], None]) -> Any:
        ((index, kind, *args),) = items
        tmp = Path(f"{path}.{os.getpid()}.tmp")
        summary: Any = None
        if kind == "survey":
            (parts,) = args
            meta, arrays = survey_part(parts_of(parts), select_tracks(self.p), self.p.shared_run)
            storage.write_arrays(tmp, meta, arrays)
        elif kind == "chunks":
            parts, files, only_program = args
            keyed, summary = chunk_part(self.p, parts_of(parts), files, only_program)
            write_runs(tmp, keyed)
        else:
            split, lo, hi, runs = args
            summary = write_shard(tmp, [Path(r) for r in runs], split, lo, hi)
        tmp.replace(path)
        answer((index, "ok"))
        return summary

    def empty(self, path: str) -> Any:
        return None


def parts_of(parts: list[str | bytes]) -> list[Path | bytes]:
    return [part if isinstance(part, bytes) else Path(part) for part in parts]


# ---------------------------------------------------------------- pass 1: the survey


@dataclass
class Survey:
    """Pass 1's findings: each file's survey (its fingerprints stay on disk, in `paths`), the
    files of each part, the notes per program of eligible tracks and the tracks."""

    files: dict[str, FileSurvey]
    part_files: list[list[str]]
    paths: list[Path]
    programs: Counter[int]
    tracks: int


def survey_file(
    notes: Notes, selection: Selection, shared_run: int, programs: Counter[int]
) -> tuple[FileSurvey, int]:
    """A file's content hash, tune and shared-run fingerprints (of its pitched tracks, selected
    or not: a leak is a leak whatever the filters keep), and its tracks; the notes per program
    of its eligible tracks (in score mode every track the instrument filters let through) are
    added to `programs`."""
    slices = track_slices(notes)
    melodies = [notes["pitch"][rows] for _, rows in slices if not notes["is_drum"][rows.start]]
    info = FileSurvey(
        content_hash(notes), tune_fingerprint(notes), shared_run_fingerprints(melodies, shared_run)
    )
    for _, rows in slices:
        program, drum = int(notes["program"][rows.start]), bool(notes["is_drum"][rows.start])
        n = rows.stop - rows.start
        if selection.plays(program, drum) and (selection.score or selection.long_enough(n)):
            programs[program] += n
    return info, len(slices)


def survey_part(
    parts: list[Path | bytes], selection: Selection, shared_run: int
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A unit of parts' survey: its files (id, content hash, tune) in the parts' order, their
    fingerprints sorted by (hash, file) with the file's place in the part, the programs and
    the tracks."""
    rows: list[list[Any]] = []
    hashes: list[np.ndarray] = [np.empty(0, np.uint64)]
    owners: list[np.ndarray] = [np.empty(0, np.uint32)]
    programs: Counter[int] = Counter()
    tracks = 0
    for file_id, notes in iter_file_notes(parts):
        info, n_tracks = survey_file(notes, selection, shared_run, programs)
        hashes.append(info.runs)
        owners.append(np.full(len(info.runs), len(rows), np.uint32))
        rows.append([file_id, info.content, info.tune])
        tracks += n_tracks
    h, o = np.concatenate(hashes), np.concatenate(owners)
    order = np.lexsort((o, h))
    meta = {"files": rows, "programs": {str(q): n for q, n in programs.items()}, "tracks": tracks}
    return meta, {"hashes": h[order], "owners": o[order]}


def survey_parts(pools: Pools, units: list[list[Path]], ok: set[str], folder: Path) -> Survey:
    """Pass 1 over every unit of parts, in workers; what the stage keeps of it (the
    fingerprints stay on disk)."""
    executor = pools.p.executor
    remote = executor == "dask"
    paths = [folder / f"{i:05d}.arrays" for i in range(len(units))]
    items = ((("survey", sources(u, remote)), path) for u, path in zip(units, paths, strict=True))
    names = [unit_name(u) for u in units]
    for _ in run_pass(pools, items, names, "survey", executor):
        pass
    survey = Survey({}, [], paths, Counter(), 0)
    where: dict[str, str] = {}
    for path, name in zip(paths, names, strict=True):
        meta, _ = storage.read_arrays(path)
        survey.part_files.append([row[0] for row in meta["files"]])
        for file_id, content, tune in meta["files"]:
            if file_id in where:
                raise LakhflowError(
                    f"the notes of file {file_id} are in {where[file_id]} and in {name}, with "
                    "other files' between: a file's notes must be contiguous"
                )
            where[file_id] = name
            if file_id in ok:
                survey.files[file_id] = FileSurvey(content, tune)
        survey.programs.update({int(q): n for q, n in meta["programs"].items()})
        survey.tracks += meta["tracks"]
    return survey


def pair_files(survey: Survey, file_ids: list[str]) -> list[tuple[str, str]]:
    """splits.shared_run_pairs from the parts' fingerprint files, one slice of the fingerprint
    range at a time, each copied out of its file and the file let go: memory (mapped pages
    included) for a slice of them, not all."""
    index = {f: i for i, f in enumerate(file_ids)}
    total = sum(len(storage.read_arrays(path)[1]["hashes"]) for path in survey.paths)
    slices = max(PAIRING_SLICES, -(-total // SLICE_FINGERPRINTS))
    bounds = slice_bounds(slices)
    parts = []
    for path, files in zip(survey.paths, survey.part_files, strict=True):
        hashes = storage.read_arrays(path)[1]["hashes"]
        places = np.array([index.get(f, -1) for f in files] or [0], dtype=np.int64)
        parts.append((path, places, np.r_[0, np.searchsorted(hashes, bounds), len(hashes)]))
        del hashes
    found = []
    for s in range(slices):
        hashes, owners = [np.empty(0, np.uint64)], [np.empty(0, np.int64)]
        for path, places, cuts in parts:
            arrays = storage.read_arrays(path)[1]
            mine = places[np.array(arrays["owners"][cuts[s] : cuts[s + 1]])]
            ok = mine >= 0
            hashes.append(np.array(arrays["hashes"][cuts[s] : cuts[s + 1]])[ok])
            owners.append(mine[ok])
            del arrays
        found.append(slice_pairs(np.concatenate(hashes), np.concatenate(owners)))
    return pairs_of(found, file_ids)


def survey_files(
    parts: list[Path], ok: set[str], selection: Selection, shared_run: int
) -> tuple[dict[str, FileSurvey], Counter[int], int]:
    """Pass 1 in this process, fingerprints in memory: each ok file's survey, the notes per
    program of eligible tracks and the tracks (for a look at a few files, as tests take)."""
    survey: dict[str, FileSurvey] = {}
    programs: Counter[int] = Counter()
    tracks = 0
    for file_id, notes in iter_file_notes(parts):
        if file_id in ok:
            survey[file_id], n_tracks = survey_file(notes, selection, shared_run, programs)
            tracks += n_tracks
    return survey, programs, tracks


def split_grouping(keys: dict[str, str], run_pairs: list[tuple[str, str]]) -> dict[str, int]:
    """How the files fell into split keys: the manifest's and the metrics' account of it."""
    sizes = Counter(keys.values())
    return {
        "files": len(keys),
        "split_keys": len(sizes),
        "largest_split_group": max(sizes.values()),
        # files that share a long run with at least one other file (the link may be one of many)
        "files_grouped_by_shared_runs": len({f for pair in run_pairs for f in pair}),
    }


def most_common(programs: Counter[int]) -> int:
    """The program with the most notes; ties go to the lower program, whatever the file order."""
    return min(programs, key=lambda q: (-programs[q], q))


# ---------------------------------------------------------------- pass 2: chunks


def chunk_parts(
    pools: Pools,
    units: list[list[Path]],
    survey: Survey,
    files: dict[str, tuple[str, str]],
    only_program: int | None,
    folder: Path,
) -> tuple[Tally, list[Path]]:
    """Pass 2 over every unit, in workers (`files`: each file's split and group): the merged
    Tally (merged in unit order, so float sums are the same whatever order workers finish in)
    and the keyed-runs files."""
    p = pools.p
    remote = p.executor == "dask"
    paths = [folder / f"{i:05d}.arrays" for i in range(len(units))]
    items = (
        (("chunks", sources(u, remote), {f: files[f] for f in mine if f in files}, only_program),
         path)
        for u, mine, path in zip(units, survey.part_files, paths, strict=True)
    )  # fmt: skip
    tally = Tally.start(p)
    waiting: dict[int, Tally] = {}
    merged = 0
    names = [unit_name(u) for u in units]
    for index, part_tally in run_pass(pools, items, names, "sequences", p.executor):
        waiting[index] = part_tally
        while merged in waiting:
            tally.merge(waiting.pop(merged))
            merged += 1
    return tally, paths


def chunk_part(
    p: Sequences,
    parts: list[Path | bytes],
    files: dict[str, tuple[str, str]],
    only_program: int | None,
) -> tuple[dict[str, list[tuple[int, bytes]]], Tally]:
    """Pass 2 on a unit of parts: each split's keyed chunks, and their Tally."""
    tally = Tally.start(p)
    selection = select_tracks(p)
    selection.only_program = only_program
    keyed: dict[str, list[tuple[int, bytes]]] = {name: [] for name in schema.SPLIT_NAMES}
    for file_id, notes in iter_file_notes(parts):
        if file_id not in files:
            continue
        split, group = files[file_id]
        for stream in file_streams(notes, selection, p):
            add_stream(tally, keyed[split], p, split, file_id, notes, stream, group)
    tally.kept = selection.kept
    return keyed, tally


def add_stream(
    tally: Tally,
    keyed: list[tuple[int, bytes]],
    p: Sequences,
    split: str,
    file_id: str,
    notes: Notes,
    stream: Stream,
    group: str = "",
) -> None:
    """One stream: its keyed chunks, its counts and tempi, and (train) bins."""
    n = len(stream)
    total = tally.totals[split]
    features = stream_features(notes, stream, p)
    programs = notes["program"][stream.rows].astype(np.int64)
    notes_by_program = counts_of(programs)
    # a score's chunks carry the program most of its notes have (a track's: its own)
    program = most_common(notes_by_program)
    encoder = ChunkEncoder(features, program, file_id, stream.track, group)
    for lo in chunk_starts(n, p.chunk_notes, p.seq_length):
        hi = min(n, lo + p.chunk_notes)
        record = encoder.chunk(lo, hi)
        keyed.append((shuffle_key(p.seed, file_id, stream.track, lo), record))
        total.chunks += 1
        total.windows += windows_in(hi - lo, p.seq_length, p.stride)
    if file_id not in total.files:
        tally.groups.setdefault(group, Counter())[split] += 1
    total.files.add(file_id)
    total.streams += 1
    total.tracks += len(np.unique(notes["track"][stream.rows]))
    total.notes += n
    tally.programs.update(notes_by_program)
    for key, n_notes in counts_of(stream.part * instruments.N_PROGRAMS + programs).items():
        part, q = divmod(key, instruments.N_PROGRAMS)
        tally.parts.setdefault(part, Counter())[q] += n_notes
    tally.tempo.update(tempo_cells(notes, stream.rows))
    if split == "train":
        tally.step.add(features["step"])
        tally.duration.add(features["duration"])
        tally.velocity.add(features["velocity"])


def counts_of(values: np.ndarray) -> Counter[int]:
    """How often each value (a small int >= 0) occurs, as a Counter of Python ints."""
    counts = np.bincount(values)  # a tenth of np.unique's time, which sorts
    found = np.flatnonzero(counts)
    return Counter(dict(zip(found.tolist(), counts[found].tolist(), strict=True)))


TEMPO_CELLS = 100_001  # 0.01 bpm cells up to 1000 bpm


def tempo_cells(notes: Notes, rows: np.ndarray) -> Counter[int]:
    """How many of the stream's notes play at each tempo (0.01 bpm cells): beats over seconds."""
    seconds = (notes["end"][rows] - notes["start"][rows]).astype(np.float64)
    beats = (notes["end_beat"][rows] - notes["start_beat"][rows]).astype(np.float64)
    timed = seconds > 1e-3
    bpm = 60.0 * beats[timed] / seconds[timed]
    index = np.clip(np.round(bpm * 100), 0, TEMPO_CELLS - 1).astype(np.int64)
    return counts_of(index)


def check_windows(
    tally: Tally, selection: Selection, n_tracks: int, keys: dict[str, str], corpus: Corpus
) -> None:
    """Refuse a run that leaves no window at all, or none to train on, naming the cause."""
    if sum(t.windows for t in tally.totals.values()) == 0:
        raise LakhflowError(f"no windows: {selection.empty_reason(n_tracks)}")
    if tally.totals["train"].windows == 0:
        msg = (
            f"the train split holds no windows ({len(set(keys.values()))} split keys over "
            f"{len(corpus.file_ids)} files); add files or change sequences.split or sequences.seed"
        )
        raise LakhflowError(msg)


# ---------------------------------------------------------------- pass 3: shards


def write_split_shards(
    pools: Pools, runs: list[Path], out: Path, shard_bytes: int
) -> dict[str, list[dict]]:
    """Every split's shards, side by side in local workers: shard i of n holds the i-th of n
    equal ranges of the key space; n sizes them near shard_bytes, compressed, from the records'
    bytes and a sample's compression. Named once written, as `<split>-i-of-n.tfrecord.gz`."""
    readers = [Runs(path) for path in runs]
    sizes = {
        split: sum(r.summary.get(split, {}).get("bytes", 0) for r in readers)
        for split in schema.SPLIT_NAMES
    }
    sample: list[bytes] = []
    left = SAMPLE_BYTES
    for reader in readers:  # the first train chunks, by key, of the first units
        if left <= 0:
            break
        sample += reader.sample("train", left)
        left = SAMPLE_BYTES - sum(map(len, sample))
    ratio = compression_ratio(sample)
    del readers, sample
    plan = [
        (split, i, lo, hi)
        for split in schema.SPLIT_NAMES
        if sizes[split]
        for i, (lo, hi) in enumerate(shard_ranges(shard_count(sizes[split], ratio, shard_bytes)))
    ]
    partials = [out / f".{split}-{i:05d}.partial" for split, i, _, _ in plan]
    listed = [str(path) for path in runs]
    items = (
        (("shard", split, lo, hi, listed), path)
        for (split, _, lo, hi), path in zip(plan, partials, strict=True)
    )
    names = [f"{split} shard {i}" for split, i, _, _ in plan]
    written = dict(run_pass(pools, items, names, "shards", "local"))
    shards: dict[str, list[dict]] = {split: [] for split in schema.SPLIT_NAMES}
    for index, ((split, _, _, _), partial) in enumerate(zip(plan, partials, strict=True)):
        if written[index]["chunks"]:
            shards[split].append({"partial": partial, **written[index]})
        else:
            partial.unlink()  # a key range no chunk fell in (a split of a few chunks)
    for split, entries in shards.items():
        for i, entry in enumerate(entries):
            final = out / f"{split}-{i:05d}-of-{len(entries):05d}.tfrecord.gz"
            entry.pop("partial").replace(final)
            entries[i] = {"name": final.name, **entry}
    return shards


def write_shard_dir(
    cfg: Config,
    pools: Pools,
    runs: list[Path],
    corpus: Corpus,
    keys: dict[str, str],
    splits: dict[str, str],
    bins: dict[str, dict[str, list[float]]],
    tally: Tally,
    grouping: dict[str, int],
) -> dict[str, Any]:
    """Publish the shards, splits.parquet and manifest.json together (atomically); the manifest."""
    p = cfg.sequences
    with storage.atomic_dir(cfg.paths.shards, "sequences") as out:
        split_shards = write_split_shards(pools, runs, out, int(p.shard_mb * (1 << 20)))
        table = pa.table(
            {
                "file_id": corpus.file_ids,
                "split_key": [keys[f] for f in corpus.file_ids],
                "split": [splits[f] for f in corpus.file_ids],
            },
            schema=schema.SPLITS,
        )
        pq.write_table(table, out / cfg.paths.splits.name)
        manifest = build_manifest(cfg, bins, tally, split_shards)
        manifest["parts"] = part_vocabulary(tally.parts, p.max_part_rank)
        # each folder group's files per split ("" for files in no folder): what train.condition
        # turns into the style vocabulary
        manifest["groups"] = {
            g: {s: tally.groups[g][s] for s in schema.SPLIT_NAMES} for g in sorted(tally.groups)
        }
        manifest["grouping"] = {"shared_run": p.shared_run, "split_by": p.split_by, **grouping}
        manifest["splits_sha256"] = storage.file_digest(out / cfg.paths.splits.name, "sha256")
        (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def build_manifest(
    cfg: Config,
    bins: dict[str, dict[str, list[float]]],
    tally: Tally,
    shards: dict[str, list[dict]],
) -> dict[str, Any]:
    p = cfg.sequences
    programs, totals = tally.programs, tally.totals
    window = [p.seq_length + 1]
    return {
        "source": cfg.download.source,
        "mode": p.mode,
        "time_unit": p.time_unit,
        "seq_length": p.seq_length,
        "stride": p.stride,
        "chunk_notes": p.chunk_notes,
        "seed": p.seed,
        "transpose": p.transpose,
        "features": {
            "pitch": {"dtype": "int32", "shape": window},
            "step": {"dtype": "float32", "shape": window},
            "duration": {"dtype": "float32", "shape": window},
            "velocity": {"dtype": "int32", "shape": window},
            "part": {"dtype": "int32", "shape": window},
            "program": {"dtype": "int32", "shape": []},
            "group": {"dtype": "string", "shape": []},
        },
        "bins": bins,
        "programs": {
            "most_common": most_common(programs),
            "counts": {str(q): programs[q] for q in sorted(programs)},
        },
        "tempo_bpm": median_from_counts(tally.tempo, 0.01),
        "splits": {
            name: {
                "files": len(t.files),
                "streams": t.streams,
                "tracks": t.tracks,
                "chunks": t.chunks,
                "notes": t.notes,
                "windows": t.windows,
                "shards": shards[name],
            }
            for name, t in totals.items()
        },
    }


def part_vocabulary(parts: dict[int, Counter[int]], max_rank: int) -> dict[str, Any]:
    """The manifest's parts: the vocabulary's size (max_rank for each class) and the parts that
    occur, each with its name, class, rank, the program most of its notes had and its notes."""
    return {
        "max_rank": max_rank,
        "size": len(PART_CLASSES) * max_rank,
        "vocabulary": [
            {
                "index": index,
                "name": part_name(index, max_rank),
                "family": PART_CLASSES[index // max_rank],
                "rank": index % max_rank + 1,
                "program": most_common(parts[index]),
                "notes": sum(parts[index].values()),
            }
            for index in sorted(parts)
        ],
    }


def summarise(
    manifest: dict[str, Any], shard_dir: Path, seconds: dict[str, float]
) -> dict[str, Any]:
    """The stage's metrics and its last log line; `seconds`: each pass's and the total."""
    splits = manifest["splits"]
    grouping = manifest["grouping"]
    metrics: dict[str, Any] = {
        k: grouping[k]
        for k in ("split_keys", "largest_split_group", "files_grouped_by_shared_runs")
    }
    for name, s in splits.items():
        for k in ("files", "chunks", "notes", "windows"):
            metrics[f"{name}_{k}"] = s[k]
        metrics[f"{name}_shard_bytes"] = sum(x["bytes"] for x in s["shards"])
    notes = sum(s["notes"] for s in splits.values())
    metrics["seconds"] = seconds["total"]
    metrics["notes_per_s"] = round(notes / max(seconds["total"], 1e-9))
    metrics |= {f"{name}_seconds": s for name, s in seconds.items() if name != "total"}
    counts = ", ".join(f"{n} {splits[n]['windows']:,}" for n in schema.SPLIT_NAMES)
    log.info(
        "Wrote %d shards (%.1f MB) to %s in %.1f s (%s notes/s): windows of %d notes at stride "
        "%d: %s; %d split keys over %d files (largest group %d files, %d files grouped by "
        "shared runs); %s mode, %d parts; most common program %s; tempo %.1f bpm. "
        "Seconds: %s.",
        sum(len(s["shards"]) for s in splits.values()),
        sum(metrics[f"{n}_shard_bytes"] for n in schema.SPLIT_NAMES) / 1e6,
        shard_dir,
        seconds["total"],
        f"{metrics['notes_per_s']:,}",
        manifest["seq_length"] + 1,
        manifest["stride"],
        counts,
        grouping["split_keys"],
        grouping["files"],
        grouping["largest_split_group"],
        grouping["files_grouped_by_shared_runs"],
        manifest["mode"],
        len(manifest["parts"]["vocabulary"]),
        describe(manifest["programs"]["most_common"]),
        manifest["tempo_bpm"],
        ", ".join(f"{name} {s:.1f}" for name, s in seconds.items() if name != "total"),
    )
    return metrics
