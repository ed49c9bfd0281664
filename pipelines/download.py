"""The download stage: fetch or build the MIDI collection that `download.source` names.

Writes `data/raw/<source>.tar.gz`, published only after its size, checksum and members verify.
Partial downloads and scores already converted to MIDI wait in `.lakhflow/work/download/`.
HTTP transfer is in `transfer`, score conversion in `scores`, archive reading and writing in
`archive`; this module picks the source and verifies and publishes what it gives.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import shutil
import tarfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipelines import archive, storage
from pipelines.config import Config, Download
from pipelines.errors import LakhflowError, ParamsError
from pipelines.scores import (
    Item,
    bach_items,
    composer_items,
    corpus_composers,
    folder_items,
    gather,
    walk_folder,
)
from pipelines.transfer import Partial, Remote, fetch

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


@dataclass
class Published:
    """What the stage wrote: the archive, its MIDI file count and checksum, and notes."""

    archive: Path
    files: int
    md5: str
    sha256: str
    notes: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


def run(cfg: Config) -> dict[str, Any]:
    started = time.perf_counter()
    d = cfg.download
    dest = cfg.paths.raw_archive(d.source)
    if d.source == "bach":
        published = _from_bach(cfg, dest)
    elif d.source == "music21":
        published = _from_music21(cfg, dest)
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
            files = archive.write_archive(out, chosen)
        notes.append(f"the first {files} of {verified['midi_files']} MIDI files (download.limit)")
        md5, sha256 = archive.digests(dest)
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


# --- bach, music21 and path: collections built here, converted to MIDI ----------------------


def _from_bach(cfg: Config, dest: Path) -> Published:
    return _build(cfg, [bach_items()], dest)


def _from_music21(cfg: Config, dest: Path) -> Published:
    """The works of `download.composers` from music21's corpus, `download.limit` of each."""
    composers = cfg.download.composers
    known = corpus_composers()
    unknown = [name for name in composers if name not in known]
    if unknown:
        raise ParamsError(
            f"download.composers: {', '.join(map(repr, unknown))} not in music21's corpus, "
            f"which has {', '.join(known)}"
        )
    published = _build(cfg, [composer_items(name) for name in composers], dest)
    counts = dict.fromkeys(composers, 0)
    with tarfile.open(dest) as tar:
        for name in tar.getnames():
            counts[name.split("/", 1)[0]] += 1
    published.notes.insert(0, ", ".join(f"{name} {n}" for name, n in counts.items()))
    published.metrics["composers"] = counts
    return published


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
        published = _build(cfg, [items], dest)
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
    md5, sha256 = archive.digests(source)
    _verify(str(source), None, d.md5, d.sha256, source.stat().st_size, md5, sha256)
    max_bytes = _max_bytes(d)
    midi = scan_members(source, max_bytes, label=str(source))
    verified = {"size": source.stat().st_size, "md5": md5, "sha256": sha256, "midi_files": midi}
    notes = [] if d.md5 or d.sha256 else [_unpinned(md5)]
    return _publish_archive(source, dest, d.limit, max_bytes, verified, notes, {}, link=False)


def _build(cfg: Config, groups: list[list[Item]], dest: Path) -> Published:
    """Convert the scores of each group of items (cached per score), `download.limit` of each
    group at most, then write one sorted archive."""
    import music21

    d = cfg.download
    max_bytes = _max_bytes(d)
    cache = storage.work_dir(
        cfg.paths.work, "download/scores", {"music21": music21.__version__, "midi": 1}
    )
    ready: dict[str, Path] = {}
    failed: dict[str, str] = {}
    counts = {"converted": 0, "cached": 0}
    for items in groups:
        done, lost, tally = gather(
            items, cache, workers=d.workers, limit=d.limit, max_bytes=max_bytes
        )
        ready.update(done)
        failed.update(lost)
        counts = {key: counts[key] + tally[key] for key in counts}
    if not ready:
        raise LakhflowError(f"no file could be converted to MIDI ({len(failed)} failed)")
    with storage.atomic_path(dest) as tmp, open(tmp, "wb") as out:
        files = archive.write_archive(
            out, ((name, path.read_bytes()) for name, path in sorted(ready.items()))
        )
    md5, sha256 = archive.digests(dest)
    notes = []
    if failed:
        shown = ", ".join(f"{n} ({e})" for n, e in itertools.islice(sorted(failed.items()), 3))
        more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
        notes.append(f"{len(failed)} skipped, failing to convert: {shown}{more}")
    if counts["converted"] or counts["cached"]:
        notes.append(f"{counts['converted']} scores converted, {counts['cached']} from the cache")
    metrics = {"failed": len(failed), **counts}
    return Published(dest, files, md5, sha256, notes, metrics)


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
