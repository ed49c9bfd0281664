"""The rehearsal's Lakh-shaped archive (benchmarks/lakh_scale.py): lmd_full's layout, and the
shares of exact duplicates, near duplicates and corrupt files it says it holds."""

from __future__ import annotations

import hashlib
import re
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import lakh_scale  # noqa: E402

N = 100


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list[tuple[str, bytes]]]:
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lakh_scale, "CACHE", cache)
        path, truth = lakh_scale.build_archive(N, seed=3)
    assert path.parent == cache
    with tarfile.open(path, "r:gz") as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]  # type: ignore[union-attr]
    return path, truth, members


def test_layout_is_lmd_fulls(built: tuple[Path, dict, list[tuple[str, bytes]]]) -> None:
    _, _, members = built
    assert len(members) == N
    names = [name for name, _ in members]
    assert names == sorted(names)  # folder by folder, as lmd_full lists them
    for name, data in members:
        m = re.fullmatch(r"lmd_full/([0-9a-f])/([0-9a-f]{32})\.mid", name)
        assert m, name
        assert m[2] == hashlib.md5(data).hexdigest()  # the name is the md5 of the bytes
        assert m[1] == m[2][0]


def test_shares_are_as_stated(built: tuple[Path, dict, list[tuple[str, bytes]]]) -> None:
    _, truth, members = built
    counts = lakh_scale.shares(N)
    assert truth["counts"] == counts
    assert counts["exact"] == round(N * lakh_scale.SHARE_EXACT)
    assert counts["near"] == round(N * lakh_scale.SHARE_NEAR)
    assert counts["corrupt"] == round(N * lakh_scale.SHARE_CORRUPT)
    assert sum(counts.values()) == N
    names = [name for name, _ in members]
    assert len(names) - len(set(names)) == counts["exact"]  # copies: second members, same name
    versions = {v: k for f in truth["families"] for v, k in f["versions"].items()}
    assert len(versions) == counts["near"]
    assert sum(len(v) for v in truth["corrupt"].values()) == counts["corrupt"]


def test_near_duplicates_keep_the_notes_and_corrupt_files_fail(
    built: tuple[Path, dict, list[tuple[str, bytes]]],
) -> None:
    import symusic

    _, truth, members = built
    data = {name.rsplit("/", 1)[1][:-4]: b for name, b in members}
    for family in truth["families"]:
        original = symusic.Score.from_midi(data[family["original"]])
        for version, kind in family["versions"].items():
            assert data[version] != data[family["original"]]
            score = symusic.Score.from_midi(data[version])
            assert score.note_num() == original.note_num(), kind
    for ids in truth["corrupt"].values():
        for file_id in ids:
            with pytest.raises(RuntimeError):
                symusic.Score.from_midi(data[file_id])
