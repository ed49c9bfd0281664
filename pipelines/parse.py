"""Parse stage: the raw archive `data/raw/<source>.tar.gz` (streamed) -> note tables.

Writes `data/notes/notes-NNNNN.parquet` (one row per note), `files.parquet` (one row per input:
ok, empty, duplicate or quarantined), `stats.json` and `plots/`. Files are parsed in worker
processes, so a parser that crashes, hangs or eats memory costs one file, never the run.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from pipelines import midi, storage
from pipelines.archive import iter_members
from pipelines.config import Config
from pipelines.errors import LakhflowError

log = logging.getLogger(__name__)

# TEST HOOK, for the tests only: "action:pattern[,action:pattern...]" makes the worker misbehave
# on the files whose name matches `pattern` (fnmatch on the base name). Actions: `sleep` (hang
# for an hour), `sleep=<seconds>`, `abort` (os.abort(), as a segfaulting parser would die) and
# `allocate` (grab memory in 64 MB steps up to four times parse.max_memory_mb).
TEST_HOOK_ENV = "LAKHFLOW_PARSE_TEST_HOOK"

WORK_FORMAT = 1  # bump when the work folder's layout changes: old work is then ignored
WORKER_START_S = 120.0
FLUSH_EVERY_S = 30.0
HEADER = struct.Struct("<Q")
FILE_FIELDS = (
    "file_id", "path", "size", "status", "error_type", "error",
    "n_notes", "n_tracks", "duration_s", "group",
)  # fmt: skip

# --------------------------------------------------------------------------- the worker process


def _write_frame(stream: Any, obj: Any) -> None:
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(HEADER.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def _read_frame(stream: Any) -> Any:
    head = stream.read(HEADER.size)
    if len(head) < HEADER.size:
        return None
    (size,) = HEADER.unpack(head)
    return pickle.loads(stream.read(size))


def _test_hook(name: str, max_memory_mb: int) -> None:
    """TEST HOOK (see TEST_HOOK_ENV): simulate a hang, a crash or a memory blow-up."""
    spec = os.environ.get(TEST_HOOK_ENV, "")
    base = PurePosixPath(name).name
    for item in filter(None, (s.strip() for s in spec.split(","))):
        action, _, pattern = item.partition(":")
        if not fnmatch.fnmatch(base, pattern):
            continue
        if action == "sleep":
            time.sleep(3600)
        elif action.startswith("sleep="):
            time.sleep(float(action.removeprefix("sleep=")))
        elif action == "abort":
            os.abort()
        elif action == "allocate":
            hoard = []
            for _ in range(4 * max_memory_mb // 64):
                # Address space, as RLIMIT_AS counts it; untouched, so the hook is quick.
                hoard.append(np.empty(64 << 17))
            del hoard


def parse_file(name: str, data: bytes, parser: Any, max_memory_mb: int) -> tuple:
    """One file's outcome: ("ok", columns, n_tracks, duration_s) or ("error", type, message)."""
    try:
        _test_hook(name, max_memory_mb)
        notes = midi.parse_midi(data, parser)
    except Exception as exc:  # every parser error (KeySignatureError is a bare Exception)
        return ("error", type(exc).__name__, str(exc).splitlines()[0][:300] if str(exc) else "")
    return ("ok", notes.columns, notes.n_tracks, notes.duration_s)


def worker_main() -> None:
    """The parse worker: reads batches on stdin, answers one frame per file on stdout."""
    parser, max_memory_mb = sys.argv[1], int(sys.argv[2])
    import warnings

    warnings.filterwarnings("ignore")
    if parser == "symusic":
        import symusic  # noqa: F401
    else:
        import pretty_midi  # noqa: F401
    # The protocol owns the real stdout; stray prints of C code go to stderr instead.
    protocol_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    limit = max_memory_mb << 20
    with contextlib.suppress(ValueError, OSError):
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    stdin = sys.stdin.buffer
    _write_frame(protocol_out, ("ready", os.getpid()))
    while True:
        batch = _read_frame(stdin)
        if batch is None:
            return
        for index, name, data in batch:
            _write_frame(protocol_out, (index, *parse_file(name, data, parser, max_memory_mb)))


# --------------------------------------------------------------------------- supervising workers


@dataclass(frozen=True)
class WorkerSettings:
    parser: str
    timeout_s: float
    max_memory_mb: int


