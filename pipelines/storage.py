"""Atomic outputs, resumable work folders and content hashes, shared by every stage.

A stage writes each output under a temporary name and renames it into place, so an
interrupted stage never leaves a half-written output that looks whole, and a write that fails
(disk full, read-only) leaves the previous output as it was and says which output it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.errors import WRITE_ERRNOS, WriteError

CHUNK = 1 << 20
TMP_NAME = re.compile(r"\.(?P<name>.+)\.tmp-[0-9a-f]{8}")


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
    return dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")


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


@contextlib.contextmanager
def atomic_dir(dest: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `dest`; on success it replaces the folder `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(dest)
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if dest.exists():
            old = _tmp_name(dest)
            dest.replace(old)
        tmp.replace(dest)
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


def link_or_copy(src: Path, dest: Path) -> None:
    """`dest` as a hard link to `src` (no bytes copied), or a copy across file systems.

    Only for files never changed in place: both names share the bytes.
    """
    try:
        dest.hardlink_to(src)
    except OSError:
        shutil.copyfile(src, dest)
