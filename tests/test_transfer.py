"""HTTP transfer with resume: the Partial's bytes and checksums, Content-Range, fetch's outcomes.

The server is the tests' own on 127.0.0.1 (httpserver.py); the whole download stage around
fetch is tested in test_download.py.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from httpserver import ArchiveServer, serving

from pipelines.errors import LakhflowError
from pipelines.transfer import Partial, Remote, _content_range, fetch

BODY = bytes(range(256)) * 2000  # 512 kB


@pytest.fixture(scope="module")
def server() -> Iterator[ArchiveServer]:
    with serving() as running:
        yield running


@pytest.fixture
def body_server(server: ArchiveServer) -> ArchiveServer:
    server.reset()
    server.files["body.bin"] = BODY
    return server


def remote(url: str, size: int | None = len(BODY), *, lakh: bool = False) -> Remote:
    return Remote(url, size, None, None, lakh=lakh, max_bytes=1 << 30)


def test_a_partial_resumes_its_checksums_from_the_bytes_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "x.tar.gz"
    path.write_bytes(BODY[:1000])
    partial = Partial(path)
    assert partial.size == 1000
    with open(path, "ab") as handle:
        partial.append(handle, BODY[1000:3000])
    assert path.read_bytes() == BODY[:3000]
    assert partial.hex() == (
        hashlib.md5(BODY[:3000]).hexdigest(),
        hashlib.sha256(BODY[:3000]).hexdigest(),
    )
    partial.restart()
    assert (partial.size, path.read_bytes()) == (0, b"")
    assert partial.hex()[0] == hashlib.md5(b"").hexdigest()
    partial.discard()
    assert not path.exists() and partial.size == 0


@pytest.mark.parametrize(
    ("header", "parsed"),
    [
        ("bytes 100-199/200", (100, 200)),
        ("bytes */200", (-1, 200)),
        ("bytes 0-99/*", (0, None)),
        (None, (-1, None)),
        ("items 1-2/3", (-1, None)),
    ],
)
def test_content_range(header: str | None, parsed: tuple[int, int | None]) -> None:
    assert _content_range(header) == parsed


def test_fetch_resumes_where_the_partial_stops(tmp_path: Path, body_server: ArchiveServer) -> None:
    path = tmp_path / "body.bin"
    path.write_bytes(BODY[:100_000])
    partial = Partial(path)
    fetch(remote(body_server.url("body.bin")), partial, retries=0, timeout_s=10, label="t")
    assert path.read_bytes() == BODY
    assert body_server.ranges == ["bytes=100000-"]
    assert body_server.bytes_sent == len(BODY) - 100_000
    assert partial.hex()[1] == hashlib.sha256(BODY).hexdigest()


def test_fetch_retries_a_server_error_then_gives_up_keeping_the_bytes(
    tmp_path: Path, body_server: ArchiveServer
) -> None:
    body_server.statuses = [503, 503, 503]
    url = body_server.url("body.bin")
    with pytest.raises(LakhflowError) as caught:
        fetch(remote(url), Partial(tmp_path / "b"), retries=1, timeout_s=10, label="t")
    assert str(caught.value) == (
        f"download of {url} failed after 1 retries: HTTP 503 Service Unavailable; "
        "0 bytes are kept and the next run resumes from there"
    )
    body_server.statuses = [503]
    fetch(remote(url), Partial(tmp_path / "c"), retries=1, timeout_s=10, label="t")
    assert (tmp_path / "c").read_bytes() == BODY


def test_a_refused_connection_fails_at_once_with_the_offline_hint(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/lmd_full.tar.gz"
    with pytest.raises(LakhflowError, match="connection refused") as caught:
        fetch(remote(url, lakh=True), Partial(tmp_path / "r"), retries=5, timeout_s=5, label="t")
    assert str(caught.value).startswith(f"cannot connect to 127.0.0.1:{port} (connection refused)")
    assert "download.source=bach" in str(caught.value)


def test_a_file_over_the_published_size_is_refused_and_deleted(
    tmp_path: Path, body_server: ArchiveServer
) -> None:
    url = body_server.url("body.bin")
    with pytest.raises(LakhflowError, match=f"is {len(BODY)} bytes, expected 1000"):
        fetch(remote(url, 1000), Partial(tmp_path / "s"), retries=0, timeout_s=10, label="t")
    capped = Remote(url, None, None, None, lakh=False, max_bytes=1000)
    with pytest.raises(LakhflowError, match=r"over the cap of download\.max_mb=0\.001"):
        fetch(capped, Partial(tmp_path / "m"), retries=0, timeout_s=10, label="t")
    assert not (tmp_path / "m").exists()