class WorkerGone(Exception):
    pass


class ParseWorker:
    """One worker process, restarted whenever a file kills it or runs past the time limit."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None
        self.buffer = b""

    def start(self) -> None:
        if _STOPPING.is_set():
            raise LakhflowError("the parse stage is stopping")
        code = "from pipelines.parse import worker_main; worker_main()"
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, self.settings.parser, str(self.settings.max_memory_mb)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # Ctrl-C reaches the stage, which then stops its workers
        )
        self.buffer = b""
        ready = self._read(WORKER_START_S)
        if not isinstance(ready, tuple) or ready[0] != "ready":
            self.stop()
            raise LakhflowError(f"a parse worker failed to start ({self._describe_exit()})")

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(OSError):
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                if stream:
                    stream.close()
        self.proc = None

    def close(self) -> None:
        """End the worker politely (EOF on its stdin), killing it if it does not go."""
        if self.proc is None:
            return
        with contextlib.suppress(OSError):
            if self.proc.stdin:
                self.proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self.stop()

    def _describe_exit(self) -> str:
        if self.proc is None:
            return "not running"
        code = self.proc.poll()
        if code is None:
            return "still running"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(-code).name}"
        return f"exit status {code}"

    def _read(self, timeout: float) -> Any:
        """The next frame, or raises TimeoutError / WorkerGone."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        need = HEADER.size
        have_header = False
        while True:
            if len(self.buffer) >= need:
                if have_header:
                    payload, self.buffer = self.buffer[:need], self.buffer[need:]
                    return pickle.loads(payload)
                (need,) = HEADER.unpack(self.buffer[: HEADER.size])
                self.buffer = self.buffer[HEADER.size :]
                have_header = True
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                raise TimeoutError
            chunk = os.read(fd, max(need - len(self.buffer), 1 << 16))
            if not chunk:
                self.proc.wait()
                raise WorkerGone(self._describe_exit())
            self.buffer += chunk

    def parse_batch(self, files: list[tuple[str, bytes]]) -> list[tuple]:
        """Each file's outcome, in order; a file that kills or hangs the worker is quarantined."""
        outcomes: list[tuple | None] = [None] * len(files)
        failed_sends = 0
        while (pending := [i for i, o in enumerate(outcomes) if o is None]) != []:
            if self.proc is None or self.proc.poll() is not None:
                self.stop()
                self.start()
            assert self.proc is not None and self.proc.stdin is not None
            try:
                _write_frame(self.proc.stdin, [(i, *files[i]) for i in pending])
            except OSError:
                failed_sends += 1
                if failed_sends > 3:
                    raise LakhflowError(
                        "parse workers keep dying before they read a batch"
                    ) from None
                self.stop()
                continue
            for i in pending:
                try:
                    frame = self._read(self.settings.timeout_s)
                except TimeoutError:
                    outcomes[i] = (
                        "error",
                        "Timeout",
                        f"parsing took over parse.timeout_s={self.settings.timeout_s:g} s",
                    )
                    self.stop()
                    break
                except WorkerGone as gone:
                    outcomes[i] = ("error", "WorkerCrash", f"the parser process died ({gone})")
                    self.stop()
                    break
                if frame[0] != i:
                    raise LakhflowError(f"parse worker protocol error: got {frame[0]}, want {i}")
                outcomes[i] = frame[1:]
        return [o for o in outcomes if o is not None]


_THREAD_WORKERS = threading.local()
_STOPPING = threading.Event()  # set while the local pool shuts down: no worker restarts
_ALL_WORKERS: list[ParseWorker] = []
_ALL_LOCK = threading.Lock()


def parse_batch(files: list[tuple[str, bytes]], settings: WorkerSettings) -> list[tuple]:
    """Parse a batch in this thread's worker process (started on first use, then reused).

    This is what the local pool's threads and the Dask workers run.
    """
    worker = getattr(_THREAD_WORKERS, "worker", None)
    if worker is None or worker.settings != settings:
        if worker is not None:
            worker.close()
        worker = ParseWorker(settings)
        _THREAD_WORKERS.worker = worker
        with _ALL_LOCK:
            _ALL_WORKERS.append(worker)
    return worker.parse_batch(files)


def close_workers() -> None:
    with _ALL_LOCK:
        workers = list(_ALL_WORKERS)
        _ALL_WORKERS.clear()
    for worker in workers:
        worker.close()


