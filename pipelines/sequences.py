"""Sequences stage: the note tables become streams of notes, chunked into GZIP TFRecord shards,
split and binned.

Reads `data/notes/notes-*.parquet` and `data/notes/files.parquet`; writes `data/shards/`:
`{train,val,test}-NNNNN-of-MMMMM.tfrecord.gz`, `splits.parquet` and `manifest.json` (CONTRACTS.md).
Here: reading the note tables, selecting tracks and `run`; how a file's notes become streams
with parts is in `streams`, split keys in `splits`, the bins in `bins`, the spill and shard
writer in `shards`. The instrument filters (drums, programs, instrument) choose tracks in both
modes; the length filters (min_notes, seq_length) apply to the stream: a track in track mode, the
merged score in score mode, so a short track still plays in its score. The manifest lists the
parts that occur: name, family, rank, the program most of their notes had, and their notes.

Groups. Every chunk carries its file's folder group (the files table's `group`: a composer for the
music21 source, an artist or collection folder for a user's own MIDI); the manifest counts each
group's files per split, which is what `train.condition: group` turns into styles.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    ChunkSpill,
    chunk_example,
    shuffle_key,
    spill_buckets,
    spilling,
    write_shards,
)
from pipelines.splits import (
    FileSurvey,
    content_hash,
    shared_run_fingerprints,
    shared_run_pairs,
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


def iter_file_notes(parts: list[Path], batch_rows: int = 1 << 16) -> Iterator[tuple[str, Notes]]:
    """Each file's notes as numpy columns, streaming the parts (memory: one batch plus one file)."""
    pending_id: str | None = None
    pending: list[Notes] = []
    seen: set[str] = set()

    def flush() -> tuple[str, Notes]:
        assert pending_id is not None
        seen.add(pending_id)
        merged = {k: np.concatenate([p[k] for p in pending]) for k in NOTE_COLUMNS[1:]}
        return pending_id, merged

    for part in parts:
        for batch in pq.ParquetFile(part).iter_batches(batch_size=batch_rows, columns=NOTE_COLUMNS):
            ids = batch.column("file_id").to_numpy(zero_copy_only=False)
            if len(ids) == 0:
                continue
            cols = {k: batch.column(k).to_numpy(zero_copy_only=False) for k in NOTE_COLUMNS[1:]}
            cuts = [0, *(np.flatnonzero(ids[1:] != ids[:-1]) + 1).tolist(), len(ids)]
            for lo, hi in itertools.pairwise(cuts):
                file_id = str(ids[lo])
                if file_id != pending_id:
                    if pending_id is not None:
                        yield flush()
                    if file_id in seen:
                        msg = (
                            f"{part.name}: notes of file {file_id} are not contiguous (not sorted)"
                        )
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


def median_from_counts(counts: np.ndarray, resolution: float) -> float:
    total = counts.sum()
    if total == 0:
        return 120.0
    cell = int(np.searchsorted(np.cumsum(counts), (total + 1) / 2))
    return round(cell * resolution, 2)


# ---------------------------------------------------------------- the stage


@dataclass
class SplitTotals:
    files: set[str] = field(default_factory=set)
    streams: int = 0  # tracks in track mode, scores in score mode
    tracks: int = 0
    chunks: int = 0
    notes: int = 0
    windows: int = 0


@dataclass
class Corpus:
    """The files the note tables list with status ok, and where their notes are."""

    file_ids: list[str]  # sorted
    groups: dict[str, str]  # file_id -> its folder group, "" where it has none
    parts: list[Path]  # the notes-*.parquet tables, in the order they are streamed
    notes: int  # the notes the files table counts for them: what sizes the spill


