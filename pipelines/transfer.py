"""HTTP transfer of one file with resume: Range requests, retries with backoff, hard caps.

`fetch(remote, partial, ...)` brings a `Partial` (the bytes so far, in the work folder, with
their running checksums) to the whole file. Refused or unreachable hosts, HTTP 4xx and a server
sending more than the file may have fail at once, each as one line; anything else is retried.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

import requests
import urllib3
from tqdm import tqdm

from pipelines import storage
from pipelines.errors import LakhflowError

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


class _Transient(Exception):
    """A failure worth retrying: a reset connection, a 5xx, a timeout, a body cut short."""


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
