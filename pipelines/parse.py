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
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines import midi

if TYPE_CHECKING:
    from pipelines.config import Config

log = logging.getLogger(__name__)

# TEST HOOK, for the tests only: "action:pattern[,action:pattern...]" makes the worker misbehave
# on the files whose name matches `pattern` (fnmatch on the base name). Actions: `sleep` (hang
# for an hour), `sleep=<seconds>`, `abort` (os.abort(), as a segfaulting parser would die) and
# `allocate` (grab memory in 64 MB steps up to four times parse.max_memory_mb), `stdout` (print
# to stdout, as a chatty import or C code would) and `garble` (send the stage bytes that are
# not a frame).
TEST_HOOK_ENV = "LAKHFLOW_PARSE_TEST_HOOK"

WORK_FORMAT = 3  # bump when the work folder's layout changes: old work is then ignored
WORKER_START_S = 120.0
WRITE_S = 120.0  # time a worker gets to write its part, after its last file's answer
HEADER = struct.Struct("<Q")
# The worker's answers are small (a row per file, the batch's histograms): a larger length is
# a stream out of step, never a frame to allocate for.
MAX_FRAME = 16 << 20
FILE_FIELDS = (
    "file_id", "path", "size", "status", "error_type", "error",
    "n_notes", "n_tracks", "duration_s", "group",
)  # fmt: skip

# Quarter notes; the first bin [0, 1/64) holds the chords' zero steps. The last takes the rest.
STEP_EDGES = np.concatenate([[0.0], np.geomspace(1 / 64, 64, 37)])
DURATION_EDGES = STEP_EDGES

# --------------------------------------------------------------------------- parts
#
# A worker writes its batch's notes straight into the work folder as one Parquet part: the
# batch's files sorted by file_id, each file's notes sorted by track, start and pitch. Only a
# small row per file travels back to the stage, never the notes; once every batch is done the
# parts become data/notes/notes-NNNNN.parquet as they are, without being read again.

FLOAT_COLUMNS = ("start", "end", "start_beat", "end_beat")


def _arrow(values: np.ndarray, arrow_type: Any) -> Any:
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


def _strings(values: list[str | None]) -> Any:
    """Python strings (None: null) as an Arrow string array, built from buffers (see _arrow)."""
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
    indices = _arrow(np.repeat(np.arange(len(files), dtype=np.int32), sizes), pa.int32())
    dictionary = _strings([file_id for file_id, _ in files])
    arrays = [pa.DictionaryArray.from_arrays(indices, dictionary)]
    for f in list(schema.NOTES)[1:]:
        dtype = midi.COLUMN_DTYPES[f.name]
        pieces = [columns[f.name] for _, columns in files]
        column = np.concatenate(pieces).astype(dtype, copy=False) if pieces else np.zeros(0, dtype)
        arrays.append(_arrow(column, f.type))
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