@dataclass
class Tally:
    """What pass 2 counts: per-split totals, the train split's histograms, tempi, programs,
    parts (each part's notes per program) and groups (each group's files per split)."""

    totals: dict[str, SplitTotals]
    step: Histogram
    duration: Histogram
    velocity: Histogram
    tempo_counts: np.ndarray  # 0.01 bpm cells up to 1000 bpm
    programs: Counter[int]
    parts: dict[int, Counter[int]]
    groups: dict[str, Counter[str]]

    @classmethod
    def start(cls, p: Sequences) -> Tally:
        return cls(
            totals={name: SplitTotals() for name in schema.SPLIT_NAMES},
            step=Histogram.for_range(p.max_step),
            duration=Histogram.for_range(p.max_duration),
            velocity=Histogram.for_velocity(),
            tempo_counts=np.zeros(100_001, dtype=np.int64),
            programs=Counter(),
            parts={},
            groups={},
        )


def run(cfg: Config) -> dict[str, Any]:
    """survey -> split keys -> chunks spilled, counted and binned -> shards, splits, manifest."""
    p = cfg.sequences
    selection = select_tracks(p)
    corpus = read_corpus(cfg.paths)

    # Pass 1: split keys and the corpus' programs, before any note is binned or written.
    survey, program_notes, n_tracks = survey_files(
        corpus.parts, set(corpus.file_ids), selection, p.shared_run
    )
    run_pairs = shared_run_pairs(corpus.file_ids, survey)
    keys = split_keys(corpus.file_ids, corpus.groups, survey, p.split_by, run_pairs)
    grouping = split_grouping(keys, run_pairs)
    del survey  # the fingerprints: the largest thing pass 1 holds
    splits = {f: split_of(keys[f], p.seed, p.split) for f in corpus.file_ids}
    if p.instrument == "most_common" and program_notes:
        selection.only_program = most_common(program_notes)

    # Pass 2: features, chunks (spilled per split), train-only histograms for the bins.
    work = storage.work_dir(cfg.paths.work, "sequences", {"params": p.model_dump(mode="json")})
    with spilling(work / "spill", spill_buckets(corpus.notes)) as spill:
        tally = spill_chunks(corpus, splits, selection, p, spill)
        spill.close()  # every bucket complete on disk before it is read back
        check_windows(tally, selection, n_tracks, keys, corpus)
        bins = make_bins(tally.step, tally.duration, tally.velocity, p)
        manifest = write_shard_dir(cfg, spill, corpus, keys, splits, bins, tally, grouping)
    return summarise(manifest, cfg.paths.shards)


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
    notes = sum(int(f["n_notes"] or 0) for f in files if f["status"] == "ok")
    return Corpus(ok_files, groups, parts, notes)


def survey_files(
    parts: list[Path], ok: set[str], selection: Selection, shared_run: int
) -> tuple[dict[str, FileSurvey], Counter[int], int]:
    """Pass 1: each file's content hash, tune and shared-run fingerprints (of its pitched tracks,
    selected or not: a leak is a leak whatever the filters keep), and the notes per program of
    eligible tracks (in score mode every track the instrument filters let through)."""
    survey: dict[str, FileSurvey] = {}
    programs: Counter[int] = Counter()
    tracks = 0
    for file_id, notes in tqdm(
        iter_file_notes(parts), desc="survey", unit=" files", disable=None, leave=False
    ):
        if file_id not in ok:
            continue
        slices = track_slices(notes)
        melodies = [notes["pitch"][rows] for _, rows in slices if not notes["is_drum"][rows.start]]
        survey[file_id] = FileSurvey(
            content_hash(notes),
            tune_fingerprint(notes),
            shared_run_fingerprints(melodies, shared_run),
        )
        for _, rows in slices:
            tracks += 1
            program, drum = int(notes["program"][rows.start]), bool(notes["is_drum"][rows.start])
            n = rows.stop - rows.start
            if selection.plays(program, drum) and (selection.score or selection.long_enough(n)):
                programs[program] += n
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


def spill_chunks(
    corpus: Corpus,
    splits: dict[str, str],
    selection: Selection,
    p: Sequences,
    spill: ChunkSpill,
) -> Tally:
    """Pass 2: every stream's chunks into its split's spill, and the stream counted."""
    tally = Tally.start(p)
    selection.kept.clear()
    ok = set(corpus.file_ids)
    for file_id, notes in tqdm(
        iter_file_notes(corpus.parts), desc="sequences", unit=" files", disable=None
    ):
        if file_id not in ok:
            continue
        for stream in file_streams(notes, selection, p):
            group = corpus.groups.get(file_id, "")
            add_stream(tally, spill, p, splits[file_id], file_id, notes, stream, group)
    return tally


