"""Sequences stage: the note tables become track chunks in GZIP TFRecord shards, split and binned.

Reads `data/notes/notes-*.parquet` and `data/notes/files.parquet`; writes `data/shards/`:
`{train,val,test}-NNNNN-of-MMMMM.tfrecord.gz`, `splits.parquet` and `manifest.json` (CONTRACTS.md).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import shutil
import struct
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from pipelines import schema, storage
from pipelines.config import Config, Sequences
from pipelines.errors import LakhflowError, ParamsError
from pipelines.instruments import describe, select_programs

log = logging.getLogger(__name__)

NOTE_COLUMNS = [f.name for f in schema.NOTES]
TUNE_INTERVALS = 16  # the opening of the highest voice that names a tune
ZERO_STEP = 1e-6  # steps below this are simultaneous onsets (chords): the step bins' class 0
HIST_CELLS = 1 << 15  # fine grid under the quantile bins: bounded memory however large the corpus
SPILL_BUCKET_BYTES = 256 << 20  # memory bound of the within-split shuffle
FLUSH_MAX = 4 << 20  # uncompressed bytes between looks at a shard's size on disk
_SPILL_HEADER = struct.Struct("<QI")

Notes = dict[str, np.ndarray]


# ---------------------------------------------------------------- reading the note tables


def read_files(notes_dir: Path) -> pa.Table:
    path = notes_dir / "files.parquet"
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


def track_slices(notes: Notes) -> list[tuple[int, slice]]:
    """The (track, rows) runs of one file's notes, which are sorted by track."""
    tracks = notes["track"]
    cuts = [0, *(np.flatnonzero(tracks[1:] != tracks[:-1]) + 1).tolist(), len(tracks)]
    return [(int(tracks[lo]), slice(lo, hi)) for lo, hi in itertools.pairwise(cuts)]


# ---------------------------------------------------------------- selecting tracks

FILTERS = (
    "sequences.include_drums",
    "sequences.programs",
    "sequences.instrument",
    "sequences.min_notes",
    "sequences.seq_length",
)


@dataclass
class Selection:
    """Which tracks become training data, and how many tracks each filter let through."""

    programs: frozenset[int] | None
    include_drums: bool
    min_notes: int
    window: int  # seq_length + 1: a track shorter than one window gives nothing
    only_program: int | None = None  # set by instrument: most_common after the survey
    kept: Counter[str] = field(default_factory=Counter)

    @classmethod
    def from_params(cls, p: Sequences) -> Selection:
        return cls(select_programs(p.programs), p.include_drums, p.min_notes, p.seq_length + 1)

    def passes(self, program: int, is_drum: bool, n: int, *, count: bool = False) -> bool:
        checks = (
            self.include_drums or not is_drum,
            is_drum or self.programs is None or program in self.programs,
            self.only_program is None or (program == self.only_program and not is_drum),
            n >= self.min_notes,
            n >= self.window,
        )
        for name, ok in zip(FILTERS, checks, strict=True):
            if not ok:
                return False
            if count:
                self.kept[name] += 1
        return True

    def empty_reason(self, tracks: int) -> str:
        """Names the filter that removed every track."""
        left = tracks
        for name in FILTERS:
            if self.kept[name] == 0:
                value = {
                    "sequences.include_drums": str(self.include_drums).lower(),
                    "sequences.programs": sorted(self.programs or []),
                    "sequences.instrument": (
                        "most_common" if self.only_program is not None else "all"
                    ),
                    "sequences.min_notes": self.min_notes,
                    "sequences.seq_length": f"{self.window - 1} (tracks need seq_length+1 notes)",
                }[name]
                return f"{name}={value} removed all {left} remaining tracks"
            left = self.kept[name]
        return "no track gave a window"


# ---------------------------------------------------------------- split keys


