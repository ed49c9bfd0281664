"""The download stage: HTTP with resume and verification, safe archives, bach and path sources.

Every network test talks to a server these tests start on 127.0.0.1; none contacts Lakh.
"""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
import socket
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
from conftest import another_hash_seed, make_project, run_cli
from httpserver import ENDLESS_S, ArchiveServer, serving

from pipelines import archive, config, download
from pipelines.errors import LakhflowError, ParamsError


def random_midi(seed: int, notes: int = 400) -> bytes:
    """A real Standard MIDI File of random notes, written by pretty_midi."""
    rng = np.random.default_rng(seed)
    pm = pretty_midi.PrettyMIDI(initial_tempo=float(rng.integers(60, 180)))
    piano = pretty_midi.Instrument(program=int(rng.integers(0, 128)))
    start = 0.0
    for _ in range(notes):
        start += float(rng.choice([0.0, 0.125, 0.25, 0.5]))
        length = float(rng.choice([0.125, 0.25, 0.5, 1.0]))
        pitch, velocity = int(rng.integers(30, 100)), int(rng.integers(20, 127))
        piano.notes.append(pretty_midi.Note(velocity, pitch, start, start + length))
    pm.instruments.append(piano)
    out = io.BytesIO()
    pm.write(out)
    return out.getvalue()