def add_stream(
    tally: Tally,
    spill: ChunkSpill,
    p: Sequences,
    split: str,
    file_id: str,
    notes: Notes,
    stream: Stream,
    group: str = "",
) -> None:
    """One stream: its chunks into the spill, its counts and tempi, and (train) bins."""
    n = len(stream)
    total = tally.totals[split]
    features = stream_features(notes, stream, p)
    programs = notes["program"][stream.rows].astype(np.int64)
    notes_by_program = counts_of(programs)
    # a score's chunks carry the program most of its notes have (a track's: its own)
    program = most_common(notes_by_program)
    for lo in chunk_starts(n, p.chunk_notes, p.seq_length):
        hi = min(n, lo + p.chunk_notes)
        record = chunk_example(features, lo, hi, program, file_id, stream.track, group)
        spill.add(split, shuffle_key(p.seed, file_id, stream.track, lo), record)
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
    tally.tempo_counts += tempo_cells(notes, stream.rows, len(tally.tempo_counts))
    if split == "train":
        tally.step.add(features["step"])
        tally.duration.add(features["duration"])
        tally.velocity.add(features["velocity"])


def counts_of(values: np.ndarray) -> Counter[int]:
    """How often each value (a small int >= 0) occurs, as a Counter of Python ints."""
    counts = np.bincount(values)  # a tenth of np.unique's time, which sorts
    found = np.flatnonzero(counts)
    return Counter(dict(zip(found.tolist(), counts[found].tolist(), strict=True)))


def tempo_cells(notes: Notes, rows: np.ndarray, cells: int) -> np.ndarray:
    """How many of the stream's notes play at each tempo (0.01 bpm cells): beats over seconds."""
    seconds = (notes["end"][rows] - notes["start"][rows]).astype(np.float64)
    beats = (notes["end_beat"][rows] - notes["start_beat"][rows]).astype(np.float64)
    timed = seconds > 1e-3
    bpm = 60.0 * beats[timed] / seconds[timed]
    index = np.clip(np.round(bpm * 100), 0, cells - 1).astype(np.int64)
    return np.bincount(index, minlength=cells)


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


def write_shard_dir(
    cfg: Config,
    spill: ChunkSpill,
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
        shard_bytes = int(p.shard_mb * (1 << 20))
        split_shards = {
            name: write_shards(spill.shuffled(name), out, name, shard_bytes)
            for name in schema.SPLIT_NAMES
        }
        table = pa.table(
            {
                "file_id": corpus.file_ids,
                "split_key": [keys[f] for f in corpus.file_ids],
                "split": [splits[f] for f in corpus.file_ids],
            },
            schema=schema.SPLITS,
        )
        pq.write_table(table, out / cfg.paths.splits.name)
        manifest = build_manifest(
            cfg, bins, tally.programs, tally.tempo_counts, tally.totals, split_shards
        )
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
    programs: Counter[int],
    tempo_counts: np.ndarray,
    totals: dict[str, SplitTotals],
    shards: dict[str, list[dict]],
) -> dict[str, Any]:
    p = cfg.sequences
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
        "tempo_bpm": median_from_counts(tempo_counts, 0.01),
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


def summarise(manifest: dict[str, Any], shard_dir: Path) -> dict[str, Any]:
    """The stage's metrics and its last log line."""
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
    counts = ", ".join(f"{n} {splits[n]['windows']:,}" for n in schema.SPLIT_NAMES)
    log.info(
        "Wrote %d shards (%.1f MB) to %s: windows of %d notes at stride %d: %s; "
        "%d split keys over %d files (largest group %d files, %d files grouped by shared "
        "runs); %s mode, %d parts; most common program %s; "
        "tempo %.1f bpm.",
        sum(len(s["shards"]) for s in splits.values()),
        sum(metrics[f"{n}_shard_bytes"] for n in schema.SPLIT_NAMES) / 1e6,
        shard_dir,
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
    )
    return metrics