def content_hash(notes: Notes) -> str:
    """The file's notes, whatever its bytes: onset and length to the millisecond, pitch, drum."""
    start = np.round(notes["start"].astype(np.float64) * 1000).astype(np.int64)
    length = np.round((notes["end"] - notes["start"]).astype(np.float64) * 1000).astype(np.int64)
    rows = np.stack(
        [start, notes["pitch"].astype(np.int64), length, notes["is_drum"].astype(np.int64)]
    )
    order = np.lexsort(rows[::-1])
    return hashlib.sha256(np.ascontiguousarray(rows[:, order]).tobytes()).hexdigest()[:20]


def highest_voice(
    notes: Notes, limit: int = TUNE_INTERVALS + 1, max_onsets: int = 4096
) -> list[int]:
    """The skyline: the highest sounding pitch at each onset, repeats merged, first `limit` pitches.

    Pitched notes of every track count, so a melody is found whether it has its own track
    (a chorale's soprano) or shares one with its accompaniment (a piano file).
    """
    pitched = ~notes["is_drum"]
    start = np.round(notes["start"][pitched].astype(np.float64) * 1000).astype(np.int64)
    end = np.round(notes["end"][pitched].astype(np.float64) * 1000).astype(np.int64)
    pitch = notes["pitch"][pitched].astype(np.int64)
    order = np.argsort(start, kind="stable")
    start, end, pitch = start[order], np.maximum(end[order], start[order]), pitch[order]
    melody: list[int] = []
    onsets = np.unique(start)[:max_onsets]
    for lo in range(0, len(onsets), 32):
        block = onsets[lo : lo + 32]
        upto = int(np.searchsorted(start, block[-1], side="right"))
        s, e, p = start[:upto], end[:upto], pitch[:upto]
        near = (e > block[0]) | (s >= block[0])
        s, e, p = s[near], e[near], p[near]
        t = block[:, None]
        # a note sounds at t from its onset until its end; a zero-length note at its onset only
        sounding = (s[None, :] <= t) & ((e[None, :] > t) | (s[None, :] == t))
        for top in np.where(sounding, p[None, :], -1).max(axis=1).tolist():
            if top >= 0 and (not melody or melody[-1] != top):
                melody.append(top)
        if len(melody) >= limit:
            break
    return melody[:limit]


def tune_fingerprint(notes: Notes) -> str | None:
    """The first 16 pitch intervals of the highest voice (key-independent), or None if shorter."""
    melody = highest_voice(notes)
    if len(melody) <= TUNE_INTERVALS:
        return None
    intervals = np.diff(np.asarray(melody, dtype=np.int16)).astype(np.int8)
    return hashlib.sha256(intervals.tobytes()).hexdigest()[:20]


class UnionFind:
    """Labels joined into groups; each group's root is its smallest label."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, label: str) -> str:
        root = label
        while (up := self.parent.setdefault(root, root)) != root:
            root = up
        while label != root:  # path compression
            self.parent[label], label = root, self.parent[label]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass(frozen=True)
class FileSurvey:
    content: str
    tune: str | None


def split_keys(
    file_ids: list[str],
    groups: dict[str, str],
    survey: dict[str, FileSurvey],
    split_by: str,
) -> dict[str, str]:
    """Each file's split key: files sharing notes, a tune (split_by tune) or a group share one."""
    links = UnionFind()
    for file_id in file_ids:
        label = f"file:{file_id}"
        links.find(label)
        info = survey.get(file_id)
        if info is not None:
            # the same notes in other bytes always travel together, whatever split_by says
            links.union(label, f"notes:{info.content}")
            if split_by == "tune" and info.tune is not None:
                links.union(label, f"tune:{info.tune}")
        if split_by == "group" and groups.get(file_id):
            links.union(label, f"group:{groups[file_id]}")
    named: dict[str, str] = {}
    for file_id in file_ids:
        group = groups.get(file_id) if split_by == "group" else None
        if group:
            root = links.find(f"file:{file_id}")
            named[root] = min(named.get(root, f"group:{group}"), f"group:{group}")
    # the root is the group's smallest label, "file:<smallest file_id>"
    return {
        f: named.get(links.find(f"file:{f}"), links.find(f"file:{f}").removeprefix("file:"))
        for f in file_ids
    }


