"""The download stage: fetch or build the MIDI collection that `download.source` names.

Writes `data/raw/<source>.tar.gz`, published only after its size, checksum and members verify.
Partial downloads and scores already converted to MIDI wait in `.lakhflow/work/download/`.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import itertools
import logging
import multiprocessing
import os
import shutil
import socket
import sys
import tarfile
import time
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import requests
import urllib3
from tqdm import tqdm

from pipelines import archive, storage
from pipelines.config import Config, Download
from pipelines.errors import LakhflowError

log = logging.getLogger(__name__)

LAKH_BASE = "http://hog.ee.columbia.edu/craffel/lmd/"
# Sizes and md5 sums the MusPy project checks its downloads against; clean_midi has no
# published checksum, so only its size is checked.
LAKH: dict[str, tuple[int, str | None]] = {
    "lmd_full": (1_768_163_879, "2536ce3fd2cede53ddaa264f731859ab"),
    "lmd_matched": (1_407_072_670, "fb80d01c22020295bb3eeef31f1aa63a"),
    "lmd_aligned": (272_169_548, "d36ca9159966d81d97e1e37d10ed4584"),
    "clean_midi": (234_283_029, None),
}
# In order of preference when one work exists in several encodings (bwv277.krn and .mxl).
SCORE_SUFFIXES = (".mxl", ".musicxml", ".xml", ".krn", ".abc")
FOLDER_SUFFIXES = archive.MIDI_SUFFIXES + SCORE_SUFFIXES
OFFLINE_HINT = (
    "there is no network connection to the Lakh host; to work offline use "
    "-S download.source=bach, or -S download.source=path -S download.path=<folder or archive>"
)
USER_AGENT = "lakhflow/0.1 (+python-requests)"
CHUNK = 1 << 16
BACKOFF_S = 0.5  # first retry delay; doubles per failure in a row
BACKOFF_MAX_S = 30.0
RETRY_STATUSES = frozenset({408, 425, 429})
FATAL_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH})


@dataclass(frozen=True)
class Remote:
    """An archive to fetch over HTTP and what it must turn out to be."""

    url: str
    size: int | None
    md5: str | None
    sha256: str | None
    lakh: bool
    max_bytes: int  # download.max_mb: the cap where neither `size` nor the server gives one


@dataclass
class Published:
    """What the stage wrote: the archive, its MIDI file count and checksum, and notes."""

    archive: Path
    files: int
    md5: str
    sha256: str
    notes: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Item:
    """One file of a collection: its member name in the archive and the MIDI or score it is from."""

    name: str
    path: Path

    @property
    def is_score(self) -> bool:
        return self.path.suffix.lower() in SCORE_SUFFIXES


class _Transient(Exception):
    """A failure worth retrying: a reset connection, a 5xx, a timeout, a body cut short."""


def run(cfg: Config) -> dict[str, Any]:
    started = time.perf_counter()
    d = cfg.download
    dest = cfg.paths.raw_archive(d.source)
    if d.source == "bach":
        published = _from_bach(cfg, dest)
    elif d.source == "path":
        published = _from_path(cfg, dest)
    else:
        published = _from_remote(cfg, dest)
    seconds = time.perf_counter() - started
    size = dest.stat().st_size
    where = _shown(dest, cfg.paths.root)
    notes = "".join(f"; {n}" for n in published.notes)
    log.info(
        "download: wrote %s: %d MIDI files, %s, md5 %s%s (%.1f s)",
        where, published.files, _human(size), published.md5, notes, seconds,
    )  # fmt: skip
    return {
        "source": d.source,
        "archive": where,
        "files": published.files,
        "bytes": size,
        "md5": published.md5,
        "sha256": published.sha256,
        "seconds": round(seconds, 3),
        **published.metrics,
    }


# --- named and URL sources: HTTP with resume, retries and verification ----------------------


def remote_for(d: Download) -> Remote:
    """The URL and expected size/checksums of a Lakh or `url` source, with the overrides applied."""
    max_bytes = int(d.max_mb * 1_000_000)
    if d.source in LAKH:
        size, md5 = LAKH[d.source]
        url = d.url or f"{LAKH_BASE}{d.source}.tar.gz"
        if d.md5 or d.sha256:  # another file than the published one: its size is not known
            return Remote(url, None, d.md5, d.sha256, lakh=True, max_bytes=max_bytes)
        return Remote(url, size, md5, None, lakh=True, max_bytes=max_bytes)
    if d.source == "url" and d.url:
        return Remote(d.url, None, d.md5, d.sha256, lakh=False, max_bytes=max_bytes)
    raise LakhflowError(f"download.source {d.source!r} is not fetched over HTTP")


def _from_remote(cfg: Config, dest: Path) -> Published:
    d = cfg.download
    remote = remote_for(d)
    key = {"url": remote.url, "size": remote.size, "md5": remote.md5, "sha256": remote.sha256}
    work = storage.work_dir(cfg.paths.work, f"download/{d.source}", key)
    download = work / f"{d.source}.tar.gz"
    marker = work / "verified.json"
    max_bytes = _max_bytes(d)
    metrics: dict[str, Any] = {"downloaded_bytes": 0, "resumed_from": 0}
    verified = storage.read_state(marker)
    if verified and download.exists() and download.stat().st_size == verified["size"]:
        log.info("download: %s was fetched and verified before; publishing it", remote.url)
    else:
        marker.unlink(missing_ok=True)
        partial = Partial(download)
        metrics["resumed_from"] = partial.size
        if partial.size:
            log.info("download: resuming %s from byte %d", remote.url, partial.size)
        fetch(remote, partial, retries=d.retries, timeout_s=d.timeout_s, label=d.source)
        metrics["downloaded_bytes"] = partial.size - metrics["resumed_from"]
        try:
            _verify(
                remote.url, remote.size, remote.md5, remote.sha256, partial.size, *partial.hex()
            )
            members = scan_members(download, max_bytes, label=remote.url)
        except LakhflowError:
            download.unlink(missing_ok=True)  # a bad download must not be resumed next time
            raise
        md5, sha256 = partial.hex()
        verified = {"size": partial.size, "md5": md5, "sha256": sha256, "midi_files": members}
        storage.write_json(marker, verified)
    notes = [] if remote.md5 or remote.sha256 else [_unpinned(verified["md5"])]
    return _publish_archive(download, dest, d.limit, max_bytes, verified, notes, metrics, link=True)


def _unpinned(md5: str) -> str:
    return f"no checksum was given to verify it against (pin it with -S download.md5={md5})"


class Partial:
    """The bytes of one download so far, in the work folder, with their running checksums."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._restart_hashes()
        if path.exists():
            with open(path, "rb") as f:
                while block := f.read(storage.CHUNK):
                    self._hash(block)

    def _restart_hashes(self) -> None:
        self.md5 = hashlib.md5()
        self.sha256 = hashlib.sha256()
        self.size = 0

    def _hash(self, block: bytes) -> None:
        self.md5.update(block)
        self.sha256.update(block)
        self.size += len(block)

    def restart(self) -> None:
        self.path.write_bytes(b"")
        self._restart_hashes()

    def discard(self) -> None:
        """Delete the bytes so far: they are not the file asked for, and must not be resumed."""
        self.path.unlink(missing_ok=True)
        self._restart_hashes()

    def append(self, handle: BinaryIO, block: bytes) -> None:
        try:
            handle.write(block)
        except OSError as exc:
            raise LakhflowError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        self._hash(block)

    def hex(self) -> tuple[str, str]:
        return self.md5.hexdigest(), self.sha256.hexdigest()