def tar_gz(entries: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    """A .tar.gz of (name, bytes) files and raw TarInfo entries (folders, links), in order."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tar.addfile(entry)
            else:
                info = tarfile.TarInfo(entry[0])
                info.size = len(entry[1])
                tar.addfile(info, io.BytesIO(entry[1]))
    return out.getvalue()


def members(path: Path) -> dict[str, bytes]:
    return {m.name: m.data for m in archive.iter_members(path, 1 << 30)}


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture(scope="session")
def lakh_files() -> dict[str, bytes]:
    """Real MIDI files in Lakh's layout: `lmd_full/<first hex char of md5>/<md5>.mid`."""
    files = {}
    for seed in range(48):
        data = random_midi(seed)
        files[f"lmd_full/{md5(data)[0]}/{md5(data)}.mid"] = data
    return dict(sorted(files.items()))


@pytest.fixture(scope="session")
def lakh_archive(lakh_files: dict[str, bytes]) -> bytes:
    folders = []
    for name in ["lmd_full", *sorted({n.rsplit("/", 1)[0] for n in lakh_files})]:
        info = tarfile.TarInfo(name)
        info.type = tarfile.DIRTYPE
        folders.append(info)
    return tar_gz([*folders, *lakh_files.items()])


@pytest.fixture(scope="session")
def http_server() -> Iterator[ArchiveServer]:
    with serving() as server:
        yield server


@pytest.fixture
def server(http_server: ArchiveServer, lakh_archive: bytes) -> ArchiveServer:
    http_server.reset()
    http_server.files["lmd_full.tar.gz"] = lakh_archive
    return http_server


@pytest.fixture(autouse=True)
def params_file(tmp_path: Path) -> None:
    """The tests here use tmp_path as the project root: a params.yaml there, of the built-in
    defaults (a root without one is refused)."""
    (tmp_path / "params.yaml").write_text("download: {}\n")


def lakh_cfg(root: Path, server: ArchiveServer, *extra: str) -> config.Config:
    archive_md5 = md5(server.files["lmd_full.tar.gz"])
    return config.load(
        root,
        [
            "download.source=lmd_full",
            f"download.url={server.url('lmd_full.tar.gz')}",
            f"download.md5={archive_md5}",
            *extra,
        ],
    )


def test_full_download_is_verified_and_published(
    tmp_path: Path, server: ArchiveServer, lakh_archive: bytes, lakh_files: dict[str, bytes]
) -> None:
    metrics = download.run(lakh_cfg(tmp_path, server))
    published = tmp_path / "data/raw/lmd_full.tar.gz"
    assert published.read_bytes() == lakh_archive
    assert metrics["md5"] == md5(lakh_archive)
    assert metrics["files"] == len(lakh_files)
    assert metrics["bytes"] == len(lakh_archive)
    assert members(published) == lakh_files
    assert server.ranges == [None]


def test_dropped_connection_resumes_on_the_next_run(
    tmp_path: Path, server: ArchiveServer, lakh_archive: bytes
) -> None:
    server.drop_at, server.drops = len(lakh_archive) // 2, 1
    cfg = lakh_cfg(tmp_path, server, "download.retries=0")
    with pytest.raises(LakhflowError) as info:
        download.run(cfg)
    assert "next run resumes" in str(info.value)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "data/raw/lmd_full.tar.gz").exists()
    partial = list((tmp_path / ".lakhflow/work/download/lmd_full").glob("*/lmd_full.tar.gz"))
    assert [p.stat().st_size for p in partial] == [len(lakh_archive) // 2]

    metrics = download.run(cfg)
    assert metrics["md5"] == md5(lakh_archive)
    assert metrics["resumed_from"] == len(lakh_archive) // 2
    assert server.ranges == [None, f"bytes={len(lakh_archive) // 2}-"]
    assert server.bytes_sent < 1.5 * len(lakh_archive)
    assert (tmp_path / "data/raw/lmd_full.tar.gz").read_bytes() == lakh_archive


def test_transient_errors_are_retried_within_a_run(
    tmp_path: Path, server: ArchiveServer, lakh_archive: bytes
) -> None:
    server.statuses = [503]
    server.drop_at, server.drops = len(lakh_archive) // 3, 1
    metrics = download.run(lakh_cfg(tmp_path, server, "download.retries=2"))
    assert metrics["md5"] == md5(lakh_archive)
    assert server.ranges == [None, None, f"bytes={len(lakh_archive) // 3}-"]
    assert server.bytes_sent == len(lakh_archive)


def test_a_server_that_ignores_range_restarts_the_download(
    tmp_path: Path, server: ArchiveServer, lakh_archive: bytes
) -> None:
    server.drop_at, server.drops = len(lakh_archive) // 2, 1
    server.ignore_range = True
    metrics = download.run(lakh_cfg(tmp_path, server, "download.retries=1"))
    assert metrics["md5"] == md5(lakh_archive)
    assert len(server.ranges) == 2 and server.ranges[1] is not None


def test_wrong_checksum_is_refused_and_keeps_the_published_archive(
    tmp_path: Path, server: ArchiveServer, lakh_archive: bytes
) -> None:
    published = tmp_path / "data/raw/lmd_full.tar.gz"
    published.parent.mkdir(parents=True)
    published.write_bytes(b"the archive the user already had")
    wrong = "f" * 32
    result = run_cli(
        [
            "lakhflow", "download", "-S", "download.source=lmd_full",
            "-S", f"download.url={server.url('lmd_full.tar.gz')}", "-S", f"download.md5={wrong}",
        ],
        cwd=tmp_path,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, result.stderr
    assert f"expected md5 {wrong}" in errors[0]
    assert f"actual {md5(lakh_archive)}" in errors[0]
    assert "Traceback" not in result.stderr
    assert published.read_bytes() == b"the archive the user already had"


def test_404_fails_at_once(tmp_path: Path, server: ArchiveServer) -> None:
    cfg = config.load(
        tmp_path, ["download.source=url", f"download.url={server.url('missing.tar.gz')}"]
    )
    with pytest.raises(LakhflowError, match="HTTP 404") as info:
        download.run(cfg)
    assert "\n" not in str(info.value)
    assert len(server.ranges) == 1  # no retries


def work_files(root: Path, source: str) -> list[Path]:
    """What a download left in its work folder to resume from."""
    return [p for p in (root / ".lakhflow/work/download" / source).rglob("*") if p.is_file()]


def test_a_server_streaming_without_end_stops_at_download_max_mb(
    tmp_path: Path, server: ArchiveServer
) -> None:
    server.endless.add("endless.tar.gz")
    url = server.url("endless.tar.gz")
    result = run_cli(
        ["lakhflow", "download", "-S", "download.source=url", "-S", f"download.url={url}",
         "-S", "download.max_mb=1"],
        cwd=tmp_path,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert errors[0].startswith(f"lakhflow download: error: download of {url} stopped")
    assert "1000000 bytes (download.max_mb=1)" in errors[0]
    assert "raise download.max_mb" in errors[0]
    # The client stopped the stream, not the server's own bounds.
    assert server.endless_ends.get(timeout=ENDLESS_S) == "hung up"
    assert not (tmp_path / "data/raw/url.tar.gz").exists()
    assert work_files(tmp_path, "url") == []  # nothing left to resume


def test_a_lakh_source_stops_at_its_published_size(
    tmp_path: Path, server: ArchiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(download.LAKH, "clean_midi", (300_000, None))  # 234 MB is too long here
    server.endless.add("clean_midi.tar.gz")
    cfg = config.load(
        tmp_path, ["download.source=clean_midi", f"download.url={server.url('clean_midi.tar.gz')}"]
    )
    with pytest.raises(LakhflowError) as info:
        download.run(cfg)
    message = str(info.value)
    assert "more than the published 300000 bytes" in message and "\n" not in message
    assert "download.md5" in message
    assert server.endless_ends.get(timeout=ENDLESS_S) == "hung up"
    assert work_files(tmp_path, "clean_midi") == []


def test_a_file_over_download_max_mb_by_its_content_length_is_refused_at_once(
    tmp_path: Path, server: ArchiveServer, lakh_archive: bytes
) -> None:
    server.files["big.tar.gz"] = lakh_archive * 3
    cap_mb = len(lakh_archive) / 1e6
    cfg = config.load(
        tmp_path,
        ["download.source=url", f"download.url={server.url('big.tar.gz')}",
         f"download.max_mb={cap_mb}"],
    )  # fmt: skip
    with pytest.raises(LakhflowError) as info:
        download.run(cfg)
    assert f"is {3 * len(lakh_archive)} bytes, over the cap of download.max_mb=" in str(info.value)
    assert work_files(tmp_path, "url") == []
    # Under the cap, the same server and file come through whole.
    server.files["big.tar.gz"] = lakh_archive
    download.run(cfg)
    assert (tmp_path / "data/raw/url.tar.gz").read_bytes() == lakh_archive


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_download_max_mb_must_be_a_positive_finite_number(tmp_path: Path, value: str) -> None:
    assert config.load(tmp_path, ["download.max_mb=0.5"]).download.max_mb == 0.5
    with pytest.raises(ParamsError, match=r"download\.max_mb") as info:
        config.load(tmp_path, [f"download.max_mb={value}"])
    assert "\n" not in str(info.value)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_no_network_for_lakh_says_so_and_suggests_offline_sources(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/lmd_full.tar.gz"
    cfg = config.load(tmp_path, ["download.source=lmd_full", f"download.url={url}"])
    with pytest.raises(LakhflowError) as info:
        download.run(cfg)
    message = str(info.value)
    assert "no network" in message
    assert "download.source=bach" in message and "download.source=path" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        (("lmd_full/../evil.mid", random_midi(1, 10)), "lmd_full/../evil.mid"),
        ("symlink", "lmd_full/0/link.mid"),
        (("lmd_full/0/huge.mid", random_midi(2, 3000)), "lmd_full/0/huge.mid"),
    ],
    ids=["dotdot", "symlink", "over-cap"],
)
def test_unsafe_archives_are_refused_by_member_name(
    tmp_path: Path,
    server: ArchiveServer,
    lakh_files: dict[str, bytes],
    entry: tuple[str, bytes] | str,
    needle: str,
) -> None:
    if entry == "symlink":
        link = tarfile.TarInfo("lmd_full/0/link.mid")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        bad: tarfile.TarInfo | tuple[str, bytes] = link
    else:
        assert isinstance(entry, tuple)
        bad = entry
    server.files["bad.tar.gz"] = tar_gz([*list(lakh_files.items())[:3], bad])
    cfg = config.load(
        tmp_path,
        [
            "download.source=url",
            f"download.url={server.url('bad.tar.gz')}",
            "download.max_member_mb=0.01",
        ],
    )
    with pytest.raises(archive.UnsafeMember) as info:
        download.run(cfg)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "data/raw/url.tar.gz").exists()


def test_limit_repacks_the_first_files_and_reuses_the_verified_download(
    tmp_path: Path, server: ArchiveServer, lakh_files: dict[str, bytes]
) -> None:
    cfg = lakh_cfg(tmp_path, server, "download.limit=3")
    first = download.run(cfg)
    assert first["files"] == 3
    got = members(tmp_path / "data/raw/lmd_full.tar.gz")
    assert got == dict(list(lakh_files.items())[:3])
    (tmp_path / "data/raw/lmd_full.tar.gz").unlink()  # as DVC does before it runs a stage
    again = download.run(cfg)
    assert again["md5"] == first["md5"]
    assert len(server.ranges) == 1  # the verified download in the work folder was reused


def test_named_sources_take_lakh_facts_and_overrides(tmp_path: Path) -> None:
    lakh = download.remote_for(config.load(tmp_path, ["download.source=lmd_full"]).download)
    assert lakh.url == "http://hog.ee.columbia.edu/craffel/lmd/lmd_full.tar.gz"
    assert (lakh.size, lakh.md5) == (1_768_163_879, "2536ce3fd2cede53ddaa264f731859ab")
    mirror = ["download.source=lmd_matched", "download.url=http://mirror.example/m.tar.gz"]
    same_file = download.remote_for(config.load(tmp_path, mirror).download)
    assert (same_file.size, same_file.md5) == (1_407_072_670, "fb80d01c22020295bb3eeef31f1aa63a")
    other = download.remote_for(
        config.load(tmp_path, [*mirror, f"download.md5={'a' * 32}"]).download
    )
    assert (other.url, other.size, other.md5) == ("http://mirror.example/m.tar.gz", None, "a" * 32)


def test_bach_limit_5_gives_5_midi_files_pretty_midi_reads(tmp_path: Path) -> None:
    cfg = config.load(tmp_path, ["download.limit=5", "download.workers=1"])
    metrics = download.run(cfg)
    got = members(tmp_path / "data/raw/bach.tar.gz")
    assert len(got) == 5 and metrics["files"] == 5 and metrics["converted"] == 5
    assert all(name.startswith("bach/") and name.endswith(".mid") for name in got)
    for data in got.values():
        assert pretty_midi.PrettyMIDI(io.BytesIO(data)).instruments
    again = download.run(cfg)  # from the per-score cache, byte for byte
    assert again["cached"] == 5 and again["converted"] == 0
    assert again["md5"] == metrics["md5"]


# Two small folk collections of music21's corpus: tunes of multi-tune ABC files, quick to convert.
FOLK = ["download.source=music21", "download.composers=[nottingham-dataset, essenFolksong]"]


def test_music21_composers_become_top_folders_the_same_bytes_in_every_process(
    tmp_path: Path,
) -> None:
    archives = []
    for run, seed in enumerate(("0", another_hash_seed())):
        root = tmp_path / f"run{run}"
        root.mkdir()
        (root / "params.yaml").write_text("download: {}\n")
        sets = [x for o in [*FOLK, "download.limit=2", "download.workers=1"] for x in ("-S", o)]
        result = run_cli(["lakhflow", "download", *sets], cwd=root, PYTHONHASHSEED=seed)
        assert result.returncode == 0, result.stderr
        assert "nottingham-dataset 2, essenFolksong 2" in result.stderr
        archives.append((root / "data/raw/music21.tar.gz").read_bytes())
    assert archives[0] == archives[1]
    got = members(tmp_path / "run0/data/raw/music21.tar.gz")
    assert sorted(got) == [
        "essenFolksong/altdeu10-001.mid", "essenFolksong/altdeu10-002.mid",
        "nottingham-dataset/reelsa-c-1.mid", "nottingham-dataset/reelsa-c-2.mid",
    ]  # fmt: skip
    for data in got.values():
        assert pretty_midi.PrettyMIDI(io.BytesIO(data)).instruments[0].notes


def test_a_corpus_work_music21_cannot_convert_is_skipped_with_its_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The fourth of ryansMammoth's reels has repeats music21 (10.5) cannot expand: it is
    counted and named with its reason, and the fifth takes its place under download.limit."""
    sets = ["download.composers=[ryansMammoth]", "download.limit=4", "download.workers=1"]
    cfg = config.load(tmp_path, ["download.source=music21", *sets])
    with caplog.at_level(logging.INFO, logger="pipelines.download"):
        metrics = download.run(cfg)
    got = members(tmp_path / "data/raw/music21.tar.gz")
    assert len(got) == 4 and "ryansMammoth/AbithaMugginsFavoriteReel.mid" not in got
    assert metrics["failed"] == 1 and metrics["composers"] == {"ryansMammoth": 4}
    (summary,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("download:")]
    assert (
        "1 skipped, failing to convert: ryansMammoth/AbithaMugginsFavoriteReel.mid "
        "(ExpanderException: cannot expand Stream: badly formed repeats"
    ) in summary


def test_an_unknown_composer_is_one_line_listing_the_corpus(tmp_path: Path) -> None:
    sets = ["-S", "download.source=music21", "-S", "download.composers=[bach, mozzart]"]
    result = run_cli(["lakhflow", "download", *sets], cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(
        "lakhflow download: error: download.composers: 'mozzart' not in music21's corpus, "
        "which has airdsAirs, bach, beach,"
    )
    assert "essenFolksong" in line and "palestrina" in line
    assert not (tmp_path / "data/raw/music21.tar.gz").exists()


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("[]", "at least 1 item"),
        ("[bach, bach]", "names a composer twice"),
        ("[../x]", "folder name"),
    ],
)
def test_download_composers_must_be_distinct_folder_names(
    tmp_path: Path, value: str, says: str
) -> None:
    with pytest.raises(ParamsError, match=says):
        config.load(tmp_path, ["download.source=music21", f"download.composers={value}"])


ABC_TUNE = """X:1
T:Test tune
M:4/4
L:1/8
K:G
GABc dedB|dedB dedB|c2ec B2dB|c2A2 A2BA|
"""


def test_path_folder_converts_scores_and_keeps_subfolders(tmp_path: Path) -> None:
    import music21.corpus

    folder = tmp_path / "collection"
    for sub in ("Chopin", "Bach", "Folk"):
        (folder / sub).mkdir(parents=True)
    (folder / "Chopin/piece1.mid").write_bytes(random_midi(5, 50))
    krn = next(p for p in music21.corpus.getComposer("bach") if Path(p).name == "bwv281.krn")
    shutil.copy(krn, folder / "Bach/chorale.krn")
    (folder / "Folk/tune.abc").write_text(ABC_TUNE)
    (folder / "Folk/tune.mid").write_bytes(random_midi(6, 50))  # its name is taken: tune.abc.mid
    (folder / "Folk/broken.abc").write_text("this is not ABC at all")
    (folder / "notes.txt").write_text("not music")
    cfg = config.load(tmp_path, ["download.source=path", "download.path=collection"])
    metrics = download.run(cfg)
    got = members(tmp_path / "data/raw/path.tar.gz")
    assert sorted(got) == [
        "Bach/chorale.mid", "Chopin/piece1.mid", "Folk/tune.abc.mid", "Folk/tune.mid",
    ]  # fmt: skip
    assert got["Chopin/piece1.mid"] == (folder / "Chopin/piece1.mid").read_bytes()
    for data in got.values():
        assert pretty_midi.PrettyMIDI(io.BytesIO(data)).instruments
    assert metrics["failed"] == 1  # broken.abc is skipped and counted, not fatal


def test_path_archive_is_copied_and_verified(tmp_path: Path, lakh_archive: bytes) -> None:
    (tmp_path / "lmd.tar.gz").write_bytes(lakh_archive)
    good = ["download.source=path", "download.path=lmd.tar.gz", f"download.md5={md5(lakh_archive)}"]
    download.run(config.load(tmp_path, good))
    assert (tmp_path / "data/raw/path.tar.gz").read_bytes() == lakh_archive
    with pytest.raises(LakhflowError, match="checksum mismatch"):
        download.run(config.load(tmp_path, [*good[:2], f"download.md5={'e' * 32}"]))


def test_path_folder_never_follows_links_out_of_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = b"root:$6$not-a-real-hash:19000:0:99999:7:::\n" * 4
    outside = tmp_path / "outside"
    (outside / "private").mkdir(parents=True)
    (outside / "leak.mid").write_bytes(secret)
    (outside / "private/also.mid").write_bytes(secret)
    folder = tmp_path / "collection"
    (folder / "Chopin").mkdir(parents=True)
    good = random_midi(7, 50)
    (folder / "Chopin/piece1.mid").write_bytes(good)
    (folder / "leak.mid").symlink_to(outside / "leak.mid")  # a file outside
    (folder / "private").symlink_to(outside / "private")  # a folder outside
    (folder / "favourite.mid").symlink_to("Chopin/piece1.mid")  # inside: the same file, once
    (folder / "Chopin/again").symlink_to("..")  # inside, and a loop
    (folder / "ping.mid").symlink_to("pong.mid")  # links to each other: neither is a file
    (folder / "pong.mid").symlink_to("ping.mid")
    (folder / "gone.mid").symlink_to("deleted.mid")  # a broken link
    cfg = config.load(tmp_path, ["download.source=path", "download.path=collection"])
    with caplog.at_level(logging.INFO, logger="pipelines.download"):
        metrics = download.run(cfg)
    published = tmp_path / "data/raw/path.tar.gz"
    with tarfile.open(published) as tar:
        data = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    assert data == {"Chopin/piece1.mid": good}
    assert not any(secret[:16] in d for d in data.values())
    assert metrics["files"] == 1 and metrics["links_outside"] == 2
    (summary,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("download:")]
    assert "2 links leading out of download.path skipped" in summary


def test_missing_path_is_one_line(tmp_path: Path) -> None:
    cfg = config.load(tmp_path, ["download.source=path", "download.path=nowhere"])
    with pytest.raises(LakhflowError, match=r"download\.path 'nowhere' does not exist") as info:
        download.run(cfg)
    assert "\n" not in str(info.value)


# --- DVC: the stage as `dvc repro` runs it, a local remote, experiments ----------------------


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git + DVC project with `download.limit: 3` whose download stage has run once."""
    dest = make_project(tmp_path_factory.mktemp("dvc") / "project", {"download": {"limit": 3}})
    result = run_cli(["dvc", "repro", "download"], cwd=dest)
    assert result.returncode == 0, result.stdout + result.stderr
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "download"], cwd=dest, check=True)
    return dest


