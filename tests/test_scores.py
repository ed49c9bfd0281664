"""Scores: walking a folder without leaving it, naming its items, converting scores with a cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines import scores
from pipelines.archive import UnsafeMember

ABC = """X:1
T:Scale
M:4/4
L:1/4
K:C
C D E F | G A B c |
"""


def test_a_folder_walk_stays_inside_and_takes_each_file_once(tmp_path: Path) -> None:
    folder = tmp_path / "collection"
    (folder / "Chopin").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    (folder / "Chopin" / "piece1.mid").write_bytes(b"MThd")
    (folder / "Chopin" / "piece1.krn").write_text("**kern")
    (folder / "tune.abc").write_text(ABC)
    (folder / "readme.txt").write_text("not music")
    (folder / ".hidden" / "secret.mid").write_bytes(b"MThd")
    (tmp_path / "outside.mid").write_bytes(b"MThd")
    (folder / "leak.mid").symlink_to(tmp_path / "outside.mid")
    (folder / "again").symlink_to(folder / "Chopin")  # inside: followed, nothing taken twice
    (folder / "Chopin" / "loop").symlink_to(folder)
    found = scores.walk_folder(folder)
    assert sorted(found.files) == ["Chopin/piece1.krn", "Chopin/piece1.mid", "tune.abc"]
    assert found.links_outside == 1
    items = scores.folder_items(found.files)
    assert [(i.name, i.is_score) for i in items] == [
        ("Chopin/piece1.krn.mid", True),  # the MIDI file keeps the plain name
        ("Chopin/piece1.mid", False),
        ("tune.mid", True),
    ]


def test_gather_converts_caches_and_skips_what_fails(tmp_path: Path) -> None:
    (tmp_path / "tune.abc").write_text(ABC)
    (tmp_path / "broken.krn").write_text("this is not kern\n")
    (tmp_path / "piece.mid").write_bytes(b"MThd already MIDI")
    items = [
        scores.Item("broken.mid", tmp_path / "broken.krn"),
        scores.Item("piece.mid", tmp_path / "piece.mid"),
        scores.Item("tune.mid", tmp_path / "tune.abc"),
    ]
    cache = tmp_path / "cache"
    cache.mkdir()
    ready, failed, counts = scores.gather(items, cache, workers=1, limit=0, max_bytes=1 << 20)
    assert sorted(ready) == ["piece.mid", "tune.mid"]
    assert ready["piece.mid"] == tmp_path / "piece.mid"
    assert ready["tune.mid"].read_bytes().startswith(b"MThd")
    assert list(failed) == ["broken.mid"] and failed["broken.mid"]
    assert counts == {"converted": 1, "cached": 0}
    again = scores.gather(items, cache, workers=1, limit=0, max_bytes=1 << 20)
    assert again == (ready, failed, {"converted": 0, "cached": 1})  # failure cached too
    first_two = scores.gather(items, cache, workers=1, limit=2, max_bytes=1 << 20)[0]
    assert sorted(first_two) == ["piece.mid", "tune.mid"]  # the failure does not count
    with pytest.raises(UnsafeMember, match=r"broken\.krn is 0\.0 MB, over the cap of 1e-05 MB"):
        scores.gather(items, cache, workers=1, limit=0, max_bytes=10)