def split_of(key: str, seed: int, ratios: dict[str, float]) -> str:
    """train/val/test from a hash of the split key and the seed."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    edge = 0.0
    chosen = ""
    for name in schema.SPLIT_NAMES:
        if ratios[name] <= 0:
            continue
        chosen = name
        edge += ratios[name]
        if u < edge:
            return name
    return chosen


# ---------------------------------------------------------------- features and chunks


def track_features(notes: Notes, rows: slice, p: Sequences) -> dict[str, np.ndarray]:
    """pitch, step, duration, velocity of one track's notes; step of the track's first note is 0."""
    beats = p.time_unit == "beats"
    start = notes["start_beat" if beats else "start"][rows].astype(np.float64)
    end = notes["end_beat" if beats else "end"][rows].astype(np.float64)
    step = np.diff(start, prepend=start[:1])
    return {
        "pitch": notes["pitch"][rows].astype(np.int64),
        "step": np.clip(step, 0.0, p.max_step).astype(np.float32),
        "duration": np.clip(end - start, 0.0, p.max_duration).astype(np.float32),
        "velocity": notes["velocity"][rows].astype(np.int64),
    }


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


def chunk_example(
    features: dict[str, np.ndarray], lo: int, hi: int, program: int, file_id: str, track: int
) -> bytes:
    from tensorflow.core.example import example_pb2

    example = example_pb2.Example()
    feature = example.features.feature
    feature["pitch"].int64_list.value.extend(features["pitch"][lo:hi].tolist())
    feature["step"].float_list.value.extend(features["step"][lo:hi].tolist())
    feature["duration"].float_list.value.extend(features["duration"][lo:hi].tolist())
    feature["velocity"].int64_list.value.extend(features["velocity"][lo:hi].tolist())
    feature["program"].int64_list.value.append(program)
    feature["file_id"].bytes_list.value.append(file_id.encode())
    feature["track"].int64_list.value.append(track)
    feature["offset"].int64_list.value.append(lo)
    # A proto map's wire order follows a hash seeded per process: without `deterministic`
    # two runs on the same notes write other shard bytes, and DVC reruns training.
    return example.SerializeToString(deterministic=True)


def shuffle_key(seed: int, file_id: str, track: int, offset: int) -> int:
    """A chunk's place in its split's shuffled order: the same whatever order files came in."""
    digest = hashlib.sha256(f"{seed}:{file_id}:{track}:{offset}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


# ---------------------------------------------------------------- bins


class Histogram:
    """Counts and sums of values on a fine grid: quantile bins and class means in bounded memory.

    A value's cell is `searchsorted(boundaries, x, side="right")`, the rule the manifest's edges
    use, and every edge is one of these boundaries, so a class is exactly a run of cells.
    """

    def __init__(self, boundaries: np.ndarray) -> None:
        self.boundaries = boundaries
        self.counts = np.zeros(len(boundaries) + 1, dtype=np.int64)
        self.sums = np.zeros(len(boundaries) + 1, dtype=np.float64)

    @classmethod
    def for_range(cls, maximum: float) -> Histogram:
        width = maximum / HIST_CELLS
        # cell boundaries at half-cells, so musical values (0.5, 1.0 beat) never sit on an edge
        grid = (np.arange(HIST_CELLS) + 0.5) * width
        return cls(np.concatenate([[ZERO_STEP], grid[grid > ZERO_STEP]]))

    @classmethod
    def for_velocity(cls) -> Histogram:
        return cls(np.arange(127, dtype=np.float64) + 0.5)

    def add(self, values: np.ndarray) -> None:
        values = values.astype(np.float64)
        cells = np.searchsorted(self.boundaries, values, side="right")
        size = len(self.counts)
        self.counts += np.bincount(cells, minlength=size)
        self.sums += np.bincount(cells, weights=values, minlength=size)

    def equal_mass_cuts(self, classes: int, first_cell: int = 0) -> list[int]:
        """Cells after which a class ends: each class takes an equal share of the mass still left,
        so a value that alone outweighs a share (0.5 beat) gets its own class and no class is empty.
        """
        cuts: list[int] = []
        counts = self.counts[first_cell:].tolist()
        remaining = sum(counts)
        acc = prev = 0
        for i, c in enumerate(counts):
            if c == 0:
                continue
            left = classes - len(cuts)
            share = remaining / left if left > 1 else float("inf")
            # a heavy value (0.5 beat) overshooting the share by more than the class so far
            # falls short of it starts a class of its own, rather than swallowing the 0.25s
            if 0 < acc < share < acc + c and acc + c - share > share - acc:
                cuts.append(first_cell + prev)
                remaining -= acc
                acc = 0
                left = classes - len(cuts)
                share = remaining / left if left > 1 else float("inf")
            acc += c
            prev = i
            if acc >= share and remaining - acc > 0:
                cuts.append(first_cell + i)
                remaining -= acc
                acc = 0
        return cuts

    def log_cuts(self, classes: int, first_cell: int = 0) -> list[int]:
        """Cells after which a class ends, for edges spaced evenly in log over the values' range."""
        used = np.flatnonzero(self.counts[first_cell:]) + first_cell
        if len(used) < 2 or classes < 2:
            return []
        lo = self.sums[used[0]] / self.counts[used[0]]
        hi = self.sums[used[-1]] / self.counts[used[-1]]
        if lo <= 0:
            lo = self.boundaries[min(used[0], len(self.boundaries) - 1)]
        targets = np.geomspace(lo, hi, classes + 1)[1:-1]
        cells = np.searchsorted(self.boundaries, targets, side="right")
        cuts: list[int] = []
        for cell in sorted(set(cells.tolist())):
            cell = min(max(cell, first_cell), len(self.boundaries) - 1)
            prev = cuts[-1] + 1 if cuts else first_cell
            # drop an edge that would leave a class empty
            if self.counts[prev : cell + 1].sum() > 0 and self.counts[cell + 1 :].sum() > 0:
                cuts.append(cell)
        return cuts

    def bins(self, cuts: list[int]) -> dict[str, list[float]]:
        """Edges (the boundaries after the cut cells) and each class's mean value."""
        edges = [float(self.boundaries[c]) for c in cuts]
        bounds = [0, *(c + 1 for c in cuts), len(self.counts)]
        values = []
        for lo, hi in itertools.pairwise(bounds):
            n = int(self.counts[lo:hi].sum())
            if n:
                values.append(float(self.sums[lo:hi].sum() / n))
            else:  # only the step's zero class can be empty
                values.append(0.0 if lo == 0 else float(self.boundaries[lo - 1]))
        return {"edges": edges, "values": values}


