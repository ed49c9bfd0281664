"""Safe, streaming reads of a MIDI collection (a `.tar.gz` archive or a folder), and
byte-reproducible writes of one.

Members are read one at a time from the compressed stream (Lakh is never extracted). Members
with absolute paths, `..`, links or devices are never followed; one over the size cap is refused.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from pipelines import storage
from pipelines.errors import LakhflowError

MIDI_SUFFIXES = (".mid", ".midi", ".kar")


class UnsafeMember(LakhflowError):
    """An archive member that must not be read: its name says which and why."""


@dataclass(frozen=True)
class Member:
    name: str  # path inside the source, POSIX separators
    data: bytes

    @property
    def group(self) -> str:
        """The folder holding the member (a composer, an artist, a Lakh MSD track id), or ""."""
        parts = [part for part in self.name.split("/") if part not in ("", ".")]
        return parts[-2] if len(parts) >= 2 else ""


def check_name(name: str) -> None:
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith(("/", "\\")) or ".." in path.parts:
        raise UnsafeMember(f"archive member {name!r} has an unsafe path (absolute or '..')")


def check_member(info: tarfile.TarInfo, max_bytes: int) -> bool:
    """True for a regular file to read; False for folders; raises for anything unsafe."""
    check_name(info.name)
    if info.isdir():
        return False
    if info.issym() or info.islnk():
        raise UnsafeMember(f"archive member {info.name!r} is a link; links are never followed")
    if not info.isfile():
        raise UnsafeMember(f"archive member {info.name!r} is a device or special file")
    if info.size > max_bytes:
        raise UnsafeMember(
            f"archive member {info.name!r} is {info.size / 1e6:.1f} MB, over the cap of "
            f"{max_bytes / 1e6:.0f} MB (download.max_member_mb)"
        )
    return True


def is_midi(name: str) -> bool:
    return name.lower().endswith(MIDI_SUFFIXES)


def iter_members(
    source: Path, max_bytes: int, *, suffixes: tuple[str, ...] = MIDI_SUFFIXES
) -> Iterator[Member]:
    """Yield each file member whose name ends in one of `suffixes`, in stored order.

    Raises `UnsafeMember` on the first unsafe member, and `LakhflowError` for a source that is
    not a readable archive or folder.
    """
    if source.is_dir():
        for path in sorted(source.rglob("*")):
            if path.is_file() and not path.is_symlink() and path.name.lower().endswith(suffixes):
                if path.stat().st_size > max_bytes:
                    raise UnsafeMember(f"{path.relative_to(source)} is over the size cap")
                yield Member(path.relative_to(source).as_posix(), path.read_bytes())
        return
    from isal import igzip, isal_zlib

    try:
        with open(source, "rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            # ISA-L's gzip reader inflates twice as fast as zlib's, which the stage's main
            # process would otherwise spend a third of its time in. "r|" streams: members are
            # read in order, without random access or extraction.
            stream: Any = igzip.IGzipFile(fileobj=raw) if gzipped else raw
            with tarfile.open(fileobj=stream, mode="r|" if gzipped else "r|*") as tar:
                yield from _tar_members(tar, max_bytes, suffixes)
    except (tarfile.TarError, EOFError, OSError, isal_zlib.error) as exc:  # type: ignore[misc]
        raise LakhflowError(f"{source} is not a readable .tar.gz archive ({exc})") from None


def _tar_members(
    tar: tarfile.TarFile, max_bytes: int, suffixes: tuple[str, ...]
) -> Iterator[Member]:
    for info in tar:
        if not check_member(info, max_bytes):
            continue
        if not info.name.lower().endswith(suffixes):
            continue
        handle = tar.extractfile(info)
        if handle is not None:
            yield Member(info.name.removeprefix("./"), handle.read())


def write_archive(out: BinaryIO, members: Iterable[tuple[str, bytes]]) -> int:
    """Write (name, bytes) members, in the order given, as a byte-reproducible .tar.gz.

    Fixed times, owners and modes, and a gzip header without time or file name: the same
    members give the same bytes, so DVC sees no change when nothing changed.
    """
    count = 0
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name, data in members:
            check_name(name)
            info = tarfile.TarInfo(PurePosixPath(name).as_posix())
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
            count += 1
    return count


def digests(path: Path) -> tuple[str, str]:
    """The file's md5 and sha256, from one read."""
    md5, sha256 = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(storage.CHUNK):
            md5.update(block)
            sha256.update(block)
    return md5.hexdigest(), sha256.hexdigest()