@pytest.mark.slow
def test_dvc_repro_twice_reproduces_nothing(dvc_project: Path) -> None:
    archive_md5 = md5((dvc_project / "data/raw/bach.tar.gz").read_bytes())
    result = run_cli(["dvc", "repro", "download"], cwd=dvc_project)
    assert result.returncode == 0, result.stderr
    assert "didn't change" in result.stdout and "Running stage" not in result.stdout
    assert md5((dvc_project / "data/raw/bach.tar.gz").read_bytes()) == archive_md5
    assert len(members(dvc_project / "data/raw/bach.tar.gz")) == 3


@pytest.mark.slow
def test_dvc_forced_repro_is_byte_identical(dvc_project: Path) -> None:
    sums = []
    for _ in range(2):
        result = run_cli(["dvc", "repro", "-f", "download"], cwd=dvc_project)
        assert result.returncode == 0, result.stderr
        assert "Running stage 'download'" in result.stdout
        sums.append(md5((dvc_project / "data/raw/bach.tar.gz").read_bytes()))
    assert sums[0] == sums[1]
    status = run_cli(["git", "status", "--porcelain", "dvc.lock"], cwd=dvc_project)
    assert status.stdout.strip() == ""  # dvc.lock unchanged: the same archive as committed


@pytest.mark.slow
def test_dvc_push_and_pull_through_a_local_remote(dvc_project: Path, tmp_path: Path) -> None:
    raw = dvc_project / "data/raw/bach.tar.gz"
    archive_md5 = md5(raw.read_bytes())
    remote = tmp_path / "remote"
    for args in (["remote", "add", "-f", "-d", "local", str(remote)], ["push", "download"]):
        result = run_cli(["dvc", *args], cwd=dvc_project)
        assert result.returncode == 0, result.stderr
    shutil.rmtree(dvc_project / "data/raw")
    shutil.rmtree(dvc_project / ".dvc/cache")
    result = run_cli(["dvc", "pull", "download"], cwd=dvc_project)
    assert result.returncode == 0, result.stderr
    assert md5(raw.read_bytes()) == archive_md5


@pytest.mark.slow
def test_dvc_exp_run_with_a_smaller_limit(dvc_project: Path) -> None:
    result = run_cli(
        ["dvc", "exp", "run", "download", "-n", "two-files", "-S", "download.limit=2"],
        cwd=dvc_project,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(members(dvc_project / "data/raw/bach.tar.gz")) == 2
    shown = run_cli(["dvc", "exp", "show", "--no-pager", "--csv"], cwd=dvc_project)
    assert shown.returncode == 0, shown.stderr
    assert "two-files" in shown.stdout
    assert any("two-files" in line and ",2," in line for line in shown.stdout.splitlines())
