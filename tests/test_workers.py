"""The supervised worker pool on its own: frames, and a job that is not parsing MIDI."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from batch_jobs import TallyJob
from conftest import REPO
from faulty_parsers import worker_env

from pipelines import workers
from pipelines.errors import LakhflowError


def test_frames_round_trip_then_end() -> None:
    stream = io.BytesIO()
    workers.write_frame(stream, ("ready", 7))
    workers.write_frame(stream, [b"\x00" * 3, None])
    stream.seek(0)
    assert workers.read_frame(stream) == ("ready", 7)
    assert workers.read_frame(stream) == [b"\x00" * 3, None]
    assert workers.read_frame(stream) is None


def test_a_job_other_than_parsing_loses_only_the_items_that_crash_or_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", worker_env()["PYTHONPATH"])
    job = TallyJob(faults=(("abort", "crash*"), ("sleep", "hang")))
    batches = {
        0: [("a", "x"), ("crash", "yy"), ("b", "zzz")],
        1: [("hang", "q"), ("c", "qq")],
        2: [("crash2", "1")],  # every item lost: the job's empty output
    }
    pool = workers.LocalPool(2, workers.WorkerSettings(job, 2.0, 1024))
    results: dict[int, workers.BatchResult] = {}
    try:
        futures = {pool.submit(items, tmp_path / f"out-{k}"): k for k, items in batches.items()}
        pending = set(futures)
        while pending:
            for done in pool.wait(pending):
                results[futures[done]] = done.result()
                pending.discard(done)
    finally:
        pool.close()
    crash = ("error", "WorkerCrash", "the tally process died (killed by SIGABRT)")
    assert results[0].outcomes == [("ok", 1), crash, ("ok", 3)]
    assert results[0].summary == 2 and (tmp_path / "out-0").read_text() == "a 1\nb 3"
    timeout = ("error", "Timeout", "tallying took over tally.timeout_s=2 s")
    assert results[1].outcomes == [timeout, ("ok", 2)]
    assert results[1].summary == 1 and (tmp_path / "out-1").read_text() == "c 2"
    assert results[2].outcomes == [crash] and results[2].summary == 0
    assert (tmp_path / "out-2").read_text() == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out-0", "out-1", "out-2"]


def test_a_worker_that_cannot_start_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The project on its path but not this folder: the worker cannot unpickle the job.
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.chdir(tmp_path)
    worker = workers.BatchWorker(workers.WorkerSettings(TallyJob(), 2.0, 1024))
    with pytest.raises(LakhflowError, match=r"^a tally worker failed to start \("):
        worker.start()
    assert worker.proc is None
