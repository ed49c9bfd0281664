"""storage: which folders a stage may replace, temporaries left by killed writers, the per-stage
lock (held by real processes, one of them killed), and resume state that is damaged."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from pipelines import storage
from pipelines.errors import LakhflowError


def test_a_stage_replaces_only_what_it_owns(tmp_path: Path) -> None:
    users = tmp_path / "mine"
    users.mkdir()
    (users / "song.mid").write_bytes(b"the user's own")
    refused = pytest.raises(LakhflowError, match=r"refusing to replace .*mine: it is not empty")
    with refused, storage.atomic_dir(users, "generate", declared=False) as tmp:
        (tmp / "piece.mid").write_bytes(b"new")
    assert (users / "song.mid").read_bytes() == b"the user's own"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temporary left

    batch = tmp_path / "batch"
    for content in (b"first", b"second"):  # new, then marked by this stage: replaced
        with storage.atomic_dir(batch, "generate", declared=False) as tmp:
            (tmp / "piece.mid").write_bytes(content)
    assert (batch / "piece.mid").read_bytes() == b"second"
    assert (batch / storage.OWNER_FILE).read_text() == "generate\n"
    with pytest.raises(LakhflowError, match="lakhflow evaluate did not write it"):
        storage.claim_dir(batch, "evaluate", declared=False)

    declared = tmp_path / "notes"  # a DVC output: the stage's own, marked or not
    declared.mkdir()
    (declared / "old.parquet").write_bytes(b"old")
    with storage.atomic_dir(declared, "parse") as tmp:
        (tmp / "new.parquet").write_bytes(b"new")
    assert sorted(p.name for p in declared.iterdir()) == ["new.parquet"]

    a_file = tmp_path / "params.yaml"
    a_file.write_text("train: {}\n")
    with pytest.raises(LakhflowError, match="is not a folder"):
        storage.claim_dir(a_file, "generate", declared=False)
    storage.claim_dir(tmp_path / "absent", "generate", declared=False)
    (tmp_path / "empty").mkdir()
    storage.claim_dir(tmp_path / "empty", "generate", declared=False)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_only_temporaries_of_dead_writers_are_removed(tmp_path: Path) -> None:
    dead = tmp_path / f".notes.tmp-{_dead_pid()}-0a1b2c3d"
    legacy = tmp_path / ".notes.tmp-0a1b2c3d"  # written before names carried a pid
    live = tmp_path / f".notes.tmp-{os.getpid()}-0a1b2c3d"
    stale_file = tmp_path / f".eval.json.tmp-{_dead_pid()}-0a1b2c3d"
    for folder in (dead, legacy, live):
        (folder / "plots").mkdir(parents=True)
    stale_file.write_text("{")
    (tmp_path / "notes").mkdir()

    assert storage.remove_stale_temporaries(tmp_path, "notes") == 2
    assert not dead.exists() and not legacy.exists() and live.exists() and stale_file.exists()
    assert storage.remove_stale_temporaries(tmp_path) == 1
    assert not stale_file.exists() and live.exists() and (tmp_path / "notes").exists()


HOLD = """
import sys, time
from pathlib import Path
from pipelines import storage
with storage.stage_lock(Path(sys.argv[1]), "parse"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_one_run_per_stage_and_a_killed_holder_is_no_blocker(tmp_path: Path) -> None:
    work = tmp_path / ".lakhflow" / "work"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(work)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(LakhflowError) as refused, storage.stage_lock(work, "parse"):
            pass
        message = str(refused.value)
        assert f"another lakhflow parse is running in this project (pid {holder.pid}, " in message
        assert "started 20" in message
        with storage.stage_lock(work, "sequences"):  # other stages are not held up
            pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    with storage.stage_lock(work, "parse"):  # the kernel let go of the dead holder's lock
        assert f"pid {os.getpid()}" in (work.parent / "locks" / "parse.lock").read_text()


def test_damaged_resume_state_is_named_removed_and_not_trusted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = tmp_path / "state.json"
    storage.write_json(good, {"epochs_done": 2})
    assert storage.read_state(good) == {"epochs_done": 2}
    assert storage.read_state(tmp_path / "missing.json") is None

    cut = tmp_path / "run-00003.json"
    cut.write_text(json.dumps({"batches": [[0, 10]], "rows": []})[:17])
    binary = tmp_path / "run-00004.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert storage.read_state(cut) is None and storage.read_state(binary) is None
    assert not cut.exists() and not binary.exists()
    assert str(cut) in caplog.text and "is damaged" in caplog.text