def fetch(remote: Remote, partial: Partial, *, retries: int, timeout_s: float, label: str) -> None:
    """Bring `partial` to the whole file: resume with Range, retry transient errors with backoff."""
    failures = restarts = 0
    bar = tqdm(
        total=remote.size, initial=partial.size, unit="B", unit_scale=True, unit_divisor=1024,
        desc=label, mininterval=0.5, dynamic_ncols=True,
    )  # fmt: skip
    try:
        with requests.Session() as session:
            while True:
                before = partial.size
                try:
                    if _transfer(session, remote, partial, timeout_s, bar):
                        return
                    restarts += 1  # the server would not resume: start again at once
                    if restarts > 3:
                        msg = f"{remote.url}: the server answers range requests inconsistently"
                        raise LakhflowError(msg)
                    continue
                except _Transient as exc:
                    if partial.size > before:
                        failures = 0  # progress was made: only failures in a row count
                    failures += 1
                    if failures > retries:
                        hint = f"; {OFFLINE_HINT}" if remote.lakh and partial.size == 0 else ""
                        raise LakhflowError(
                            f"download of {remote.url} failed after {retries} retries: {exc}; "
                            f"{partial.size} bytes are kept and the next run resumes from there"
                            f"{hint}"
                        ) from None
                    delay = min(BACKOFF_MAX_S, BACKOFF_S * 2 ** (failures - 1))
                    bar.write(
                        f"download: {exc}; retry {failures}/{retries} in {delay:g} s",
                        file=sys.stderr,
                    )
                    time.sleep(delay)
    finally:
        bar.close()