class NoteHistograms:
    """Pitch, step, duration and program counts; workers count their files, the stage adds up."""

    def __init__(self, counts: dict[str, Any] | None = None) -> None:
        counts = counts or {}
        self.pitch = np.asarray(counts.get("pitch", np.zeros(128)), dtype=np.int64)
        self.programs = np.asarray(counts.get("programs", np.zeros(128)), dtype=np.int64)
        self.drums = int(counts.get("drums", 0))
        self.step = np.asarray(counts.get("step", np.zeros(len(STEP_EDGES) - 1)), dtype=np.int64)
        self.duration = np.asarray(
            counts.get("duration", np.zeros(len(DURATION_EDGES) - 1)), dtype=np.int64
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "pitch": self.pitch.tolist(),
            "programs": self.programs.tolist(),
            "drums": self.drums,
            "step": self.step.tolist(),
            "duration": self.duration.tolist(),
        }

    def merge(self, other: NoteHistograms) -> None:
        for name in ("pitch", "programs", "step", "duration"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.drums += other.drums

    def add(self, notes: midi.FileNotes) -> None:
        """Count one file's notes (sorted by track, start, pitch)."""
        col = notes.columns
        if len(col["pitch"]) == 0:
            return
        self.pitch += np.bincount(col["pitch"].astype(np.intp), minlength=128)
        drum = col["is_drum"]
        self.drums += int(drum.sum())
        self.programs += np.bincount(col["program"][~drum].astype(np.intp), minlength=128)
        track = col["track"]
        if notes.start_ticks is None or notes.end_ticks is None:
            beats = col["start_beat"].astype(np.float64)
            steps = np.diff(beats)[track[1:] == track[:-1]]
            self.step += _counts(steps, STEP_EDGES)
            self.duration += _counts(col["end_beat"] - beats, DURATION_EDGES)
            return
        # Steps and durations in ticks, binned through a table per time base: a gather where
        # a search of the float edges per note cost the worker a tenth of its time.
        table = _tick_bins(notes.ticks_per_beat)
        cap = len(table) - 1
        start = notes.start_ticks
        steps_ticks = np.diff(start)[track[1:] == track[:-1]]
        steps_bins = table.take(np.minimum(steps_ticks, cap))
        self.step += np.bincount(steps_bins, minlength=len(self.step))
        durations = np.minimum(notes.end_ticks - start, cap)
        self.duration += np.bincount(table.take(durations), minlength=len(self.duration))


def _counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    index = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)
    return np.bincount(index, minlength=len(edges) - 1)


_BIN_TABLES: dict[int, np.ndarray] = {}


def _tick_bins(ticks_per_beat: int) -> np.ndarray:
    """The STEP_EDGES bin of every length from 0 to 64 quarter notes, in ticks (the last bin
    holds every longer one). Steps and durations share the edges (DURATION_EDGES)."""
    table = _BIN_TABLES.get(ticks_per_beat)
    if table is None:
        if len(_BIN_TABLES) >= 16:  # a corpus of odd time bases: keep the cache small
            _BIN_TABLES.clear()
        beats = np.arange(64 * ticks_per_beat + 1) / ticks_per_beat
        index = np.searchsorted(STEP_EDGES, beats, side="right") - 1
        table = np.clip(index, 0, len(STEP_EDGES) - 2).astype(np.int8)
        _BIN_TABLES[ticks_per_beat] = table
    return table


# --------------------------------------------------------------------------- the worker process


def _write_frame(stream: Any, obj: Any) -> None:
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(HEADER.pack(len(payload)) + payload)
    stream.flush()


def _send_frame(fd: int, obj: Any) -> None:
    """The worker's answer, written whole to the answer pipe, or the worker dies.

    Half a frame followed by another would put the stage's reading out of step, so a failure
    here (MemoryError under RLIMIT_AS, say) ends the process: the stage sees a crash instead.
    """
    try:
        payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        view = memoryview(HEADER.pack(len(payload)) + payload)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os._exit(70)


def _read_frame(stream: Any) -> Any:
    head = stream.read(HEADER.size)
    if len(head) < HEADER.size:
        return None
    (size,) = HEADER.unpack(head)
    return pickle.loads(stream.read(size))