def make_bins(
    step: Histogram, duration: Histogram, velocity: Histogram, p: Sequences
) -> dict[str, dict[str, list[float]]]:
    cuts = step.equal_mass_cuts if p.bin_method == "quantile" else step.log_cuts
    step_cuts = [0, *cuts(p.bins - 1, first_cell=1)]  # class 0 holds exactly-zero steps (chords)
    dur_cuts = (
        duration.equal_mass_cuts(p.bins)
        if p.bin_method == "quantile"
        else duration.log_cuts(p.bins)
    )
    return {
        "step": step.bins(step_cuts),
        "duration": duration.bins(dur_cuts),
        # velocities are 127 integers: equal-mass classes whatever bin_method says
        "velocity": velocity.bins(velocity.equal_mass_cuts(p.velocity_bins)),
    }


def median_from_counts(counts: np.ndarray, resolution: float) -> float:
    total = counts.sum()
    if total == 0:
        return 120.0
    cell = int(np.searchsorted(np.cumsum(counts), (total + 1) / 2))
    return round(cell * resolution, 2)


# ---------------------------------------------------------------- spilling and writing shards


class ChunkSpill:
    """Chunks of each split in hash buckets on disk, so the shuffle needs one bucket in memory."""

    def __init__(self, folder: Path, buckets: int) -> None:
        self.folder = folder
        self.buckets = buckets
        self.handles: dict[tuple[str, int], BinaryIO] = {}

    def add(self, split: str, key: int, record: bytes) -> None:
        bucket = key % self.buckets
        handle = self.handles.get((split, bucket))
        if handle is None:
            handle = open(self.folder / f"{split}-{bucket:05d}.spill", "wb")  # noqa: SIM115 (held across add calls, closed by close())
            self.handles[(split, bucket)] = handle
        handle.write(_SPILL_HEADER.pack(key, len(record)))
        handle.write(record)

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()
        self.handles.clear()

    def shuffled(self, split: str) -> Iterator[bytes]:
        """The split's chunks in shuffled order: buckets in turn, each sorted by its keys."""
        for bucket in range(self.buckets):
            path = self.folder / f"{split}-{bucket:05d}.spill"
            if not path.exists():
                continue
            data = path.read_bytes()
            records: list[tuple[int, bytes]] = []
            pos = 0
            while pos < len(data):
                key, size = _SPILL_HEADER.unpack_from(data, pos)
                pos += _SPILL_HEADER.size
                records.append((key, data[pos : pos + size]))
                pos += size
            records.sort()
            for _, record in records:
                yield record