def _transfer(
    session: requests.Session, remote: Remote, partial: Partial, timeout_s: float, bar: tqdm
) -> bool:
    """One request: append what the server sends. True when the file is whole."""
    if remote.size is not None and partial.size > remote.size:
        partial.restart()
    if remote.size is not None and partial.size == remote.size:
        return True
    have = partial.size
    headers = {"Accept-Encoding": "identity", "User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = session.get(
            remote.url, headers=headers, stream=True, timeout=(timeout_s, timeout_s)
        )
    except requests.RequestException as exc:
        raise _request_error(remote, exc) from None
    with response:
        code = response.status_code
        if code == 416 and have:
            whole = _content_range(response.headers.get("Content-Range"))[1]
            if whole == have:  # the previous run stopped after the last byte
                return True
            partial.restart()
            return False
        if code >= 500 or code in RETRY_STATUSES:
            raise _Transient(f"HTTP {code} {response.reason}")
        if code >= 400:
            raise LakhflowError(f"download of {remote.url} failed: HTTP {code} {response.reason}")
        if code == 206:
            start, whole = _content_range(response.headers.get("Content-Range"))
            if start != have:
                partial.restart()
                return False
        elif code == 200:
            if have:
                bar.write(
                    "download: the server ignored the range request; starting again",
                    file=sys.stderr,
                )
                partial.restart()
            length = response.headers.get("Content-Length")
            whole = int(length) if length and length.isdigit() else None
        else:
            raise LakhflowError(f"download of {remote.url} failed: unexpected HTTP {code}")
        if whole is not None and remote.size is not None and whole != remote.size:
            raise LakhflowError(
                f"{remote.url} is {whole} bytes, expected {remote.size}: not the published "
                "file (set download.md5 or download.sha256 for another file)"
            )
        if whole is not None and remote.size is None and whole > remote.max_bytes:
            partial.discard()
            raise LakhflowError(
                f"{remote.url} is {whole} bytes, over the cap of download.max_mb="
                f"{remote.max_bytes / 1e6:g} (MB); nothing was kept: raise download.max_mb to "
                "fetch it"
            )
        expected = whole if whole is not None else remote.size
        # A server may stream without end: stop before the file grows past the most it may have.
        cap = expected if expected is not None else remote.max_bytes
        bar.reset(total=expected)
        bar.update(partial.size)
        with open(partial.path, "ab") as handle:
            while True:
                try:
                    block = response.raw.read1(CHUNK, decode_content=False)
                except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
                    raise _Transient(_describe(exc)) from None
                if not block:
                    break
                if partial.size + len(block) > cap:
                    partial.discard()
                    raise _over_cap(remote, cap, whole)
                partial.append(handle, block)
                bar.update(len(block))
        if expected is not None and partial.size < expected:
            raise _Transient(f"the connection closed after {partial.size} of {expected} bytes")
    return True


