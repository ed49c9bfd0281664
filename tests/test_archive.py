"""archive: which member names and kinds are refused (by name, with the reason), which names are
MIDI, the members a real .tar.gz, .tar or folder yields, in order, with their bytes; and
byte-reproducible writes with their digests."""

from __future__ import annotations

import gzip
import hashlib
import io
import random
import re
import tarfile
from pathlib import Path

import pytest

from pipelines import archive
from pipelines.archive import Member, UnsafeMember
from pipelines.errors import LakhflowError

MB = 1_000_000


def tar_info(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    return info


def write_tar(path: Path, members: list[tuple[str, bytes | None]], *, gz: bool = True) -> Path:
    """A real archive holding `members` in the order given; None makes a folder entry."""
    with tarfile.open(path, "w:gz" if gz else "w") as tar:
        for name, data in members:
            if data is None:
                tar.addfile(tar_info(name, tarfile.DIRTYPE))
            else:
                tar.addfile(tar_info(name, size=len(data)), io.BytesIO(data))
    return path


@pytest.mark.parametrize("name", ["../evil.mid", "bach/../../evil.mid", "/etc/passwd", "\\x.mid"])
def test_check_name_refuses_absolute_and_parent_paths(name: str) -> None:
    message = f"archive member {name!r} has an unsafe path (absolute or '..')"
    with pytest.raises(UnsafeMember, match=f"^{re.escape(message)}$"):
        archive.check_name(name)


@pytest.mark.parametrize("name", ["bach/bwv1.mid", "./bach/bwv1.mid", "a..b.mid", "x/..y/z.mid"])
def test_check_name_accepts_relative_names(name: str) -> None:
    assert archive.check_name(name) is None


def test_check_member_reads_files_skips_folders_and_caps_size() -> None:
    assert archive.check_member(tar_info("bach/a.mid", size=MB), MB) is True  # at the cap
    assert archive.check_member(tar_info("bach", tarfile.DIRTYPE), MB) is False
    with pytest.raises(UnsafeMember) as over:
        archive.check_member(tar_info("bach/big.mid", size=2_500_000), MB)
    assert str(over.value) == (
        "archive member 'bach/big.mid' is 2.5 MB, over the cap of 1 MB (download.max_member_mb)"
    )
    with pytest.raises(UnsafeMember, match=r"'bach/one\.mid' is 1\.0 MB, over the cap of 1 MB"):
        archive.check_member(tar_info("bach/one.mid", size=MB + 1), MB)


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_check_member_refuses_links(kind: bytes) -> None:
    with pytest.raises(UnsafeMember) as refused:
        archive.check_member(tar_info("bach/link.mid", kind), MB)
    assert (
        str(refused.value) == "archive member 'bach/link.mid' is a link; links are never followed"
    )


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_check_member_refuses_devices_and_special_files(kind: bytes) -> None:
    with pytest.raises(UnsafeMember) as refused:
        archive.check_member(tar_info("dev/null.mid", kind), MB)
    assert str(refused.value) == "archive member 'dev/null.mid' is a device or special file"


def test_check_member_checks_the_name_before_the_kind() -> None:
    with pytest.raises(UnsafeMember, match=r"'\.\./link' has an unsafe path"):
        archive.check_member(tar_info("../link", tarfile.SYMTYPE), MB)
    assert issubclass(UnsafeMember, LakhflowError)  # the CLI prints it as one line


@pytest.mark.parametrize(
    ("name", "midi"),
    [
        ("bach/a.mid", True),
        ("A.MID", True),
        ("b.midi", True),
        ("c.kar", True),
        ("d.Kar", True),
        ("e.txt", False),
        ("mid", False),
        ("a.mid.gz", False),
        ("a.midx", False),
        ("bach.mid/readme", False),
    ],
)
def test_is_midi_goes_by_suffix(name: str, midi: bool) -> None:
    assert archive.is_midi(name) is midi


@pytest.mark.parametrize(
    ("name", "group"),
    [
        ("bach/bwv1.mid", "bach"),
        ("lmd/A/B/TRABC.mid", "B"),
        ("song.mid", ""),
        ("./bach/bwv1.mid", "bach"),
        ("bach//bwv1.mid", "bach"),
    ],
)
def test_member_group_is_the_folder_holding_it(name: str, group: str) -> None:
    assert Member(name, b"").group == group


def test_iter_members_over_a_tar_gz_in_stored_order(tmp_path: Path) -> None:
    source = write_tar(
        tmp_path / "songs.tar.gz",
        [
            ("z", None),
            ("z/b.mid", b"zb"),
            ("a/a.MID", b"aa"),
            ("notes.txt", b"text"),
            ("./c.kar", b"karaoke"),
            ("d.midi", b""),
        ],
    )
    got = [(m.name, m.data) for m in archive.iter_members(source, MB)]
    assert got == [("z/b.mid", b"zb"), ("a/a.MID", b"aa"), ("c.kar", b"karaoke"), ("d.midi", b"")]
    texts = archive.iter_members(source, MB, suffixes=(".txt",))
    assert [(m.name, m.data) for m in texts] == [("notes.txt", b"text")]


def test_iter_members_over_an_uncompressed_tar(tmp_path: Path) -> None:
    source = write_tar(tmp_path / "songs.tar", [("b.mid", b"1"), ("a.mid", b"2")], gz=False)
    assert [(m.name, m.data) for m in archive.iter_members(source, MB)] == [
        ("b.mid", b"1"),
        ("a.mid", b"2"),
    ]


def test_iter_members_stops_at_the_first_unsafe_member(tmp_path: Path) -> None:
    source = write_tar(
        tmp_path / "evil.tar.gz", [("ok.mid", b"1"), ("../evil.mid", b"2"), ("late.mid", b"3")]
    )
    seen: list[str] = []
    with pytest.raises(UnsafeMember, match=r"^archive member '\.\./evil\.mid' has an unsafe path"):
        for member in archive.iter_members(source, MB):
            seen.append(member.name)
    assert seen == ["ok.mid"]  # streamed: what came before was read, nothing after


def test_iter_members_refuses_a_link_and_a_member_over_the_cap(tmp_path: Path) -> None:
    linked = tmp_path / "linked.tar.gz"
    with tarfile.open(linked, "w:gz") as tar:
        link = tar_info("bach/link.mid", tarfile.SYMTYPE)
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(UnsafeMember, match=r"'bach/link\.mid' is a link"):
        list(archive.iter_members(linked, MB))

    data = b"x" * 1_600_000
    big = write_tar(tmp_path / "big.tar.gz", [("small.mid", b"1"), ("big.mid", data)])
    with pytest.raises(UnsafeMember, match=r"'big\.mid' is 1\.6 MB, over the cap of 1 MB"):
        list(archive.iter_members(big, MB))
    assert [m.data for m in archive.iter_members(big, len(data))] == [b"1", data]


@pytest.mark.parametrize(
    "content",
    [b"not an archive at all", gzip.compress(b"gzip, but no tar inside" * 40)[:60], b""],
    ids=["garbage", "truncated-gzip", "empty"],
)
def test_iter_members_refuses_what_is_not_an_archive(tmp_path: Path, content: bytes) -> None:
    source = tmp_path / "bad.tar.gz"
    source.write_bytes(content)
    with pytest.raises(
        LakhflowError, match=f"^{re.escape(str(source))} is not a readable .tar.gz archive "
    ) as bad:
        list(archive.iter_members(source, MB))
    assert type(bad.value) is LakhflowError


def test_iter_members_refuses_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.tar.gz"
    with pytest.raises(
        LakhflowError, match=f"^{re.escape(str(missing))} is not a readable .tar.gz archive "
    ):
        list(archive.iter_members(missing, MB))


def test_iter_members_over_a_folder_in_sorted_order(tmp_path: Path) -> None:
    folder = tmp_path / "songs"
    (folder / "b").mkdir(parents=True)
    (folder / "a" / "deep").mkdir(parents=True)
    (folder / "b" / "x.mid").write_bytes(b"bx")
    (folder / "a" / "deep" / "y.MIDI").write_bytes(b"ay")
    (folder / "a" / "z.kar").write_bytes(b"az")
    (folder / "readme.txt").write_bytes(b"not music")
    (folder / "song.mid").write_bytes(b"top")
    (folder / "a" / "link.mid").symlink_to(folder / "song.mid")  # never followed
    got = [(m.name, m.data) for m in archive.iter_members(folder, MB)]
    assert got == [
        ("a/deep/y.MIDI", b"ay"),
        ("a/z.kar", b"az"),
        ("b/x.mid", b"bx"),
        ("song.mid", b"top"),
    ]
    assert [m.group for m in archive.iter_members(folder, MB)] == ["deep", "a", "b", ""]


def test_iter_members_over_a_folder_refuses_a_file_over_the_cap(tmp_path: Path) -> None:
    (tmp_path / "bach").mkdir()
    (tmp_path / "bach" / "big.mid").write_bytes(b"x" * 11)
    with pytest.raises(UnsafeMember) as over:
        list(archive.iter_members(tmp_path, 10))
    assert str(over.value) == "bach/big.mid is over the size cap"
    assert [m.name for m in archive.iter_members(tmp_path, 11)] == ["bach/big.mid"]


def test_iter_members_of_a_cut_off_download_reads_up_to_the_cut(tmp_path: Path) -> None:
    noise = random.Random(0).randbytes(400_000)  # incompressible: the cut lands inside b.mid
    whole = write_tar(tmp_path / "whole.tar.gz", [("a.mid", noise[:2000]), ("b.mid", noise)])
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(whole.read_bytes()[:300_000])
    seen: list[str] = []
    with pytest.raises(LakhflowError, match=r"cut\.tar\.gz is not a readable \.tar\.gz archive"):
        for member in archive.iter_members(cut, MB):
            seen.append(member.name)
    assert seen == ["a.mid"]


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