class LocalPool:
    """Batches to `n` threads, each driving one worker process."""

    def __init__(self, n: int, settings: WorkerSettings) -> None:
        self.settings = settings
        self.pool = ThreadPoolExecutor(n, thread_name_prefix="parse")

    def submit(self, files: list[tuple[str, bytes]]) -> Any:
        return self.pool.submit(parse_batch, files, self.settings)

    def wait(self, futures: set[Any]) -> set[Any]:
        return set(wait_futures(futures, return_when=FIRST_COMPLETED).done)

    def close(self) -> None:
        _STOPPING.set()  # batches still running (after an error) end instead of restarting
        try:
            close_workers()
            self.pool.shutdown(wait=True, cancel_futures=True)
        finally:
            _STOPPING.clear()


class DaskPool:
    """Batches to a Dask cluster; each Dask worker thread drives its own worker process."""

    def __init__(self, address: str, settings: WorkerSettings) -> None:
        from distributed import Client

        self.settings = settings
        try:
            self.client = Client(address, timeout=30)
        except (OSError, TimeoutError) as exc:
            raise LakhflowError(f"cannot reach the Dask scheduler at {address} ({exc})") from None

    def submit(self, files: list[tuple[str, bytes]]) -> Any:
        return self.client.submit(parse_batch, files, self.settings, pure=False)

    def wait(self, futures: set[Any]) -> set[Any]:
        from distributed import wait

        return set(wait(list(futures), return_when="FIRST_COMPLETED").done)

    def close(self) -> None:
        self.client.close()


# --------------------------------------------------------------------------- runs (resumable)


@dataclass
class Batch:
    index: int
    seqs: list[int]  # input numbers, in archive order
    file_ids: list[str]
    names: list[str]
    sizes: list[int]
    groups: list[str]
    data: list[bytes]


@dataclass
class RunBuffer:
    """Finished batches not yet on disk; flushed as one run (an Arrow file plus a JSON index)."""

    batches: list[int] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)  # [seq, *FILE_FIELDS]
    columns: list[dict[str, np.ndarray]] = field(default_factory=list)
    index: list[list[int]] = field(default_factory=list)  # [seq, row offset, n_notes]
    notes: int = 0
    since: float = field(default_factory=time.monotonic)