def _over_cap(remote: Remote, cap: int, announced: int | None) -> LakhflowError:
    """The one line for a server that sent more than the file may have."""
    if remote.size is not None:
        why = (
            f"more than the published {remote.size} bytes: not the published file (set "
            "download.md5 or download.sha256 for another file)"
        )
    elif announced is not None:
        why = f"more than the {announced} bytes it announced"
    else:
        why = (
            f"more than the cap of {cap} bytes (download.max_mb={cap / 1e6:g}) without saying "
            "its size; raise download.max_mb if the file is meant to be bigger"
        )
    return LakhflowError(
        f"download of {remote.url} stopped: the server sent {why}; the partial file was deleted"
    )


def _content_range(header: str | None) -> tuple[int, int | None]:
    """`bytes 100-199/200` -> (100, 200); `bytes */200` -> (-1, 200); `*` totals -> None."""
    if not header or not header.startswith("bytes "):
        return -1, None
    span, _, whole = header[6:].partition("/")
    start = int(span.split("-")[0]) if span[:1].isdigit() else -1
    return start, int(whole) if whole.isdigit() else None


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps (requests -> urllib3 -> socket)."""
    stack: list[object] = [exc]
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        stack += [item.__cause__, item.__context__, getattr(item, "reason", None), *item.args]


def _request_error(remote: Remote, exc: requests.RequestException) -> Exception:
    """Refused, unreachable or unresolvable hosts fail at once; anything else is retried."""
    host = urlsplit(remote.url).netloc or remote.url
    if isinstance(exc, requests.exceptions.InvalidURL | requests.exceptions.MissingSchema):
        return LakhflowError(f"download URL {remote.url!r} is not a valid http(s) URL")
    if isinstance(exc, requests.exceptions.InvalidSchema):
        return LakhflowError(f"download URL {remote.url!r}: only http and https are supported")
    why = None
    for cause in _causes(exc):
        if isinstance(cause, socket.gaierror | urllib3.exceptions.NameResolutionError):
            why = "the host name does not resolve"
        elif isinstance(cause, OSError) and cause.errno in FATAL_ERRNOS:
            why = os.strerror(cause.errno).lower() if cause.errno else "refused"
        if why:
            break
    if why is None:
        return _Transient(_describe(exc))
    hint = f": {OFFLINE_HINT}" if remote.lakh else ""
    return LakhflowError(f"cannot connect to {host} ({why}){hint}")


def _describe(exc: BaseException) -> str:
    """A one-line reason from a chain of wrapped network errors."""
    names = [c for c in _causes(exc) if not isinstance(c, requests.RequestException)]
    inner = names[-1] if names else exc
    text = str(inner).splitlines()[0] if str(inner) else ""
    return f"{type(inner).__name__}: {text}"[:200] if text else type(inner).__name__


def _verify(
    where: str,
    size: int | None,
    md5: str | None,
    sha256: str | None,
    got_size: int,
    got_md5: str,
    got_sha256: str,
) -> None:
    """Raise one line giving expected and actual values if size or a checksum differs."""
    if size is not None and got_size != size:
        raise LakhflowError(f"size mismatch for {where}: expected {size} bytes, got {got_size}")
    for name, want, got in (("md5", md5, got_md5), ("sha256", sha256, got_sha256)):
        if want and want.lower() != got:
            raise LakhflowError(
                f"checksum mismatch for {where}: expected {name} {want.lower()}, actual {got}; "
                "nothing was published"
            )


class _Progress(io.RawIOBase):
    """A read-only file that moves a progress bar as it is read."""

    def __init__(self, handle: io.BufferedReader, bar: tqdm) -> None:
        self._handle = handle
        self._bar = bar

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._handle.readinto(buffer)
        self._bar.update(n)
        return n


def scan_members(path: Path, max_bytes: int, *, label: str) -> int:
    """Check every member of a .tar.gz as a stream (no extraction); the number of MIDI files.

    A `..` or absolute name, a link, a device or a member over the cap is refused by name.
    """
    midi = 0
    bar = tqdm(
        total=path.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024,
        desc="checking members", mininterval=0.5, dynamic_ncols=True, leave=False,
    )  # fmt: skip
    try:
        with open(path, "rb") as raw, tarfile.open(fileobj=_Progress(raw, bar), mode="r|gz") as tar:
            for info in tar:
                if archive.check_member(info, max_bytes) and archive.is_midi(info.name):
                    midi += 1
    except archive.UnsafeMember as exc:
        raise archive.UnsafeMember(f"refused {label}: {exc}") from None
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise LakhflowError(f"{label} is not a readable .tar.gz archive ({exc})") from None
    finally:
        bar.close()
    if midi == 0:
        raise LakhflowError(f"{label} holds no MIDI files (.mid, .midi, .kar)")
    return midi


def _publish_archive(
    source: Path,
    dest: Path,
    limit: int,
    max_bytes: int,
    verified: dict[str, Any],
    notes: list[str],
    metrics: dict[str, Any],
    *,
    link: bool,
) -> Published:
    """Publish a verified archive as is, or the first `limit` MIDI files of it repacked."""
    if limit:
        members = itertools.islice(archive.iter_members(source, max_bytes), limit)
        chosen = sorted(((m.name, m.data) for m in members), key=lambda m: m[0])
        with storage.atomic_path(dest) as tmp, open(tmp, "wb") as out:
            files = write_archive(out, chosen)
        notes.append(f"the first {files} of {verified['midi_files']} MIDI files (download.limit)")
        md5, sha256 = _digests(dest)
        metrics["source_md5"] = verified["md5"]
        return Published(dest, files, md5, sha256, notes, metrics)
    with storage.atomic_path(dest) as tmp:
        if not (link and _hard_link(source, tmp)):
            shutil.copyfile(source, tmp)
    return Published(
        dest, verified["midi_files"], verified["md5"], verified["sha256"], notes, metrics
    )


def _hard_link(source: Path, link: Path) -> bool:
    """Link instead of copying where the file system allows: no second copy of Lakh on disk,
    and the work folder's copy still serves a forced re-run after DVC deletes the output."""
    try:
        os.link(source, link)
    except OSError:
        return False
    return True


