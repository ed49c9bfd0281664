"""Supervised worker processes: batches of items run by a job, where one item that crashes,
hangs, eats memory or garbles its answer costs that item, never the run.

A stage hands the pool a `BatchJob` (what a worker process does with a batch: the parse stage's
turns MIDI files into a notes part) and submits batches of items; each batch comes back as a
`BatchResult` with one outcome per item. Batches run in worker processes driven by threads
(`LocalPool`) or by a Dask cluster's worker threads (`DaskPool`). Worker and stage talk in frames
(`write_frame`, `read_frame`): a length, then a pickle.
"""

from __future__ import annotations

import contextlib
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
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from pipelines.errors import LakhflowError

log = logging.getLogger(__name__)

WORKER_START_S = 120.0
WRITE_S = 120.0  # time a worker gets to write its batch's output, after its last item's answer
HEADER = struct.Struct("<Q")
# The worker's answers are small (a row per item, the batch's summary): a larger length is a
# stream out of step, never a frame to allocate for.
MAX_FRAME = 16 << 20

# --------------------------------------------------------------------------- frames


def write_frame(stream: Any, obj: Any) -> None:
    """`obj` as one frame on a stream (the stage's requests, the plotter's drawings)."""
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(HEADER.pack(len(payload)) + payload)
    stream.flush()


def send_frame(fd: int, obj: Any) -> None:
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


def read_frame(stream: Any) -> Any:
    """The next frame's object on a stream, or None at its end."""
    head = stream.read(HEADER.size)
    if len(head) < HEADER.size:
        return None
    (size,) = HEADER.unpack(head)
    return pickle.loads(stream.read(size))


# --------------------------------------------------------------------------- the seam


class BatchJob(Protocol):
    """What a worker process does with a batch: the seam between the pool and a stage.

    A job is pickled, to each worker process as it starts and with each batch to Dask, so it is
    a value (a frozen dataclass) of a class the worker process can import. Two equal jobs are
    the same work: a thread's worker process is reused while the job stays equal.
    """

    stage: ClassVar[str]  # "parse": names the stage, its threads and `<stage>.timeout_s`
    doing: ClassVar[str]  # "parsing": in "parsing took over parse.timeout_s=60 s"
    process: ClassVar[str]  # "parser": in "the parser process died (killed by SIGABRT)"

    def prepare(self) -> None:
        """In the worker process, before its memory limit: the imports (they map large
        libraries, which would count against the limit)."""

    def run(self, path: str, items: list[tuple[Any, ...]], answer: Callable[[tuple], None]) -> Any:
        """In the worker process: write the batch's output to `path`, answering
        `(index, *outcome)` for each `(index, *item)` as it goes; returns the batch's summary.

        The output is written to `f"{path}.{os.getpid()}.tmp"` and then renamed: the pool
        removes a dead worker's temporary. An OSError (the disk, not an item) stops the stage.
        """

    def empty(self, path: str) -> Any:
        """In the stage: the output at `path` and the summary of a batch none of whose items
        is left (each was lost with a worker)."""


# --------------------------------------------------------------------------- the worker process


def worker_main() -> None:
    """A worker process: argv[1] is the fd of its answer pipe, argv[2] its memory limit in MB;
    its first frame on stdin is the job, then (output path, items) requests. Its stdout is
    /dev/null: no print of an import or of C code can reach the answers, as it could when they
    shared stdout."""
    answers, max_memory_mb = int(sys.argv[1]), int(sys.argv[2])
    import warnings

    warnings.filterwarnings("ignore")
    stdin = sys.stdin.buffer
    job: BatchJob = read_frame(stdin)
    job.prepare()

    limit = max_memory_mb << 20
    with contextlib.suppress(ValueError, OSError):
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    send_frame(answers, ("ready", os.getpid()))
    while True:
        request = read_frame(stdin)
        if request is None:
            return
        path, items = request
        try:
            summary = job.run(path, items, lambda row: send_frame(answers, row))
        except OSError as exc:  # the disk, not an item: the stage stops with this message
            send_frame(answers, ("fatal", f"cannot write {path}: {exc}"))
            return
        send_frame(answers, ("written", summary))


# --------------------------------------------------------------------------- supervising workers


@dataclass(frozen=True)
class WorkerSettings:
    job: BatchJob
    timeout_s: float  # per item
    max_memory_mb: int  # per worker process (RLIMIT_AS)