class RunStore:
    """The stage's resumable state: finished runs under the work folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.done_batches: set[int] = set()
        self.rows: dict[int, list[Any]] = {}
        self.where: dict[int, tuple[int, int, int]] = {}  # seq -> (run, offset, n_notes)
        self.runs = 0
        for meta_path in sorted(folder.glob("run-*.json")):
            meta = storage.read_json(meta_path)
            run = int(meta_path.stem.removeprefix("run-"))
            self._add(run, meta)
            self.runs = max(self.runs, run + 1)
        for stray in folder.glob("run-*.arrow"):
            if not stray.with_suffix(".json").exists():
                stray.unlink()  # killed between the two writes: its batches are parsed again

    def _add(self, run: int, meta: dict[str, Any]) -> None:
        self.done_batches.update(meta["batches"])
        for row in meta["rows"]:
            self.rows[row[0]] = row[1:]
        for seq, offset, n in meta["index"]:
            self.where[seq] = (run, offset, n)

    def arrow_path(self, run: int) -> Path:
        return self.folder / f"run-{run:05d}.arrow"

    def flush(self, buffer: RunBuffer) -> None:
        import pyarrow as pa

        if not buffer.batches:
            return
        run = self.runs
        schema = notes_schema(with_file_id=False)
        if buffer.columns:
            arrays = [np.concatenate([c[name] for c in buffer.columns]) for name in schema.names]
        else:
            arrays = [np.zeros(0, dtype=midi.COLUMN_DTYPES[name]) for name in schema.names]
        table = pa.Table.from_arrays(arrays, schema=schema)
        with (
            storage.atomic_path(self.arrow_path(run)) as tmp,
            pa.OSFile(str(tmp), "wb") as sink,
            pa.ipc.new_file(sink, schema) as writer,
        ):
            writer.write_table(table, max_chunksize=1 << 20)
        meta = {"batches": buffer.batches, "rows": buffer.rows, "index": buffer.index}
        # The JSON is the commit: a run without one is discarded on resume.
        storage.write_json(self.folder / f"run-{run:05d}.json", meta)
        self._add(run, meta)
        self.runs += 1


def notes_schema(with_file_id: bool = True) -> Any:
    from pipelines import schema

    if with_file_id:
        return schema.NOTES
    import pyarrow as pa

    return pa.schema([f for f in schema.NOTES if f.name != "file_id"])


def add_batch(buffer: RunBuffer, batch: Batch, outcomes: list[tuple]) -> None:
    buffer.batches.append(batch.index)
    for k, outcome in enumerate(outcomes):
        seq = batch.seqs[k]
        base = [batch.file_ids[k], batch.names[k], batch.sizes[k]]
        if outcome[0] == "ok":
            columns, n_tracks, duration_s = outcome[1], outcome[2], outcome[3]
            n = len(columns["pitch"])
            status = "ok" if n else "empty"
            buffer.rows.append([seq, *base, status, None, None, n, n_tracks, duration_s])
            if n:
                buffer.index.append([seq, buffer.notes, n])
                buffer.columns.append(columns)
                buffer.notes += n
        else:
            _, error_type, error = outcome
            buffer.rows.append([seq, *base, "quarantined", error_type, error, 0, 0, 0.0])
        buffer.rows[-1].append(batch.groups[k])


# --------------------------------------------------------------------------- the stage


def source_key(source: Path) -> dict[str, Any]:
    """What identifies the input: the archive's md5 and size (a folder: its listing)."""
    if source.is_dir():
        listing = [
            (p.relative_to(source).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(source.rglob("*"))
            if p.is_file()
        ]
        return {"folder": storage.stable_hash(listing, 32), "files": len(listing)}
    return {"md5": storage.file_digest(source), "size": source.stat().st_size}


def batches_of(
    source: Path, max_bytes: int, batch_files: int, duplicate: Callable[[int, Any, str], None]
) -> Iterator[Batch]:
    """Stream the members, number them, set duplicates aside, and group the rest in batches."""
    seen: dict[str, str] = {}
    current = Batch(0, [], [], [], [], [], [])
    for seq, member in enumerate(iter_members(source, max_bytes)):
        file_id = hashlib.md5(member.data).hexdigest()
        if file_id in seen:
            duplicate(seq, member, seen[file_id])
            continue
        seen[file_id] = member.name
        current.seqs.append(seq)
        current.file_ids.append(file_id)
        current.names.append(member.name)
        current.sizes.append(len(member.data))
        current.groups.append(member.group)
        current.data.append(member.data)
        if len(current.seqs) >= batch_files:
            yield current
            current = Batch(current.index + 1, [], [], [], [], [], [])
    if current.seqs:
        yield current


def run(cfg: Config) -> dict[str, Any]:
    p = cfg.parse
    source = cfg.paths.raw_archive(cfg.download.source)
    if not source.exists():
        raise LakhflowError(f"{source} not found: run `lakhflow download` first")
    started = time.perf_counter()
    key = {
        "source": source_key(source),
        "parser": p.parser,
        "batch_files": p.batch_files,
        "timeout_s": p.timeout_s,
        "max_memory_mb": p.max_memory_mb,
        "format": WORK_FORMAT,
    }
    work = storage.work_dir(cfg.paths.work, "parse", key)
    store = RunStore(work / "runs")
    resumed_batches = len(store.done_batches)
    settings = WorkerSettings(p.parser, p.timeout_s, p.max_memory_mb)
    workers = p.workers or os.cpu_count() or 1
    if p.executor == "dask":
        if not p.scheduler_address:
            raise LakhflowError("parse.executor is dask but parse.scheduler_address is not set")
        dask_pool = DaskPool(p.scheduler_address, settings)
        workers = max(workers, len(dask_pool.client.scheduler_info().get("workers", {})))
        pool: LocalPool | DaskPool = dask_pool
    else:
        pool = LocalPool(workers, settings)

    from tqdm import tqdm

    duplicates: dict[int, list[Any]] = {}

    def duplicate(seq: int, member: Any, original: str) -> None:
        file_id = hashlib.md5(member.data).hexdigest()
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
            add_batch(buffer, batch, future.result())
            parsed += len(batch.seqs)
            progress.update(len(batch.seqs))
        flush_due = time.monotonic() - buffer.since > FLUSH_EVERY_S
        if buffer.notes >= p.part_notes or flush_due:
            store.flush(buffer)
            buffer = RunBuffer()

    try:
        for batch in batches_of(source, max_bytes, p.batch_files, duplicate):
            if batch.index in store.done_batches:
                progress.update(len(batch.seqs))
                continue
            while len(in_flight) >= 2 * workers:
                collect(pool.wait(set(in_flight)))
            in_flight[pool.submit(list(zip(batch.names, batch.data, strict=True)))] = batch
            batch.data = []  # the worker has the bytes now; keep memory bounded
        while in_flight:
            collect(pool.wait(set(in_flight)))
        store.flush(buffer)
    finally:
        progress.close()
        pool.close()
    parse_s = time.perf_counter() - started

    rows = {**store.rows, **duplicates}
    with storage.atomic_dir(cfg.paths.notes) as out:
        summary = write_outputs(out, store, rows, p.part_notes)
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
        "files_per_s": round(n_files / max(parse_s, 1e-9), 1),
    }
    f = summary["files"]
    log.info(
        "parse: %d files from %s with %s in %.1f s (%.0f files/s; %d parsed now, %d batches "
        "resumed): %d ok, %d empty, %d duplicate, %d quarantined. Wrote %d notes (%.1f h of "
        "music) in %d part(s), files.parquet, stats.json and plots to %s.",
        n_files, source.name, p.parser, elapsed, metrics["files_per_s"], parsed,
        resumed_batches, f["ok"], f["empty"], f["duplicate"], f["quarantined"],
        summary["notes"], summary["hours"], summary["parts"], cfg.paths.notes,
    )  # fmt: skip
    return metrics