# --- bach and path: collections built here, converted to MIDI -------------------------------


def _from_bach(cfg: Config, dest: Path) -> Published:
    return _build(cfg, bach_items(), dest)


def bach_items() -> list[Item]:
    """The Bach works of the music21 corpus, one per work, named `bach/<work>.mid`, sorted.

    The corpus's Riemenschneider analyses (.rntxt) are chord analyses, not works, and are left
    out; a work stored in two encodings is taken once, from its MusicXML.
    """
    import music21.corpus

    root = Path(music21.corpus.__file__).parent / "bach"
    chosen: dict[str, Path] = {}
    for found in sorted(Path(p) for p in music21.corpus.getComposer("bach")):
        if found.suffix.lower() not in SCORE_SUFFIXES:
            continue
        relative = found.relative_to(root) if found.is_relative_to(root) else Path(found.name)
        name = f"bach/{relative.with_suffix('.mid').as_posix()}"
        if name not in chosen or _rank(found) < _rank(chosen[name]):
            chosen[name] = found
    return [Item(name, chosen[name]) for name in sorted(chosen)]


def _rank(path: Path) -> int:
    return SCORE_SUFFIXES.index(path.suffix.lower())


@dataclass
class Folder:
    """The music files found in a folder, and how many links leading out of it were skipped."""

    files: dict[str, Path]  # name in the archive (the file's real path in the folder) -> path
    links_outside: int = 0


def walk_folder(folder: Path) -> Folder:
    """MIDI files and scores under `folder`, without leaving it through a link.

    A link (to a file or a folder) that resolves outside `folder` is skipped and counted: a
    `leak.mid -> /etc/shadow` must not be packed into the archive. A link that stays inside is
    followed, and each file is taken once, under its real path, so neither a second link to
    it nor a link loop adds anything. Hidden files and folders are left out.
    """
    root = folder.resolve()
    found = Folder({})
    walked: set[Path] = set()
    pending = [root]
    while pending:
        directory = pending.pop()
        if directory in walked:
            continue
        walked.add(directory)
        for entry in sorted(directory.iterdir()):
            if entry.name.startswith("."):
                continue
            real = Path(os.path.realpath(entry))  # unlike Path.resolve, no raise on a link loop
            if not real.is_relative_to(root):
                found.links_outside += 1
                continue
            if any(part.startswith(".") for part in real.relative_to(root).parts):
                continue
            if real.is_dir():
                pending.append(real)
            elif real.is_file() and real.suffix.lower() in FOLDER_SUFFIXES:
                found.files[real.relative_to(root).as_posix()] = real
    return found