@dataclass
class BatchResult:
    """A finished batch: one outcome per item, the job's summary, and (from Dask) the output."""

    outcomes: list[tuple]
    summary: Any
    data: bytes | None = None


class WorkerGone(Exception):
    """The worker process died (its exit is the message)."""


class BadFrame(Exception):
    """The worker sent bytes that are not a frame: it is killed, never trusted again."""


class BatchWorker:
    """One worker process, restarted whenever an item kills it or runs past the time limit."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None
        self.answers = -1  # read end of the worker's answer pipe
        self.buffer = b""  # answer bytes read but not yet taken; always starts at a frame

    def start(self) -> None:
        job = self.settings.job
        if _STOPPING.is_set():
            raise LakhflowError(f"the {job.stage} stage is stopping")
        code = "from pipelines.workers import worker_main; worker_main()"
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        s = self.settings
        # Answers come on a pipe of their own: the worker's stdout is /dev/null.
        self.answers, write_end = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code, str(write_end), str(s.max_memory_mb)],
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
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):  # a worker dead at once: the read says how it died
            write_frame(self.proc.stdin, job)
        try:
            ready = self._read(WORKER_START_S)
        except (TimeoutError, WorkerGone, BadFrame) as exc:
            ready = exc
        if not isinstance(ready, tuple) or ready[0] != "ready":
            detail = f"{ready!r}, " if isinstance(ready, BadFrame) else ""
            self.stop()
            raise LakhflowError(
                f"a {job.stage} worker failed to start ({detail}{self._describe_exit()})"
            )

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
        """Item `i`'s row; a `fatal` answer stops the stage, anything else is a BadFrame."""
        frame = self._read(self.settings.timeout_s)
        if isinstance(frame, tuple) and len(frame) == 2 and frame[0] == "fatal":
            raise LakhflowError(str(frame[1]))
        if not isinstance(frame, tuple) or len(frame) < 2 or frame[0] != i:
            raise BadFrame(f"wanted the row of file {i}, got {str(frame)[:80]}")
        return frame

    def _kill_after(self, path: str, reason: str) -> None:
        pid = self.proc.pid if self.proc else None
        self.stop()
        if pid is not None:
            with contextlib.suppress(OSError):
                Path(f"{path}.{pid}.tmp").unlink()  # the dead worker's unfinished output
        log.debug("%s worker stopped: %s", self.settings.job.stage, reason)

    def run_batch(self, items: list[tuple[Any, ...]], path: str) -> BatchResult:
        """Run the job on a batch of items (each named by its first field) into `path`.

        An item that kills or hangs the worker is quarantined, and the batch is sent again
        without it to a new worker (the output must hold all the batch's other items).
        """
        job = self.settings.job
        bad: dict[int, tuple] = {}
        failed_sends = failed_writes = 0
        while True:
            todo = [i for i in range(len(items)) if i not in bad]
            if not todo:
                return BatchResult([bad[i] for i in range(len(items))], job.empty(path))
            if self.proc is None or self.proc.poll() is not None:
                self.stop()
                self.start()
            assert self.proc is not None and self.proc.stdin is not None
            try:
                write_frame(self.proc.stdin, (path, [(i, *items[i]) for i in todo]))
            except OSError:
                failed_sends += 1
                if failed_sends > 3:
                    raise LakhflowError(
                        f"{job.stage} workers keep dying before they read a batch"
                    ) from None
                self.stop()
                continue
            got: dict[int, tuple] = {}
            for i in todo:
                try:
                    frame = self._read_row(i)
                except TimeoutError:
                    limit = f"{job.stage}.timeout_s={self.settings.timeout_s:g}"
                    bad[i] = ("error", "Timeout", f"{job.doing} took over {limit} s")
                    self._kill_after(path, f"timeout on {items[i][0]}")
                    break
                except WorkerGone as gone:
                    bad[i] = ("error", "WorkerCrash", f"the {job.process} process died ({gone})")
                    self._kill_after(path, f"crash on {items[i][0]}")
                    break
                except BadFrame as garbled:
                    # Its stream is out of step: nothing more it says can be trusted.
                    bad[i] = ("error", "ProtocolError", f"the {job.process} process sent {garbled}")
                    self._kill_after(path, f"malformed answer on {items[i][0]}: {garbled}")
                    break
                got[i] = frame[1:]
            else:
                try:
                    done = self._read(self.settings.timeout_s + WRITE_S)
                    if isinstance(done, tuple) and len(done) == 2 and done[0] == "fatal":
                        raise LakhflowError(str(done[1]))
                    if not isinstance(done, tuple) or len(done) != 2 or done[0] != "written":
                        raise BadFrame(f"wanted the batch's summary, got {str(done)[:80]}")
                except (TimeoutError, WorkerGone, BadFrame) as exc:
                    self._kill_after(path, f"lost while writing ({exc!r})")
                    failed_writes += 1
                    if failed_writes > 2:
                        raise LakhflowError(
                            f"a {job.stage} worker keeps dying while it writes {path}"
                        ) from None
                    continue
                return BatchResult([bad.get(i) or got[i] for i in range(len(items))], done[1])