def _test_hook(name: str, max_memory_mb: int) -> None:
    """TEST HOOK (see TEST_HOOK_ENV): simulate a hang, a crash or a memory blow-up."""
    spec = os.environ.get(TEST_HOOK_ENV, "")
    if not spec:
        return
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
        elif action == "stdout":
            print("stray output", flush=True)
            os.write(1, b"\x00" * 64)
        elif action == "garble":
            os.write(int(sys.argv[3]), b"not a frame, and then some")
        elif action == "allocate":
            hoard = []
            for _ in range(4 * max_memory_mb // 64):
                # Address space, as RLIMIT_AS counts it; untouched, so the hook is quick.
                hoard.append(np.empty(64 << 17))
            del hoard


def parse_file(name: str, data: bytes, parser: Any, max_memory_mb: int) -> tuple:
    """One file's outcome: ("ok", FileNotes, histogram counts) or ("error", type, message)."""
    try:
        _test_hook(name, max_memory_mb)
        notes = midi.parse_midi(data, parser)
        counts = NoteHistograms()
        counts.add(notes)
    except Exception as exc:  # every parser error (KeySignatureError is a bare Exception)
        return ("error", type(exc).__name__, str(exc).splitlines()[0][:300] if str(exc) else "")
    return ("ok", notes, counts)


def parse_to_part(
    path: str, files: list[tuple[int, str, str, bytes]], parser: Any, max_memory_mb: int,
    answer: Any,
) -> NoteHistograms:  # fmt: skip
    """Parse a batch of (index, name, file_id, bytes) into the part at `path`, answering one
    row per file as it goes."""
    totals = NoteHistograms()
    parsed: list[tuple[str, dict[str, np.ndarray]]] = []
    for index, name, file_id, data in files:
        outcome = parse_file(name, data, parser, max_memory_mb)
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


def worker_main() -> None:
    """The parse worker: reads (part path, files) requests on stdin, answers on the pipe whose
    fd is argv[3]. Its stdout is /dev/null: no print of an import or of C code can reach the
    answers, as it could when they shared stdout."""
    parser, max_memory_mb, answers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    import warnings

    warnings.filterwarnings("ignore")
    if parser == "symusic":
        import symusic  # noqa: F401
    else:
        import pretty_midi  # noqa: F401
    import pyarrow.parquet  # noqa: F401  (before the memory limit: imports map large libraries)

    limit = max_memory_mb << 20
    with contextlib.suppress(ValueError, OSError):
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    stdin = sys.stdin.buffer
    _send_frame(answers, ("ready", os.getpid()))
    while True:
        request = _read_frame(stdin)
        if request is None:
            return
        path, files = request
        try:
            counts = parse_to_part(
                path, files, parser, max_memory_mb, lambda row: _send_frame(answers, row)
            )
        except OSError as exc:  # the disk, not a file: the stage stops with this message
            _send_frame(answers, ("fatal", f"cannot write {path}: {exc}"))
            return
        _send_frame(answers, ("written", counts.to_json()))


# --------------------------------------------------------------------------- supervising workers


@dataclass(frozen=True)
class WorkerSettings:
    parser: str
    timeout_s: float
    max_memory_mb: int


@dataclass
class BatchResult:
    """A parsed batch: one outcome per file, the notes' counts, and (from Dask) the part."""

    outcomes: list[tuple]
    counts: dict[str, Any]
    data: bytes | None = None


class WorkerGone(Exception):
    pass


class BadFrame(Exception):
    """The worker sent bytes that are not a frame: it is killed, never trusted again."""


class ParseWorker:
    """One worker process, restarted whenever a file kills it or runs past the time limit."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None
        self.answers = -1  # read end of the worker's answer pipe
        self.buffer = b""  # answer bytes read but not yet taken; always starts at a frame

    def start(self) -> None:
        if _STOPPING.is_set():
            from pipelines.errors import LakhflowError

            raise LakhflowError("the parse stage is stopping")
        code = "from pipelines.parse import worker_main; worker_main()"
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        s = self.settings
        # Answers come on a pipe of their own: the worker's stdout is /dev/null.
        self.answers, write_end = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code, s.parser, str(s.max_memory_mb), str(write_end)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(write_end,),
                env=env,
                start_new_session=True,  # Ctrl-C reaches the stage, which then stops its workers
            )
        except BaseException:
            os.close(self.answers)
            self.answers = -1
            raise
        finally:
            os.close(write_end)  # the worker's copy is the only one: its death means EOF
        self.buffer = b""
        try:
            ready = self._read(WORKER_START_S)
        except (TimeoutError, WorkerGone, BadFrame) as exc:
            ready = exc
        if not isinstance(ready, tuple) or ready[0] != "ready":
            detail = f"{ready!r}, " if isinstance(ready, BadFrame) else ""
            self.stop()
            raise _error(f"a parse worker failed to start ({detail}{self._describe_exit()})")

    def stop(self) -> None:
        # What was read from this worker dies with it: a new one starts at a frame boundary.
        self.buffer = b""
        if self.answers >= 0:
            with contextlib.suppress(OSError):
                os.close(self.answers)
            self.answers = -1
        if self.proc is None:
            return
        with contextlib.suppress(OSError):
            self.proc.kill()
        self.proc.wait()
        with contextlib.suppress(OSError):
            if self.proc.stdin:
                self.proc.stdin.close()
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
        """The next frame, or raises TimeoutError / WorkerGone / BadFrame.

        A frame leaves the buffer only whole, so a timeout part way through one keeps the
        buffer at a frame boundary (the callers kill the worker then anyway).
        """
        assert self.proc is not None and self.answers >= 0
        deadline = time.monotonic() + timeout
        while True:
            need = HEADER.size
            if len(self.buffer) >= HEADER.size:
                (size,) = HEADER.unpack_from(self.buffer)
                if size > MAX_FRAME:
                    raise BadFrame(f"a frame of {size} bytes, over {MAX_FRAME}")
                need += size
                if len(self.buffer) >= need:
                    payload = self.buffer[HEADER.size : need]
                    self.buffer = self.buffer[need:]
                    try:
                        return pickle.loads(payload)
                    except Exception as exc:
                        raise BadFrame(f"an answer that does not unpickle: {exc!r}") from None
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([self.answers], [], [], min(left, 1.0))
            if not ready:
                # A dead worker whose pipe another process still holds (a fork) gives no EOF.
                if self.proc.poll() is not None:
                    raise WorkerGone(self._describe_exit())
                continue
            chunk = os.read(self.answers, max(need - len(self.buffer), 1 << 16))
            if not chunk:
                self.proc.wait()
                raise WorkerGone(self._describe_exit())
            self.buffer += chunk

    def _read_row(self, i: int) -> tuple:
        """File `i`'s row; a `fatal` answer stops the stage, anything else is a BadFrame."""
        frame = self._read(self.settings.timeout_s)
        if isinstance(frame, tuple) and len(frame) == 2 and frame[0] == "fatal":
            raise _error(str(frame[1]))
        if not isinstance(frame, tuple) or len(frame) < 2 or frame[0] != i:
            raise BadFrame(f"wanted the row of file {i}, got {str(frame)[:80]}")
        return frame

    def _kill_after(self, path: str, reason: str) -> None:
        pid = self.proc.pid if self.proc else None
        self.stop()
        if pid is not None:
            with contextlib.suppress(OSError):
                Path(f"{path}.{pid}.tmp").unlink()  # the dead worker's unfinished part
        log.debug("parse worker stopped: %s", reason)

    def parse_batch(self, files: list[tuple[str, str, bytes]], path: str) -> BatchResult:
        """Parse a batch of (name, file_id, bytes) into the part at `path`.

        A file that kills or hangs the worker is quarantined, and the batch is sent again
        without it to a new worker (the part must hold all the batch's notes).
        """
        bad: dict[int, tuple] = {}
        failed_sends = failed_writes = 0
        while True:
            todo = [i for i in range(len(files)) if i not in bad]
            if not todo:
                write_part(path, [])  # no notes, but the part exists like any other
                return BatchResult([bad[i] for i in range(len(files))], NoteHistograms().to_json())
            if self.proc is None or self.proc.poll() is not None:
                self.stop()
                self.start()
            assert self.proc is not None and self.proc.stdin is not None
            try:
                _write_frame(self.proc.stdin, (path, [(i, *files[i]) for i in todo]))
            except OSError:
                failed_sends += 1
                if failed_sends > 3:
                    raise _error("parse workers keep dying before they read a batch") from None
                self.stop()
                continue
            got: dict[int, tuple] = {}
            for i in todo:
                try:
                    frame = self._read_row(i)
                except TimeoutError:
                    limit = f"parse.timeout_s={self.settings.timeout_s:g}"
                    bad[i] = ("error", "Timeout", f"parsing took over {limit} s")
                    self._kill_after(path, f"timeout on {files[i][0]}")
                    break
                except WorkerGone as gone:
                    bad[i] = ("error", "WorkerCrash", f"the parser process died ({gone})")
                    self._kill_after(path, f"crash on {files[i][0]}")
                    break
                except BadFrame as garbled:
                    # Its stream is out of step: nothing more it says can be trusted.
                    bad[i] = ("error", "ProtocolError", f"the parser process sent {garbled}")
                    self._kill_after(path, f"malformed answer on {files[i][0]}: {garbled}")
                    break
                got[i] = frame[1:]
            else:
                try:
                    done = self._read(self.settings.timeout_s + WRITE_S)
                    if isinstance(done, tuple) and len(done) == 2 and done[0] == "fatal":
                        raise _error(str(done[1]))
                    if not isinstance(done, tuple) or len(done) != 2 or done[0] != "written":
                        raise BadFrame(f"wanted the batch's counts, got {str(done)[:80]}")
                except (TimeoutError, WorkerGone, BadFrame) as exc:
                    self._kill_after(path, f"lost while writing ({exc!r})")
                    failed_writes += 1
                    if failed_writes > 2:
                        raise _error(f"a parse worker keeps dying while it writes {path}") from None
                    continue
                return BatchResult([bad.get(i) or got[i] for i in range(len(files))], done[1])


def _error(message: str) -> Exception:
    from pipelines.errors import LakhflowError

    return LakhflowError(message)


_THREAD_WORKERS = threading.local()
_STOPPING = threading.Event()  # set while the local pool shuts down: no worker restarts
_ALL_WORKERS: list[ParseWorker] = []
_ALL_LOCK = threading.Lock()


def parse_batch(
    files: list[tuple[str, str, bytes]], settings: WorkerSettings, path: str | None = None
) -> BatchResult:
    """Parse a batch in this thread's worker process (started on first use, then reused).

    This is what the local pool's threads and the Dask workers run. Without `path` (Dask,
    where the stage's disk may be another machine's) the part comes back in the result.
    """
    worker = getattr(_THREAD_WORKERS, "worker", None)
    if worker is None or worker.settings != settings:
        if worker is not None:
            worker.close()
        worker = ParseWorker(settings)
        _THREAD_WORKERS.worker = worker
        with _ALL_LOCK:
            _ALL_WORKERS.append(worker)
    if path is not None:
        return worker.parse_batch(files, path)
    handle, local = tempfile.mkstemp(prefix="lakhflow-parse-", suffix=".parquet")
    os.close(handle)
    try:
        result = worker.parse_batch(files, local)
        result.data = Path(local).read_bytes()
    finally:
        with contextlib.suppress(OSError):
            Path(local).unlink()
    return result


def close_workers() -> None:
    with _ALL_LOCK:
        workers = list(_ALL_WORKERS)
        _ALL_WORKERS.clear()
    for worker in workers:  # EOF to all first: they wind down side by side
        if worker.proc is not None and worker.proc.stdin is not None:
            with contextlib.suppress(OSError):
                worker.proc.stdin.close()
    for worker in workers:
        worker.close()


class LocalPool:
    """Batches to `n` threads, each driving one worker process."""

    remote = False

    def __init__(self, n: int, settings: WorkerSettings) -> None:
        self.settings = settings
        self.pool = ThreadPoolExecutor(n, thread_name_prefix="parse")

    def submit(self, files: list[tuple[str, str, bytes]], path: Path) -> Any:
        return self.pool.submit(parse_batch, files, self.settings, str(path))

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
            raise _error(f"cannot reach the Dask scheduler at {address} ({exc})") from None

    def submit(self, files: list[tuple[str, str, bytes]], path: Path) -> Any:
        # The part travels back in the result: the cluster may not share this disk.
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
        from pipelines import storage

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
        from pipelines import storage

        if not buffer.batches:
            return
        meta = {"batches": buffer.batches, "rows": buffer.rows, "counts": buffer.counts.to_json()}
        # The JSON is the commit: parts are complete before a run names them.
        storage.write_json(self.folder / f"run-{self.runs:05d}.json", meta, indent=None)
        self._add(meta)
        self.runs += 1


def add_batch(buffer: RunBuffer, batch: Batch, result: BatchResult) -> None:
    buffer.counts.merge(NoteHistograms(result.counts))
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


# --------------------------------------------------------------------------- the stage


def source_key(source: Path) -> dict[str, Any]:
    """What identifies the input, cheaply (as DVC's own state does): size, mtime and inode, and
    an md5 of the archive's first and last MiB. Hashing all of lmd_full would cost seconds
    before the first file; any new download or checkout is a new file with a new mtime."""
    from pipelines import storage

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
    from pipelines.archive import iter_members

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


def run(cfg: Config) -> dict[str, Any]:
    p = cfg.parse
    source = cfg.paths.raw_archive(cfg.download.source)
    if not source.exists():
        raise _error(f"{source} not found: run `lakhflow download` first")
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
        return parse_all(cfg, source, key, plotter, started)
    finally:
        plotter.close()


def parse_all(
    cfg: Config, source: Path, key: dict[str, Any], plotter: Plotter, started: float
) -> dict[str, Any]:
    from pipelines import storage

    p = cfg.parse
    work = storage.work_dir(cfg.paths.work, "parse", key)
    store = RunStore(work / "runs")
    pictures = work / "plots"
    resumed_batches = len(store.part_notes)
    settings = WorkerSettings(p.parser, p.timeout_s, p.max_memory_mb)
    workers = p.workers or os.cpu_count() or 1
    if p.executor == "dask":
        if not p.scheduler_address:
            raise _error("parse.executor is dask but parse.scheduler_address is not set")
        dask_pool = DaskPool(p.scheduler_address, settings)
        workers = max(workers, len(dask_pool.client.scheduler_info().get("workers", {})))
        pool: LocalPool | DaskPool = dask_pool
    else:
        pool = LocalPool(workers, settings)

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
        summary = write_outputs(out, store, rows, plotter, pictures)
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
    out: Path, store: RunStore, rows: dict[int, list[Any]], plotter: Plotter, pictures: Path
) -> dict[str, Any]:
    """The parts (linked from the work folder), the files table, stats and plots."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines import schema, storage

    plotter.histograms(pictures, store.counts)
    parts = [store.batch_path(b) for b, notes in sorted(store.part_notes.items()) if notes]
    for k, part in enumerate(parts):
        storage.link_or_copy(part, out / f"notes-{k:05d}.parquet")
    ordered = [rows[seq] for seq in sorted(rows)]
    columns = []
    for i, f in enumerate(schema.FILES):
        values = [r[i] for r in ordered]
        if f.type == pa.string():
            columns.append(_strings(values))
        else:  # int64, int32, double: numpy reads Arrow's names
            columns.append(_arrow(np.array(values, dtype=np.dtype(str(f.type))), f.type))
    files = pa.Table.from_arrays(columns, schema=schema.FILES)
    pq.write_table(files, out / "files.parquet", compression="zstd")
    stats = file_stats(ordered, store.counts)
    stats["parts"] = len(parts)
    storage.write_json(out / "stats.json", stats)
    plotter.wait()
    (out / "plots").mkdir()
    for name in Plotter.PICTURES:  # copies: the plotter rewrites its own files in place
        shutil.copyfile(pictures / name, out / "plots" / name)
    return stats


def program_names(hist: NoteHistograms) -> dict[str, int]:
    from pipelines.instruments import GM_PROGRAMS

    names = {GM_PROGRAMS[p]: int(n) for p, n in enumerate(hist.programs) if n}
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


class Plotter:
    """Draws the plots in a process of its own, started with the stage: matplotlib's import and
    the piano roll overlap the parsing; only the histograms wait for the last counts.

    It draws into a folder of the work folder: write_outputs copies the pictures out.
    """

    PICTURES = ("pitch.png", "step.png", "duration.png", "programs.png", "piano_roll.png")

    def __init__(self) -> None:
        self.rolled = False
        code = "from pipelines.parse import plotter_main; plotter_main()"
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, start_new_session=True, env=env
        )

    def _send(self, request: tuple) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):  # it died: wait() says so
            _write_frame(self.proc.stdin, request)

    def roll(self, folder: Path, part: Path | None, file_id: str, title: str) -> None:
        """Draw the piano roll of `file_id`'s notes in `part` (None: an empty roll)."""
        self.rolled = True
        self._send(("roll", str(folder), part and str(part), file_id, title))

    def histograms(self, folder: Path, counts: NoteHistograms) -> None:
        """Draw the histograms of the final counts, and end."""
        if not self.rolled:
            self.roll(folder, None, "", "no notes")
        self._send(("histograms", str(folder), counts.to_json()))
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()

    def wait(self) -> None:
        if self.proc.wait() != 0:
            raise _error(f"drawing the parse plots failed (exit status {self.proc.returncode})")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def plotter_main() -> None:
    """The plotting process: imports matplotlib at once, then draws what arrives on stdin."""
    from pipelines import plots  # noqa: F401  (the slow import, done while the stage parses)

    while (request := _read_frame(sys.stdin.buffer)) is not None:
        kind, folder, *args = request
        if kind == "roll":
            part, file_id, title = args
            notes = None
            if part is not None:
                notes = read_file_notes(Path(part), file_id, ["pitch", "start", "end", "velocity"])
            draw_roll(Path(folder) / "piano_roll.png", notes, title)
        else:
            jobs = histogram_jobs(Path(folder), NoteHistograms(args[0]))
            # The workers are done by now: half the pictures are drawn in a fork.
            child = os.fork()
            if child == 0:
                try:
                    for job in jobs[1::2]:
                        job()
                except BaseException:
                    import traceback

                    traceback.print_exc()
                    os._exit(1)
                os._exit(0)
            for job in jobs[::2]:
                job()
            _, status = os.waitpid(child, 0)
            if status != 0:
                raise SystemExit(f"drawing the plots failed in the forked plotter ({status})")