def folder_items(found: dict[str, Path]) -> list[Item]:
    """The files of a folder as items named by their path in it (`Chopin/piece1.mid`).

    A score becomes `<name>.mid`, or `<name>.<suffix>.mid` where a MIDI file or another score
    already has that name.
    """
    items = {
        name: Item(name, path) for name, path in found.items() if not Item(name, path).is_score
    }
    for name, path in sorted(found.items()):
        if Item(name, path).is_score:
            midi_name = str(PurePosixPath(name).with_suffix(".mid"))
            if midi_name in items:
                midi_name = f"{name}.mid"
            items[midi_name] = Item(midi_name, path)
    return [items[name] for name in sorted(items)]


def _from_path(cfg: Config, dest: Path) -> Published:
    d = cfg.download
    given = Path(d.path or "").expanduser()
    source = given if given.is_absolute() else cfg.paths.root / given
    if not source.exists():
        raise LakhflowError(f"download.path {d.path!r} does not exist (looked at {source})")
    if source.is_dir():
        folder = walk_folder(source)
        items = folder_items(folder.files)
        outside = folder.links_outside
        skipped = f" ({outside} links leading out of it skipped)" if outside else ""
        if not items:
            raise LakhflowError(
                f"download.path {d.path!r} holds no MIDI (.mid, .midi) or scores "
                f"(.krn, .abc, .mxl, .musicxml, .xml){skipped}"
            )
        published = _build(cfg, items, dest)
        published.metrics["links_outside"] = outside
        if outside:
            published.notes.append(
                f"{outside} links leading out of download.path skipped (never followed)"
            )
        return published
    with open(source, "rb") as f:
        if f.read(2) != b"\x1f\x8b":
            raise LakhflowError(
                f"download.path {d.path!r} is neither a folder nor a .tar.gz archive"
            )
    md5, sha256 = _digests(source)
    _verify(str(source), None, d.md5, d.sha256, source.stat().st_size, md5, sha256)
    max_bytes = _max_bytes(d)
    midi = scan_members(source, max_bytes, label=str(source))
    verified = {"size": source.stat().st_size, "md5": md5, "sha256": sha256, "midi_files": midi}
    notes = [] if d.md5 or d.sha256 else [_unpinned(md5)]
    return _publish_archive(source, dest, d.limit, max_bytes, verified, notes, {}, link=False)


def _build(cfg: Config, items: list[Item], dest: Path) -> Published:
    """Convert the scores among `items` (cached per score), then write one sorted archive."""
    import music21

    d = cfg.download
    max_bytes = _max_bytes(d)
    cache = storage.work_dir(
        cfg.paths.work, "download/scores", {"music21": music21.__version__, "midi": 1}
    )
    ready, failed, counts = gather(
        items, cache, workers=d.workers, limit=d.limit, max_bytes=max_bytes
    )
    if not ready:
        raise LakhflowError(f"no file could be converted to MIDI ({len(failed)} failed)")
    with storage.atomic_path(dest) as tmp, open(tmp, "wb") as out:
        files = write_archive(
            out, ((name, path.read_bytes()) for name, path in sorted(ready.items()))
        )
    md5, sha256 = _digests(dest)
    notes = []
    if failed:
        shown = ", ".join(f"{n} ({e})" for n, e in itertools.islice(sorted(failed.items()), 3))
        more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
        notes.append(f"{len(failed)} skipped, failing to convert: {shown}{more}")
    if counts["converted"] or counts["cached"]:
        notes.append(f"{counts['converted']} scores converted, {counts['cached']} from the cache")
    metrics = {"failed": len(failed), **counts}
    return Published(dest, files, md5, sha256, notes, metrics)


