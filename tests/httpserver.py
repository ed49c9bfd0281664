"""A local HTTP file server for the download tests: 127.0.0.1 only, Range support, faults on demand.

It serves files from memory, counts the body bytes it sends, records every request's Range
header, and can answer with error statuses, ignore Range, drop a connection partway, or stream
a body without end (no Content-Length) until the client hangs up.
"""

from __future__ import annotations

import contextlib
import queue
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# An endless body is still bounded here, so a client that never stops cannot fill this disk or
# hang the tests: the server ends it after this many bytes or seconds.
ENDLESS_BYTES = 256 << 20
ENDLESS_S = 60.0


class ArchiveServer:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.bytes_sent = 0
        self.ranges: list[str | None] = []  # one entry per GET: its Range header, or None
        self.statuses: list[int] = []  # answered before serving, one per request (503, 500 ...)
        self.drop_at: int | None = None  # close the connection once the file's byte N is sent
        self.drops = 0  # how many responses still drop at drop_at
        self.ignore_range = False  # answer 200 with the whole file, as some servers do
        self.endless: set[str] = set()  # names answered with a body that never ends
        # How each endless body ended: "hung up" (by the client) or "bounded" (by the server).
        self.endless_ends: queue.Queue[str] = queue.Queue()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def reset(self) -> None:
        with self.lock:
            self.files.clear()
            self.bytes_sent = 0
            self.ranges.clear()
            self.statuses.clear()
            self.drop_at = None
            self.drops = 0
            self.ignore_range = False
            self.endless.clear()
            self.endless_ends = queue.Queue()

    def start(self) -> ArchiveServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@contextlib.contextmanager
def serving() -> Iterator[ArchiveServer]:
    server = ArchiveServer().start()
    try:
        yield server
    finally:
        server.stop()


def _handler(server: ArchiveServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet test output
            pass

        def _plain(self, status: int, extra: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            range_header = self.headers.get("Range")
            with server.lock:
                server.ranges.append(range_header)
                status = server.statuses.pop(0) if server.statuses else None
                data = server.files.get(self.path.lstrip("/"))
                drop = server.drop_at if server.drops > 0 and status is None and data else None
                if drop is not None:
                    server.drops -= 1
                ignore_range = server.ignore_range
                endless = self.path.lstrip("/") in server.endless
            if status is not None:
                return self._plain(status)
            if endless:
                return self._endless()
            if data is None:
                return self._plain(404)
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
            if match and not ignore_range:
                start = int(match.group(1))
                if start >= len(data):
                    return self._plain(416, {"Content-Range": f"bytes */{len(data)}"})
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Content-Type", "application/gzip")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            end = len(data) if drop is None or drop <= start else drop
            for offset in range(start, end, 8192):
                block = data[offset : min(offset + 8192, end)]
                self.wfile.write(block)
                with server.lock:
                    server.bytes_sent += len(block)
            if end < len(data):
                self.wfile.flush()
                self.close_connection = True  # the client sees the body end early
            return None

        def _endless(self) -> None:
            """200 with no Content-Length: the body ends only when the connection closes."""
            self.send_response(200)
            self.send_header("Content-Type", "application/gzip")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            block = bytes(range(256)) * 32
            sent, deadline = 0, time.monotonic() + ENDLESS_S
            while sent < ENDLESS_BYTES and time.monotonic() < deadline:
                try:
                    self.wfile.write(block)
                except OSError:
                    server.endless_ends.put("hung up")
                    return
                sent += len(block)
                with server.lock:
                    server.bytes_sent += len(block)
            server.endless_ends.put("bounded")

    return Handler