def write_shards(
    records: Iterator[bytes], folder: Path, split: str, shard_bytes: int
) -> list[dict]:
    """GZIP TFRecord shards of about `shard_bytes` each, named once their count is known."""
    import tensorflow as tf

    options = tf.io.TFRecordOptions(compression_type="GZIP")
    flush_every = int(min(FLUSH_MAX, max(16 << 10, shard_bytes)))
    written: list[tuple[Path, int]] = []
    writer = None
    path = folder
    count = pending = 0
    for record in records:
        if writer is None:
            path = folder / f".{split}-{len(written):05d}.partial"
            writer = tf.io.TFRecordWriter(str(path), options)
            count = pending = 0
        writer.write(record)
        count += 1
        pending += len(record)
        if pending >= flush_every:
            writer.flush()  # deterministic: flushes happen at the same records every run
            pending = 0
            if path.stat().st_size >= shard_bytes:
                writer.close()
                written.append((path, count))
                writer = None
    if writer is not None:
        writer.close()
        written.append((path, count))
    shards = []
    for i, (partial, chunks) in enumerate(written):
        final = folder / f"{split}-{i:05d}-of-{len(written):05d}.tfrecord.gz"
        partial.replace(final)
        shards.append(
            {
                "name": final.name,
                "sha256": storage.file_digest(final, "sha256"),
                "bytes": final.stat().st_size,
                "chunks": chunks,
            }
        )
    return shards


# ---------------------------------------------------------------- the stage


@dataclass
class SplitTotals:
    files: set[str] = field(default_factory=set)
    tracks: int = 0
    chunks: int = 0
    notes: int = 0
    windows: int = 0


def survey_files(
    parts: list[Path], ok: set[str], selection: Selection
) -> tuple[dict[str, FileSurvey], Counter[int], int]:
    """Pass 1: each file's content hash and tune, and the notes per program of eligible tracks."""
    survey: dict[str, FileSurvey] = {}
    programs: Counter[int] = Counter()
    tracks = 0
    for file_id, notes in tqdm(
        iter_file_notes(parts), desc="survey", unit=" files", disable=None, leave=False
    ):
        if file_id not in ok:
            continue
        survey[file_id] = FileSurvey(content_hash(notes), tune_fingerprint(notes))
        for _, rows in track_slices(notes):
            tracks += 1
            program, drum = int(notes["program"][rows.start]), bool(notes["is_drum"][rows.start])
            if selection.passes(program, drum, rows.stop - rows.start):
                programs[program] += rows.stop - rows.start
    return survey, programs, tracks