# --------------------------------------------------------------------------- the outputs

# Quarter notes; the first bin [0, 1/64) holds the chords' zero steps. The last takes the rest.
STEP_EDGES = np.concatenate([[0.0], np.geomspace(1 / 64, 64, 37)])
DURATION_EDGES = STEP_EDGES


def write_outputs(
    out: Path, store: RunStore, rows: dict[int, list[Any]], part_notes: int
) -> dict[str, Any]:
    """Files table, note parts sorted by file_id (gathered from the runs), stats and plots."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines import schema

    ordered = [rows[seq] for seq in sorted(rows)]
    files = pa.Table.from_arrays(
        [pa.array([r[i] for r in ordered], type=schema.FILES.field(i).type) for i in range(10)],
        schema=schema.FILES,
    )
    pq.write_table(files, out / "files.parquet", compression="zstd")

    ok = sorted((rows[seq][0], seq) for seq in store.where)
    parts: list[list[tuple[str, int]]] = [[]]
    part_size = 0
    for file_id, seq in ok:
        n = store.where[seq][2]
        if parts[-1] and part_size + n > part_notes:
            parts.append([])
            part_size = 0
        parts[-1].append((file_id, seq))
        part_size += n
    histograms = NoteHistograms()
    # Two parts at a time: pyarrow's take, compression and writes release the GIL.
    with ThreadPoolExecutor(2, thread_name_prefix="parts") as writers:
        jobs = [
            writers.submit(write_part, out / f"notes-{k:05d}.parquet", part, store)
            for k, part in enumerate(parts)
        ]
        for job in jobs:
            histograms.merge(job.result())

    stats = file_stats(ordered, histograms)
    stats["parts"] = len(parts)
    storage.write_json(out / "stats.json", stats)
    sample = min(store.where, default=None)  # the first parsed file in archive order
    draw_plots(out / "plots", histograms, store, sample, rows)
    return stats


def spans(offsets: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The row numbers of consecutive spans [offset, offset + size), concatenated."""
    total = int(sizes.sum())
    starts = np.repeat(offsets - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
    return starts + np.arange(total, dtype=np.int64)


def read_notes(store: RunStore, seqs: list[int]) -> Any:
    """The note rows of these files (in this order) from their runs, without file_id."""
    import pyarrow as pa

    where = np.array([store.where[seq] for seq in seqs], dtype=np.int64).reshape(-1, 3)
    if not len(where):
        return notes_schema(False).empty_table()
    pieces = []
    piece_rows = np.zeros(len(seqs), dtype=np.int64)  # where each file's rows land in `pieces`
    taken = 0
    for run_id in np.unique(where[:, 0]):
        mine = np.flatnonzero(where[:, 0] == run_id)
        rows = spans(where[mine, 1], where[mine, 2])
        with pa.memory_map(str(store.arrow_path(int(run_id)))) as source:
            # take() copies, so nothing refers to the map once it is closed
            pieces.append(pa.ipc.open_file(source).read_all().take(rows))
        piece_rows[mine] = taken + np.concatenate([[0], np.cumsum(where[mine, 2])[:-1]])
        taken += len(rows)
    table = pa.concat_tables(pieces).combine_chunks()
    return table.take(spans(piece_rows, where[:, 2]))


def write_part(path: Path, part: list[tuple[str, int]], store: RunStore) -> NoteHistograms:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = read_notes(store, [seq for _, seq in part])
    sizes = np.array([store.where[seq][2] for _, seq in part], dtype=np.int64)
    file_index = np.repeat(np.arange(len(part), dtype=np.int32), sizes)
    ids = pa.DictionaryArray.from_arrays(
        pa.array(file_index, type=pa.int32()), pa.array([f for f, _ in part], type=pa.string())
    ).cast(pa.string())
    table = table.add_column(0, "file_id", ids).cast(notes_schema())
    pq.write_table(table, path, compression="zstd", row_group_size=256 * 1024)
    hist = NoteHistograms()
    hist.add(table, file_index)
    return hist


class NoteHistograms:
    """Pitch, step, duration and program counts, accumulated part by part."""

    def __init__(self) -> None:
        self.pitch = np.zeros(128, dtype=np.int64)
        self.programs = np.zeros(128, dtype=np.int64)
        self.drums = 0
        self.step = np.zeros(len(STEP_EDGES) - 1, dtype=np.int64)
        self.duration = np.zeros(len(DURATION_EDGES) - 1, dtype=np.int64)

    def merge(self, other: NoteHistograms) -> None:
        for name in ("pitch", "programs", "step", "duration"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.drums += other.drums

    def add(self, table: Any, file_index: np.ndarray) -> None:
        if table.num_rows == 0:
            return
        col = {name: table.column(name).to_numpy() for name in table.column_names[1:]}
        self.pitch += np.bincount(col["pitch"].astype(np.int64), minlength=128)
        drum = col["is_drum"]
        self.drums += int(drum.sum())
        self.programs += np.bincount(col["program"][~drum].astype(np.int64), minlength=128)
        beats = col["start_beat"].astype(np.float64)
        same_track = (file_index[1:] == file_index[:-1]) & (col["track"][1:] == col["track"][:-1])
        steps = np.diff(beats)[same_track]
        self.step += _counts(steps, STEP_EDGES)
        self.duration += _counts(col["end_beat"] - beats, DURATION_EDGES)


def _counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    index = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)
    return np.bincount(index, minlength=len(edges) - 1)


def program_names(hist: NoteHistograms) -> dict[str, int]:
    import pretty_midi

    names = {
        pretty_midi.program_to_instrument_name(p): int(n) for p, n in enumerate(hist.programs) if n
    }
    if hist.drums:
        names["Drums"] = hist.drums
    return names


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


def draw_plots(
    folder: Path,
    hist: NoteHistograms,
    store: RunStore,
    sample: int | None,
    rows: dict[int, list[Any]],
) -> None:
    from pipelines import plots

    plots.histogram(hist.pitch, np.arange(129) - 0.5, folder / "pitch.png", "Pitch", "pitch (MIDI)")
    plots.histogram(
        hist.step, STEP_EDGES, folder / "step.png", "Step (onset to onset in a track)",
        "quarter notes", log_x=True,
    )  # fmt: skip
    plots.histogram(
        hist.duration, DURATION_EDGES, folder / "duration.png", "Duration", "quarter notes",
        log_x=True,
    )  # fmt: skip
    plots.bar_counts(program_names(hist), folder / "programs.png", "Notes per instrument")
    if sample is None:
        plots.piano_roll(
            np.zeros(0), np.zeros(0), np.zeros(0), folder / "piano_roll.png", "no notes"
        )
        return
    notes = read_notes(store, [sample])
    column = {name: notes.column(name).to_numpy() for name in notes.column_names}
    order = np.argsort(column["start"], kind="stable")[:1000]  # the first 1000 in time
    plots.piano_roll(
        column["pitch"][order],
        column["start"][order],
        column["end"][order],
        folder / "piano_roll.png",
        f"{rows[sample][1]}: first {len(order)} notes (seconds)",
        velocity=column["velocity"][order],
    )