# --------------------------------------------------------------------------- the pools

_THREAD_WORKERS = threading.local()
_STOPPING = threading.Event()  # set while the local pool shuts down: no worker restarts
_ALL_WORKERS: list[BatchWorker] = []
_ALL_LOCK = threading.Lock()


def run_batch(
    items: list[tuple[Any, ...]], settings: WorkerSettings, path: str | None = None
) -> BatchResult:
    """Run a batch in this thread's worker process (started on first use, then reused).

    This is what the local pool's threads and the Dask workers run. Without `path` (Dask,
    where the stage's disk may be another machine's) the output comes back in the result.
    """
    worker = getattr(_THREAD_WORKERS, "worker", None)
    if worker is None or worker.settings != settings:
        if worker is not None:
            worker.close()
        worker = BatchWorker(settings)
        _THREAD_WORKERS.worker = worker
        with _ALL_LOCK:
            _ALL_WORKERS.append(worker)
    if path is not None:
        return worker.run_batch(items, path)
    handle, local = tempfile.mkstemp(prefix=f"lakhflow-{settings.job.stage}-")
    os.close(handle)
    try:
        result = worker.run_batch(items, local)
        result.data = Path(local).read_bytes()
    finally:
        with contextlib.suppress(OSError):
            Path(local).unlink()
    return result


def close_workers() -> None:
    """End every worker process this process started (EOF first, then a kill if need be)."""
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
        self.pool = ThreadPoolExecutor(n, thread_name_prefix=settings.job.stage)

    def submit(self, items: list[tuple[Any, ...]], path: Path) -> Any:
        return self.pool.submit(run_batch, items, self.settings, str(path))

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

    def submit(self, items: list[tuple[Any, ...]], path: Path) -> Any:
        # The output travels back in the result: the cluster may not share this disk.
        return self.client.submit(run_batch, items, self.settings, pure=False)

    def wait(self, futures: set[Any]) -> set[Any]:
        from distributed import wait

        return set(wait(list(futures), return_when="FIRST_COMPLETED").done)

    def close(self) -> None:
        self.client.close()


Pool = LocalPool | DaskPool


def open_pool(
    section: str, executor: str, workers: int, address: str | None, settings: WorkerSettings
) -> tuple[Pool, int]:
    """The pool a stage's `<section>.executor` names, and how many batches it runs at once:
    `workers` local processes (0: one per core), or a Dask cluster's worker threads."""
    n = workers or os.cpu_count() or 1
    if executor != "dask":
        return LocalPool(n, settings), n
    if not address:
        raise LakhflowError(
            f"{section}.executor is dask but {section}.scheduler_address is not set"
        )
    pool = DaskPool(address, settings)
    return pool, max(n, len(pool.client.scheduler_info().get("workers", {})))


def run_batches(
    pool: Pool, batches: Iterable[tuple[list[tuple[Any, ...]], Path]], in_flight: int
) -> Iterator[tuple[int, BatchResult]]:
    """Each (items, output path) batch through the pool, at most `in_flight` at a time:
    (its index, its result) as each finishes. A remote pool's output is written to its path."""
    from pipelines import storage

    running: dict[Any, tuple[int, Path]] = {}

    def finished() -> Iterator[tuple[int, BatchResult]]:
        for future in pool.wait(set(running)):
            index, path = running.pop(future)
            result: BatchResult = future.result()
            if result.data is not None:
                with storage.atomic_path(path) as tmp:
                    tmp.write_bytes(result.data)
                result.data = None
            yield index, result

    for index, (items, path) in enumerate(batches):
        while len(running) >= in_flight:
            yield from finished()
        running[pool.submit(items, path)] = (index, path)
    while running:
        yield from finished()