def run(cfg: Config) -> dict[str, Any]:
    p = cfg.sequences
    try:
        selection = Selection.from_params(p)
    except ParamsError as exc:
        raise ParamsError(f"sequences.programs: {exc}") from None
    notes_dir = cfg.paths.notes
    files = read_files(notes_dir).to_pylist()
    ok_files = sorted({f["file_id"] for f in files if f["status"] == "ok"})
    if not ok_files:
        raise LakhflowError(f"{notes_dir / 'files.parquet'} lists no file with status ok")
    groups = {f["file_id"]: f["group"] or "" for f in files if f["status"] == "ok"}
    parts = note_parts(notes_dir)
    if not parts:
        raise LakhflowError(f"no notes-*.parquet in {notes_dir}; run `lakhflow parse` first")
    ok = set(ok_files)

    # Pass 1: split keys and the corpus' programs, before any note is binned or written.
    survey, program_notes, n_tracks = survey_files(parts, ok, selection)
    keys = split_keys(ok_files, groups, survey, p.split_by)
    splits = {f: split_of(keys[f], p.seed, p.split) for f in ok_files}
    if p.instrument == "most_common" and program_notes:
        # ties go to the lower program, so the choice does not depend on file order
        selection.only_program = min(program_notes, key=lambda q: (-program_notes[q], q))

    # Pass 2: features, chunks (spilled per split), train-only histograms for the bins.
    n_notes_est = sum(int(f["n_notes"] or 0) for f in files if f["status"] == "ok")
    buckets = max(1, -(-n_notes_est * 24 // SPILL_BUCKET_BYTES))
    work = storage.work_dir(cfg.paths.work, "sequences", {"params": p.model_dump(mode="json")})
    spill_dir = work / "spill"
    shutil.rmtree(spill_dir, ignore_errors=True)
    spill_dir.mkdir(parents=True)
    spill = ChunkSpill(spill_dir, buckets)
    totals = {name: SplitTotals() for name in schema.SPLIT_NAMES}
    hist_step, hist_duration = Histogram.for_range(p.max_step), Histogram.for_range(p.max_duration)
    hist_velocity = Histogram.for_velocity()
    tempo_counts = np.zeros(100_001, dtype=np.int64)  # 0.01 bpm cells up to 1000 bpm
    programs: Counter[int] = Counter()
    selection.kept.clear()
    try:
        for file_id, notes in tqdm(
            iter_file_notes(parts), desc="sequences", unit=" files", disable=None
        ):
            if file_id not in ok:
                continue
            split = splits[file_id]
            total = totals[split]
            for track, rows in track_slices(notes):
                n = rows.stop - rows.start
                program = int(notes["program"][rows.start])
                if not selection.passes(program, bool(notes["is_drum"][rows.start]), n, count=True):
                    continue
                features = track_features(notes, rows, p)
                for lo in chunk_starts(n, p.chunk_notes, p.seq_length):
                    hi = min(n, lo + p.chunk_notes)
                    record = chunk_example(features, lo, hi, program, file_id, track)
                    spill.add(split, shuffle_key(p.seed, file_id, track, lo), record)
                    total.chunks += 1
                    total.windows += windows_in(hi - lo, p.seq_length, p.stride)
                total.files.add(file_id)
                total.tracks += 1
                total.notes += n
                programs[program] += n
                seconds = (notes["end"][rows] - notes["start"][rows]).astype(np.float64)
                beats = (notes["end_beat"][rows] - notes["start_beat"][rows]).astype(np.float64)
                timed = seconds > 1e-3
                bpm = 60.0 * beats[timed] / seconds[timed]
                cells = np.clip(np.round(bpm * 100), 0, len(tempo_counts) - 1).astype(np.int64)
                tempo_counts += np.bincount(cells, minlength=len(tempo_counts))
                if split == "train":
                    hist_step.add(features["step"])
                    hist_duration.add(features["duration"])
                    hist_velocity.add(features["velocity"])
        spill.close()

        if sum(t.windows for t in totals.values()) == 0:
            raise LakhflowError(f"no windows: {selection.empty_reason(n_tracks)}")
        if totals["train"].windows == 0:
            msg = (
                f"the train split holds no windows ({len(set(keys.values()))} split keys over "
                f"{len(ok_files)} files); add files or change sequences.split or sequences.seed"
            )
            raise LakhflowError(msg)
        bins = make_bins(hist_step, hist_duration, hist_velocity, p)

        with storage.atomic_dir(cfg.paths.shards, "sequences") as out:
            shard_bytes = int(p.shard_mb * (1 << 20))
            split_shards = {
                name: write_shards(spill.shuffled(name), out, name, shard_bytes)
                for name in schema.SPLIT_NAMES
            }
            table = pa.table(
                {
                    "file_id": ok_files,
                    "split_key": [keys[f] for f in ok_files],
                    "split": [splits[f] for f in ok_files],
                },
                schema=schema.SPLITS,
            )
            pq.write_table(table, out / "splits.parquet")
            manifest = build_manifest(cfg, bins, programs, tempo_counts, totals, split_shards)
            manifest["splits_sha256"] = storage.file_digest(out / "splits.parquet", "sha256")
            (out / "manifest.json").write_text(
                json.dumps(manifest, indent=2, sort_keys=True) + "\n"
            )
    finally:
        spill.close()
        shutil.rmtree(spill_dir, ignore_errors=True)

    return summarise(manifest, keys, cfg.paths.shards)


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
            "program": {"dtype": "int32", "shape": []},
        },
        "bins": bins,
        "programs": {
            "most_common": min(programs, key=lambda q: (-programs[q], q)),
            "counts": {str(q): programs[q] for q in sorted(programs)},
        },
        "tempo_bpm": median_from_counts(tempo_counts, 0.01),
        "splits": {
            name: {
                "files": len(t.files),
                "tracks": t.tracks,
                "chunks": t.chunks,
                "notes": t.notes,
                "windows": t.windows,
                "shards": shards[name],
            }
            for name, t in totals.items()
        },
    }