def gather(
    items: list[Item], cache: Path, *, workers: int, limit: int, max_bytes: int
) -> tuple[dict[str, Path], dict[str, str], dict[str, int]]:
    """The MIDI file for each item (the item itself, or its converted score in `cache`).

    Takes items in order until `limit` have MIDI (0: all); a score that fails to convert is
    skipped and reported, never fatal, and its failure is cached like a success.
    Returns (name -> MIDI path, name -> error, counts of converted and cached scores).
    """
    ready: dict[str, Path] = {}
    failed: dict[str, str] = {}
    counts = {"converted": 0, "cached": 0}
    want = limit or len(items)
    position = 0
    while len(ready) < want and position < len(items):
        batch = items[position : position + want - len(ready)]
        position += len(batch)
        todo: list[tuple[Item, str]] = []
        for item in batch:
            if item.path.stat().st_size > max_bytes:
                raise archive.UnsafeMember(
                    f"{item.path} is {item.path.stat().st_size / 1e6:.1f} MB, over the cap of "
                    f"{max_bytes / 1e6:g} MB (download.max_member_mb)"
                )
            if not item.is_score:
                ready[item.name] = item.path
                continue
            key = _score_key(item.path)
            if (cache / f"{key}.mid").exists():
                ready[item.name] = cache / f"{key}.mid"
                counts["cached"] += 1
            elif (cache / f"{key}.failed").exists():
                failed[item.name] = (cache / f"{key}.failed").read_text()
            else:
                todo.append((item, key))
        paths = [item.path for item, _ in todo]
        for index, midi, error in _convert_all(paths, workers):
            item, key = todo[index]
            if midi is not None:
                with storage.atomic_path(cache / f"{key}.mid") as tmp:
                    tmp.write_bytes(midi)
                ready[item.name] = cache / f"{key}.mid"
                counts["converted"] += 1
            else:
                failed[item.name] = error or "unknown error"
                if error and not error.startswith("worker died"):
                    (cache / f"{key}.failed").write_text(error)
    return ready, failed, counts


def _score_key(path: Path) -> str:
    h = hashlib.sha256(path.read_bytes())
    h.update(path.suffix.lower().encode())  # music21 picks its reader by the suffix
    return h.hexdigest()[:32]


def score_to_midi(path: Path) -> bytes:
    """A music21-readable score (MusicXML, Kern, ABC) as Standard MIDI File bytes."""
    from music21 import converter
    from music21.midi import translate

    score = converter.parse(path, forceSource=True)
    return bytes(translate.music21ObjectToMidiFile(score).writestr())


def _convert_one(path: str) -> tuple[bytes | None, str | None]:
    try:
        return score_to_midi(Path(path)), None
    except Exception as exc:  # music21 raises many kinds; one bad score costs only itself
        text = str(exc).splitlines()[0] if str(exc) else ""
        return None, f"{type(exc).__name__}: {text}"[:200].rstrip(": ")


def _convert_all(paths: list[Path], workers: int) -> Iterator[tuple[int, bytes | None, str | None]]:
    """(index, MIDI bytes or None, error) per score, converted in a process pool."""
    if not paths:
        return
    workers = min(workers or os.cpu_count() or 1, len(paths))
    bar = tqdm(total=len(paths), unit="score", desc="converting to MIDI", dynamic_ncols=True)
    try:
        if workers <= 1:
            for index, path in enumerate(paths):
                yield index, *_convert_one(str(path))
                bar.update()
            return
        # spawn, not fork: the caller may hold threads (Prefect, a test server)
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        try:
            futures = {pool.submit(_convert_one, str(path)): i for i, path in enumerate(paths)}
            for future in as_completed(futures):
                try:
                    midi, error = future.result()
                except BrokenProcessPool:
                    midi, error = None, "worker died while converting it"
                yield futures[future], midi, error
                bar.update()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()


# --- archives ---------------------------------------------------------------------------------


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
            archive.check_name(name)
            info = tarfile.TarInfo(PurePosixPath(name).as_posix())
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
            count += 1
    return count


def _digests(path: Path) -> tuple[str, str]:
    md5, sha256 = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(storage.CHUNK):
            md5.update(block)
            sha256.update(block)
    return md5.hexdigest(), sha256.hexdigest()


def _max_bytes(d: Download) -> int:
    return int(d.max_member_mb * 1_000_000)


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _shown(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
