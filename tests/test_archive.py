"""Archives: byte-reproducible writes, digests, and safe streaming reads of what was written."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from pipelines import archive


def midi_like(seed: int, size: int = 2000) -> bytes:
    return b"MThd" + hashlib.sha256(str(seed).encode()).digest() * (size // 32)


def test_write_archive_is_byte_reproducible() -> None:
    midi = {"b/two.mid": midi_like(3), "a/one.mid": midi_like(4)}
    first, second = io.BytesIO(), io.BytesIO()
    archive.write_archive(first, sorted(midi.items()))
    archive.write_archive(second, sorted(midi.items()))
    assert first.getvalue() == second.getvalue()
    assert first.getvalue()[4:8] == b"\0\0\0\0"  # gzip header time
    with tarfile.open(fileobj=io.BytesIO(first.getvalue())) as tar:
        infos = tar.getmembers()
    assert [i.name for i in infos] == ["a/one.mid", "b/two.mid"]
    assert {(i.mtime, i.uid, i.gid, i.uname, i.mode) for i in infos} == {(0, 0, 0, "", 0o644)}


def test_what_is_written_reads_back_with_its_groups_and_digests(tmp_path: Path) -> None:
    members = [("bach/bwv1.mid", midi_like(1)), ("top.mid", midi_like(2)), ("notes.txt", b"x")]
    path = tmp_path / "c.tar.gz"
    with open(path, "wb") as out:
        assert archive.write_archive(out, members) == 3
    read = list(archive.iter_members(path, 1 << 20))
    assert [(m.name, m.data, m.group) for m in read] == [
        ("bach/bwv1.mid", midi_like(1), "bach"),
        ("top.mid", midi_like(2), ""),
    ]
    data = path.read_bytes()
    assert archive.digests(path) == (
        hashlib.md5(data).hexdigest(),
        hashlib.sha256(data).hexdigest(),
    )


@pytest.mark.parametrize("name", ["/etc/passwd.mid", "../up.mid", "a/../../up.mid"])
def test_an_unsafe_name_is_never_written(name: str) -> None:
    with pytest.raises(archive.UnsafeMember, match="has an unsafe path"):
        archive.write_archive(io.BytesIO(), [("ok.mid", b"MThd"), (name, b"MThd")])


def test_a_member_over_the_cap_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "big.tar.gz"
    with open(path, "wb") as out:
        archive.write_archive(out, [("big.mid", midi_like(5, 4000))])
    with pytest.raises(archive.UnsafeMember, match=r"'big\.mid' is 0\.0 MB, over the cap"):
        list(archive.iter_members(path, 1000))