def summarise(manifest: dict[str, Any], keys: dict[str, str], shard_dir: Path) -> dict[str, Any]:
    splits = manifest["splits"]
    sizes = Counter(keys.values())
    largest = max(sizes.values())
    metrics: dict[str, Any] = {"split_keys": len(sizes), "largest_split_group": largest}
    for name, s in splits.items():
        for k in ("files", "chunks", "notes", "windows"):
            metrics[f"{name}_{k}"] = s[k]
        metrics[f"{name}_shard_bytes"] = sum(x["bytes"] for x in s["shards"])
    counts = ", ".join(f"{n} {splits[n]['windows']:,}" for n in schema.SPLIT_NAMES)
    log.info(
        "Wrote %d shards (%.1f MB) to %s: windows of %d notes at stride %d: %s; "
        "%d split keys over %d files (largest group %d files); most common program %s; "
        "tempo %.1f bpm.",
        sum(len(s["shards"]) for s in splits.values()),
        sum(metrics[f"{n}_shard_bytes"] for n in schema.SPLIT_NAMES) / 1e6,
        shard_dir,
        manifest["seq_length"] + 1,
        manifest["stride"],
        counts,
        len(sizes),
        len(keys),
        largest,
        describe(manifest["programs"]["most_common"]),
        manifest["tempo_bpm"],
    )
    return metrics
