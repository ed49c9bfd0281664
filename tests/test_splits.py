"""Split keys: the skyline and tune fingerprint, content hashes, key joining and split_of."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines import splits
from pipelines.splits import FileSurvey, Notes


def melody_notes(pitches: np.ndarray | list[int], *, step: float = 1.0) -> Notes:
    """A monophonic line, one note per `step` seconds."""
    n = len(pitches)
    start = np.arange(n, dtype=np.float32) * step
    return {
        "start": start,
        "end": start + np.float32(step),
        "pitch": np.asarray(pitches).astype(np.int8),
        "is_drum": np.zeros(n, bool),
    }


def test_highest_voice_is_the_skyline_and_the_tune_ignores_key() -> None:
    # soprano 72 74 76 held over a moving alto; alto above nothing else
    notes = {
        "start": np.array([0, 0, 0.5, 1, 1, 2], np.float32),
        "end": np.array([1, 0.5, 1, 2, 2, 3], np.float32),
        "pitch": np.array([72, 60, 62, 74, 64, 76], np.int8),
        "is_drum": np.zeros(6, bool),
    }
    assert splits.highest_voice(notes) == [72, 74, 76]
    rng = np.random.default_rng(0)
    melody = rng.integers(60, 80, 40)
    one = {"start": np.arange(40, dtype=np.float32), "end": np.arange(1, 41, dtype=np.float32),
           "pitch": melody.astype(np.int8), "is_drum": np.zeros(40, bool)}  # fmt: skip
    other = {**one, "pitch": (melody + 5).astype(np.int8)}
    assert splits.tune_fingerprint(one) == splits.tune_fingerprint(other) is not None


def test_a_transposed_tune_lands_on_the_same_key_and_another_tune_on_another() -> None:
    rng = np.random.default_rng(1)
    tune = rng.integers(60, 72, 30)
    # the same tune a fourth up, slower, with a drum track under it
    transposed = melody_notes(tune + 5, step=0.5)
    drums = melody_notes([36] * 30, step=0.5)
    drums["is_drum"][:] = True
    with_drums = {k: np.concatenate([transposed[k], drums[k]]) for k in transposed}
    other_tune = tune.copy()
    other_tune[3] += 2  # one note of the opening changed
    survey = {
        "a": FileSurvey(
            splits.content_hash(melody_notes(tune)), splits.tune_fingerprint(melody_notes(tune))
        ),
        "b": FileSurvey(splits.content_hash(with_drums), splits.tune_fingerprint(with_drums)),
        "c": FileSurvey(
            splits.content_hash(melody_notes(other_tune)),
            splits.tune_fingerprint(melody_notes(other_tune)),
        ),
    }
    assert survey["a"].content != survey["b"].content  # other notes
    keys = splits.split_keys(["a", "b", "c"], {}, survey, "tune")
    assert keys == {"a": "a", "b": "a", "c": "c"}  # a group's key is its smallest file_id
    by_file = splits.split_keys(["a", "b", "c"], {}, survey, "file")
    assert by_file == {"a": "a", "b": "b", "c": "c"}


def test_a_line_too_short_has_no_tune() -> None:
    need = splits.TUNE_INTERVALS + 1  # pitches, for TUNE_INTERVALS intervals
    assert splits.tune_fingerprint(melody_notes(list(range(60, 60 + need - 1)))) is None
    assert splits.tune_fingerprint(melody_notes(list(range(60, 60 + need)))) is not None


def test_content_hash_is_the_notes_whatever_their_order() -> None:
    notes = melody_notes([60, 64, 67, 72])
    shuffled = {k: v[[2, 0, 3, 1]] for k, v in notes.items()}
    assert splits.content_hash(shuffled) == splits.content_hash(notes)
    louder = {**notes, "pitch": notes["pitch"] + np.int8(1)}
    assert splits.content_hash(louder) != splits.content_hash(notes)
    # onsets are compared to the millisecond: float noise below it is the same file
    nudged = {**notes, "start": notes["start"] + np.float32(1e-5)}
    assert splits.content_hash(nudged) == splits.content_hash(notes)


def test_same_notes_share_a_key_whatever_split_by_and_groups_join_under_their_name() -> None:
    same = FileSurvey("n1", "t1")
    survey = {"f1": same, "f2": same, "f3": FileSurvey("n3", "t1"), "f4": FileSurvey("n4", None)}
    files = ["f1", "f2", "f3", "f4"]
    groups = {"f1": "", "f2": "", "f3": "bach", "f4": "bach"}
    assert splits.split_keys(files, groups, survey, "file") == {
        "f1": "f1", "f2": "f1", "f3": "f3", "f4": "f4",
    }  # fmt: skip
    assert splits.split_keys(files, groups, survey, "tune") == {
        "f1": "f1", "f2": "f1", "f3": "f1", "f4": "f4",
    }  # fmt: skip
    assert splits.split_keys(files, groups, survey, "group") == {
        "f1": "f1", "f2": "f1", "f3": "group:bach", "f4": "group:bach",
    }  # fmt: skip
    # a file the survey never saw keeps a key of its own
    assert splits.split_keys(["f9"], {}, {}, "tune") == {"f9": "f9"}


def test_union_find_roots_each_group_at_its_smallest_label() -> None:
    links = splits.UnionFind()
    links.union("c", "d")
    links.union("d", "b")
    links.union("x", "y")
    assert {links.find(label) for label in "bcd"} == {"b"}
    assert links.find("y") == "x" and links.find("z") == "z"


def test_split_of_is_deterministic_and_respects_the_ratios() -> None:
    ratios = {"train": 0.7, "val": 0.2, "test": 0.1}
    keys = [f"key{i}" for i in range(20_000)]
    chosen = [splits.split_of(k, 42, ratios) for k in keys]
    assert chosen == [splits.split_of(k, 42, ratios) for k in keys]
    for name, share in ratios.items():
        assert chosen.count(name) / len(keys) == pytest.approx(share, abs=0.015)
    reseeded = [splits.split_of(k, 24, ratios) for k in keys]
    assert reseeded != chosen
    assert splits.split_of("key0", 42, {"train": 1.0, "val": 0.0, "test": 0.0}) == "train"
    no_val = {"train": 0.5, "val": 0.0, "test": 0.5}
    assert "val" not in {splits.split_of(k, 42, no_val) for k in keys[:2000]}
