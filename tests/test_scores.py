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


# Three tunes under one file header (L:1/4 applies to all); the second does not parse.
THREE_TUNES = """% a collection of three tunes
L:1/4

X:1
T:Scale
M:4/4
K:C
C D E F | G A B c |

X:2
T:Broken
M:4/4
K:C
C D E F | G A B c | [[[[

X:3
T:Down
M:4/4
K:C
c B A G | F E D C |
"""


def test_abc_tunes_split_at_x_lines_each_with_the_file_header() -> None:
    tunes = scores.abc_tunes(THREE_TUNES)
    assert len(tunes) == 3
    header = "% a collection of three tunes\nL:1/4\n\n"
    assert all(tune.startswith(header + "X:") for tune in tunes)
    assert "T:Broken" in tunes[1] and "T:Down" not in tunes[1]
    assert scores.abc_tunes(ABC) == [ABC]
    assert scores.abc_tunes("T:No reference number\nK:C\nC D E F|\n") == [
        "T:No reference number\nK:C\nC D E F|\n"
    ]


def test_each_tune_of_an_abc_collection_converts_alone_and_a_bad_one_says_why(
    tmp_path: Path,
) -> None:
    import io

    import pretty_midi

    (tmp_path / "three.abc").write_text(THREE_TUNES)
    items = [scores.Item(f"folk/three-{k + 1}.mid", tmp_path / "three.abc", k) for k in range(3)]
    cache = tmp_path / "cache"
    cache.mkdir()
    ready, failed, counts = scores.gather(items, cache, workers=1, limit=0, max_bytes=1 << 20)
    assert sorted(ready) == ["folk/three-1.mid", "folk/three-3.mid"]
    assert failed == {"folk/three-2.mid": "ABCHandlerException: Bad chord indicator: [[[["}
    assert counts == {"converted": 2, "cached": 0}
    pitches = {
        name: [
            n.pitch
            for n in pretty_midi.PrettyMIDI(io.BytesIO(path.read_bytes())).instruments[0].notes
        ]
        for name, path in ready.items()
    }
    assert pitches["folk/three-1.mid"] == [60, 62, 64, 65, 67, 69, 71, 72]
    assert pitches["folk/three-3.mid"] == [72, 71, 69, 67, 65, 64, 62, 60]
    # each tune is cached by its own text: the file's other tunes changing leaves it cached
    (tmp_path / "three.abc").write_text(THREE_TUNES.replace("c B A G", "c c A G"))
    ready, failed, counts = scores.gather(items, cache, workers=1, limit=0, max_bytes=1 << 20)
    assert counts == {"converted": 1, "cached": 1} and len(failed) == 1


def test_composer_items_name_works_by_composer_and_tune() -> None:
    assert {"bach", "essenFolksong", "monteverdi", "palestrina", "trecento"} <= set(
        scores.corpus_composers()
    )
    folk = scores.composer_items("nottingham-dataset")  # one ABC file of two tunes
    assert [(i.name, i.path.name, i.tune) for i in folk] == [
        ("nottingham-dataset/reelsa-c-1.mid", "reelsa-c.abc", 0),
        ("nottingham-dataset/reelsa-c-2.mid", "reelsa-c.abc", 1),
    ]
    essen = [i.name for i in scores.composer_items("essenFolksong")]
    assert essen[:2] == ["essenFolksong/altdeu10-001.mid", "essenFolksong/altdeu10-002.mid"]
    beethoven = [i.name for i in scores.composer_items("beethoven")]  # works in opus folders
    assert "beethoven/opus18no1-movement1.mid" in beethoven
    assert all(name.count("/") == 1 for name in beethoven)  # the group is the composer
    monteverdi = scores.composer_items("monteverdi")  # .mxl works; .rntxt analyses left out
    assert monteverdi and all(i.path.suffix == ".mxl" and i.tune is None for i in monteverdi)


def test_bach_items_are_the_works_they_were_before_composers() -> None:
    """The demo's works, named as before music21 composers were added: the names and corpus
    files of all 410 hash to what the bach-only code gave (measured before the change)."""
    import hashlib

    import music21.corpus

    root = Path(music21.corpus.__file__).parent
    items = scores.bach_items()
    listing = "\n".join(f"{i.name} {i.path.relative_to(root).as_posix()}" for i in items)
    assert len(items) == 410 and items == scores.composer_items("bach")
    assert hashlib.sha256(listing.encode()).hexdigest() == (
        "19b528b009f9486d948d05be664e48fba562fa81cb843b56ca18f166e6267e7e"
    )
