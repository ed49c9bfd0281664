"""Atomic outputs, resumable work folders, stage locks and content hashes, shared by every stage.

A stage writes each output under a temporary name and renames it into place, so an
interrupted stage never leaves a half-written output that looks whole, and a write that fails
(disk full, read-only) leaves the previous output as it was and says which output it was. A
stage replaces only a folder it owns: the DVC output it declares, or a folder it wrote before
and marked as its own; any other folder that is not empty is refused before work starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.errors import WRITE_ERRNOS, LakhflowError, WriteError

CHUNK = 1 << 20
TMP_NAME = re.compile(r"\.(?P<name>.+)\.tmp-(?:[0-9]+-)?[0-9a-f]{8}")
# In a folder a stage wrote that is not its declared DVC output (generate.output): the stage's
# name, so that the stage may replace the folder next time and no other folder is ever replaced.
OWNER_FILE = ".lakhflow-owner"
log = logging.getLogger(__name__)


def file_digest(path: Path, algorithm: str = "md5") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def stable_hash(obj: Any, length: int = 16) -> str:
    """A short hash of any JSON-serialisable value, independent of dict order."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _tmp_name(dest: Path) -> Path:
    # The writer's pid in the name tells a later run whether the temporary is stale.
    return dest.with_name(f".{dest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: Path, name: str | None = None) -> int:
    """Remove the temporaries (of `name`, or of anything) that killed writers left in `folder`;
    returns how many. A temporary is stale when the process named in it is gone (names without
    a pid come from versions before pids were written, and are stale too)."""
    removed = 0
    if not folder.is_dir():
        return 0
    pattern = "*" if name is None else glob.escape(name)
    for tmp in folder.glob(f".{pattern}.tmp-*"):
        pid = tmp.name.rsplit(".tmp-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and (int(pid) == os.getpid() or _alive(int(pid))):
            continue
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def published_path(path: Path | str) -> Path:
    """The path a user knows for one under a temporary name of `_tmp_name`:
    `data/.notes.tmp-1a2b3c4d/stats.json` -> `data/notes/stats.json`."""
    return Path(*[m["name"] if (m := TMP_NAME.fullmatch(p)) else p for p in Path(path).parts])


def write_error(exc: OSError, dest: Path | None = None) -> WriteError | None:
    """A disk or permission error as a `WriteError` naming the output it was writing: the file
    the error names (the target of a copy or rename first), else `dest`. None for any other
    OSError, which is not the user's to fix."""
    if isinstance(exc, WriteError) or exc.errno not in WRITE_ERRNOS:
        return None
    named = exc.filename2 or exc.filename or dest
    if named is None:
        return None
    path = published_path(os.fsdecode(named) if isinstance(named, bytes) else str(named))
    return WriteError(exc.errno, exc.strerror, str(path))


@contextlib.contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary file path beside `dest`; on success it replaces `dest` at once."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(dest)
    try:
        yield tmp
        tmp.replace(dest)
    except OSError as exc:
        if failed := write_error(exc, dest):
            raise failed from exc
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def claim_dir(dest: Path, owner: str, *, declared: bool) -> None:
    """Raise unless stage `owner` may replace the folder `dest`: it does not exist, is empty,
    is the stage's declared DVC output, or holds the stage's own mark from an earlier run."""
    if not dest.exists() and not dest.is_symlink():
        return
    if not dest.is_dir() or (dest.is_symlink() and not declared):
        raise LakhflowError(f"{dest} exists and is not a folder that lakhflow {owner} may replace")
    if declared or not any(dest.iterdir()):
        return
    mark = dest / OWNER_FILE
    if mark.is_file() and mark.read_text().strip() == owner:
        return
    raise LakhflowError(
        f"refusing to replace {dest}: it is not empty and lakhflow {owner} did not write it; "
        "choose a new or empty folder"
    )


@contextlib.contextmanager
def atomic_dir(dest: Path, owner: str, *, declared: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside `dest`; on success it replaces the folder `dest`.

    `owner` is the stage writing it. A folder that is not the stage's `declared` DVC output is
    marked as the stage's own, and replaced only if it is empty or so marked (`claim_dir`).
    """
    claim_dir(dest, owner, declared=declared)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(dest.parent, dest.name)
    tmp = _tmp_name(dest)
    tmp.mkdir()
    try:
        yield tmp
        if not declared:
            (tmp / OWNER_FILE).write_text(f"{owner}\n")
        claim_dir(dest, owner, declared=declared)  # whatever appeared there meanwhile
        old = None
        if dest.exists():
            old = _tmp_name(dest)
            dest.replace(old)
        try:
            tmp.replace(dest)
        except OSError:
            if old is not None:
                old.replace(dest)  # the previous output stays as it was
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        if failed := write_error(exc, dest):
            raise failed from exc
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: Path, data: Any, *, indent: int | None = 2) -> None:
    """Atomically, keys sorted; `indent=None` for bulky state (json's fast C encoder)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=indent, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def read_state(path: Path) -> Any | None:
    """Resume state written by `write_json`, or None where it is missing or damaged (a damaged
    file is named in a warning and removed: resume state is redone, never trusted)."""
    if not path.exists():
        return None
    try:
        return read_json(path)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        log.warning("%s is damaged (%s); it is ignored and its work redone", path, exc)
        path.unlink(missing_ok=True)
        return None


def work_dir(work_root: Path, stage: str, key: Any) -> Path:
    """`.lakhflow/work/<stage>/<hash of key>`: resumable state for one set of inputs and params.

    Folders of the same stage for other keys are stale (other inputs or params) and removed,
    so the work area does not grow without bound.
    """
    base = work_root / stage
    digest = stable_hash(key)
    path = base / digest
    if base.exists():
        for other in base.iterdir():
            if other.name != digest and other.is_dir():
                shutil.rmtree(other, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def stage_lock(work_root: Path, stage: str, key: str | None = None) -> Iterator[None]:
    """Hold `.lakhflow/locks/<stage>[-<key>].lock` while a stage runs: one run at a time.

    An flock, so the kernel releases it when its holder dies: a lock left by a killed process
    is no blocker. The file names the holder (pid, start time) for the refusal.
    """
    folder = work_root.parent / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (f"{stage}-{key}.lock" if key else f"{stage}.lock")
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise LakhflowError(
                f"another lakhflow {stage} is running in this project ({holder}); wait for it "
                "to end or stop it"
            ) from None
        handle.seek(0)
        handle.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        handle.write(f"pid {os.getpid()}, started {started}")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def link_or_copy(src: Path, dest: Path) -> None:
    """`dest` as a hard link to `src` (no bytes copied), or a copy across file systems.

    Only for files never changed in place: both names share the bytes.
    """
    try:
        dest.hardlink_to(src)
    except OSError:
        shutil.copyfile(src, dest)


# --------------------------------------------------------------------------- arrays files

_ARRAYS_MAGIC = b"LKARRAYS1\n"


def write_arrays(path: Path, meta: Any, arrays: dict[str, Any]) -> None:
    """A JSON value and named numpy arrays in one file, each array readable on its own without
    loading the rest (`read_arrays` maps them). Written in place: callers write a temporary."""
    import numpy as np

    index: dict[str, list[Any]] = {}
    pos = 0
    for name, array in arrays.items():
        a = np.ascontiguousarray(array)
        index[name] = [a.dtype.str, len(a), pos]
        pos += a.nbytes + (-a.nbytes % 8)
    text = json.dumps({"meta": meta, "arrays": index}, sort_keys=True).encode()
    text += b" " * (-(len(_ARRAYS_MAGIC) + 8 + len(text)) % 8)
    with open(path, "wb") as f:
        f.write(_ARRAYS_MAGIC + len(text).to_bytes(8, "little") + text)
        for array in arrays.values():
            data = np.ascontiguousarray(array).tobytes()
            f.write(data + b"\0" * (-len(data) % 8))


def read_arrays(path: Path) -> tuple[Any, dict[str, Any]]:
    """What `write_arrays` wrote: the JSON value, and each array memory-mapped (read-only)."""
    import numpy as np

    with open(path, "rb") as f:
        head = f.read(len(_ARRAYS_MAGIC) + 8)
        if head[: len(_ARRAYS_MAGIC)] != _ARRAYS_MAGIC:
            raise LakhflowError(f"{path} is not an arrays file (a damaged work file?)")
        header = json.loads(f.read(int.from_bytes(head[len(_ARRAYS_MAGIC) :], "little")))
        base = f.tell()
    arrays = {}
    for name, (dtype, count, offset) in header["arrays"].items():
        arrays[name] = (
            np.memmap(path, dtype=dtype, mode="r", offset=base + offset, shape=(count,))
            if count
            else np.empty(0, dtype)
        )
    return header["meta"], arrays