def draw_roll(path: Path, notes: dict[str, np.ndarray] | None, title: str) -> None:
    from pipelines import plots

    if notes is None:
        empty = np.zeros(0)
        plots.piano_roll(empty, empty, empty, path, title)
        return
    order = np.argsort(notes["start"], kind="stable")[:1000]  # the first 1000 in time
    plots.piano_roll(
        notes["pitch"][order], notes["start"][order], notes["end"][order], path,
        f"{title}: first {len(order)} notes", velocity=notes["velocity"][order],
    )  # fmt: skip


def histogram_jobs(folder: Path, hist: NoteHistograms) -> list[Callable[[], Any]]:
    """The parse stage's histograms and instrument counts, one callable each."""
    from functools import partial

    from pipelines import plots

    # The plotter draws the odd ones in a fork: the bars (the slowest) pair with the pitches.
    return [
        partial(plots.bar_counts, program_names(hist), folder / "programs.png",
                "Notes per instrument"),
        partial(
            plots.histogram, hist.step, STEP_EDGES, folder / "step.png",
            "Step (onset to onset in a track)", "quarter notes", log_x=True,
        ),
        partial(
            plots.histogram, hist.pitch, np.arange(129) - 0.5, folder / "pitch.png", "Pitch",
            "pitch (MIDI)",
        ),
        partial(
            plots.histogram, hist.duration, DURATION_EDGES, folder / "duration.png", "Duration",
            "quarter notes", log_x=True,
        ),
    ]  # fmt: skip
