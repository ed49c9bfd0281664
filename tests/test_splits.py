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


# ---------------------------------------------------------------- shared runs (winnowing)

RUN = 24  # the default sequences.shared_run


def piece(voices: list[np.ndarray], *, step: float = 0.5, drums: int = 0) -> Notes:
    """A file of monophonic voices, one track each (sorted by track, start, pitch as the note
    tables are), and `drums` drum hits on a last track."""
    tracks = [*voices, *([np.full(drums, 36)] if drums else [])]
    cols: dict[str, list[np.ndarray]] = {"track": [], "start": [], "end": [], "pitch": []}
    for track, pitches in enumerate(tracks):
        start = np.arange(len(pitches), dtype=np.float32) * np.float32(step)
        cols["track"].append(np.full(len(pitches), track, np.int16))
        cols["start"].append(start)
        cols["end"].append(start + np.float32(step))
        cols["pitch"].append(np.asarray(pitches).astype(np.int8))
    notes = {k: np.concatenate(v) for k, v in cols.items()}
    notes["is_drum"] = notes["track"] == len(voices)
    return notes


def survey_of(notes: Notes, shared_run: int = RUN) -> FileSurvey:
    """What the sequences stage's pass 1 keeps of a file."""
    cuts = np.flatnonzero(np.diff(notes["track"])) + 1
    melodies = [
        pitches
        for pitches, drum in zip(
            np.split(notes["pitch"], cuts), np.split(notes["is_drum"], cuts), strict=True
        )
        if not drum[0]
    ]
    return FileSurvey(
        splits.content_hash(notes),
        splits.tune_fingerprint(notes),
        splits.shared_run_fingerprints(melodies, shared_run),
    )


def keys_of(files: dict[str, Notes], split_by: str = "tune", shared_run: int = RUN) -> dict:
    survey = {f: survey_of(n, shared_run) for f, n in files.items()}
    return splits.split_keys(sorted(files), {}, survey, split_by)


def voice(rng: np.random.Generator, n: int, low: int = 48, high: int = 84) -> np.ndarray:
    return rng.integers(low, high, n)


@pytest.mark.parametrize("shared_run", [8, 17, RUN, 40, 256])
def test_every_run_of_shared_run_notes_in_any_key_keeps_a_shared_fingerprint(
    shared_run: int,
) -> None:
    """Winnowing's guarantee: a run of shared_run notes, planted at random places in two long
    random lines, the second transposed, leaves both with an equal fingerprint, every time."""
    for seed in range(300):
        rng = np.random.default_rng(seed)
        run = voice(rng, shared_run, 50, 80)
        a, b = voice(rng, int(rng.integers(shared_run, 1500))), voice(rng, 700)
        i, j = int(rng.integers(0, len(a) - shared_run + 1)), int(rng.integers(0, 700 - shared_run))
        a[i : i + shared_run] = run
        b[j : j + shared_run] = run + int(rng.integers(-12, 13))
        kept_a = splits.shared_run_fingerprints([a], shared_run)
        kept_b = splits.shared_run_fingerprints([voice(rng, 50), b], shared_run)
        assert np.intersect1d(kept_a, kept_b).size > 0, seed
        # and two random lines share none
        other = splits.shared_run_fingerprints([voice(rng, 700)], shared_run)
        assert np.intersect1d(kept_a, other).size == 0, seed


def test_winnowing_keeps_few_fingerprints_each_once_and_none_for_a_short_track() -> None:
    rng = np.random.default_rng(3)
    line = voice(rng, 10_000)
    kept = splits.shared_run_fingerprints([line, line + 2], RUN)  # a doubled voice: once
    w = RUN - splits.KGRAM
    # a random order's minima: about 2 / (w + 1) of the k-grams (Schleimer et al.)
    assert len(kept) == pytest.approx(2 / (w + 1) * len(line), rel=0.1)
    assert np.all(np.diff(kept.astype(np.float64)) > 0)  # sorted, each once
    assert splits.shared_run_fingerprints([line[: RUN - 1]], RUN).size == 0
    assert splits.shared_run_fingerprints([line[:RUN]], RUN).size == 1


def test_low_information_is_few_distinct_intervals_or_a_short_repeating_figure() -> None:
    def by_definition(intervals: np.ndarray, k: int) -> list[bool]:
        grams = [intervals[s : s + k].tolist() for s in range(len(intervals) - k + 1)]
        return [
            len(set(g)) < splits.MIN_DISTINCT_INTERVALS
            or any(g[f:] == g[:-f] for f in range(1, splits.MAX_FIGURE + 1))
            for g in grams
        ]

    rng = np.random.default_rng(5)
    for k in (7, 12, 16):
        for _ in range(50):
            intervals = rng.choice([-2, 0, 2, 3, -5], 60, p=[0.3, 0.3, 0.2, 0.1, 0.1])
            intervals[5:25] = np.tile([4, 3, -7, 0], 5)  # an arpeggio figure, period 4
            intervals[30:50] = np.tile([2, -2, 5, -5, 1], 4)  # period 5: informative
            got = splits.low_information(intervals.astype(np.int8), k)
            assert got.tolist() == by_definition(intervals, k)
            assert got.any() and not got.all()


def test_a_transposed_reharmonisation_with_another_opening_lands_in_the_same_split() -> None:
    """bwv258 and bwv114.7: one soprano, in another key, under other voices."""
    rng = np.random.default_rng(11)
    melody = voice(rng, 30, 60, 76)
    soprano_a = np.r_[voice(rng, 10, 60, 76), melody]
    soprano_b = np.r_[voice(rng, 6, 60, 76), melody + 5]
    files = {
        "a": piece([soprano_a, voice(rng, 40, 52, 66), voice(rng, 40, 40, 55)]),
        "b": piece([soprano_b, voice(rng, 36, 52, 66), voice(rng, 36, 40, 55)], step=0.25),
        "c": piece([voice(rng, 40, 60, 76), voice(rng, 40, 52, 66)]),
    }
    assert survey_of(files["a"]).tune != survey_of(files["b"]).tune  # other openings
    for split_by in ("tune", "file", "group"):
        assert keys_of(files, split_by) == {"a": "a", "b": "a", "c": "c"}
    assert keys_of(files, shared_run=0) == {"a": "a", "b": "b", "c": "c"}  # the link off


def test_a_short_shared_run_repeated_notes_a_figure_and_drums_link_nothing() -> None:
    rng = np.random.default_rng(12)
    short = voice(rng, splits.KGRAM, 60, 76)  # KGRAM notes: fewer intervals than one k-gram
    repeated = np.full(60, 62)
    figure = np.tile([48, 52, 55, 52], 15)  # an Alberti bass: a 4-interval figure, 60 notes
    files = {
        "a": piece([np.r_[voice(rng, 30), short, voice(rng, 30)], repeated, figure], drums=200),
        "b": piece([np.r_[voice(rng, 20), short + 3, voice(rng, 40)], repeated + 7, figure + 2]),
    }
    assert keys_of(files, "file") == {"a": "a", "b": "b"}
    # the same drum part, and nothing else, is no link either; played on a pitched track it is
    kit = rng.integers(35, 60, 200)
    drummed = {f: piece([voice(rng, 50)], drums=200) for f in "cd"}
    for notes in drummed.values():
        notes["pitch"][notes["is_drum"]] = kit
    assert keys_of(drummed, "file") == {"c": "c", "d": "d"}
    pitched = {f: {**n, "is_drum": np.zeros_like(n["is_drum"])} for f, n in drummed.items()}
    assert keys_of(pitched, "file") == {"c": "c", "d": "c"}


def test_a_resaved_near_duplicate_is_grouped() -> None:
    """A Lakh-style re-save: timing nudged, a few notes of a track edited, a track dropped and
    a drum track added; its notes differ (content hash), its opening too, but it is the song."""
    rng = np.random.default_rng(13)
    song = [voice(rng, 300, 60, 84), voice(rng, 200, 45, 60), voice(rng, 150, 30, 48)]
    edited = [song[0].copy(), song[1].copy()]
    edited[0][[0, 1, 2, 90, 180, 270]] += 1  # the opening and a note every 90
    edited[1][::25] -= 2
    original = piece(song)
    resaved = piece(edited, drums=100)
    resaved["start"] = resaved["start"] + rng.uniform(0, 0.004, len(resaved["start"])).astype(
        np.float32
    )
    files = {"song": original, "song (2)": resaved, "other": piece([voice(rng, 300)])}
    a, b = survey_of(original), survey_of(resaved)
    assert a.content != b.content and a.tune != b.tune
    assert keys_of(files, "file") == {"song": "song", "song (2)": "song", "other": "other"}


def test_shared_run_pairs_link_each_file_to_the_first_holding_a_fingerprint() -> None:
    runs = {
        "a": [5, 9],
        "b": [1, 9, 2**63 + 7],  # fingerprints in two pairing slices
        "c": [9, 2**63 + 7],
        "d": [3],
        "e": [2**64 - 2],
        "f": [2**64 - 2],
    }
    survey = {f: FileSurvey(f, None, np.array(r, np.uint64)) for f, r in runs.items()}
    pairs = splits.shared_run_pairs(sorted(runs), survey)
    assert pairs == [("a", "b"), ("a", "c"), ("b", "c"), ("e", "f")]
    keys = splits.split_keys([*sorted(runs), "g"], {}, survey, "file", pairs)
    assert keys == {"a": "a", "b": "a", "c": "a", "d": "d", "e": "e", "f": "e", "g": "g"}
    assert splits.shared_run_pairs(["x"], {}) == []


def test_fingerprints_set_aside_only_the_winners_that_say_too_little() -> None:
    """shared_run_fingerprints looks at low_information for the k-grams that win a window only,
    and takes a file's tracks end to end; it keeps what the definition keeps: each track on its
    own, every low-information k-gram set aside first, the smallest hash of every window."""

    def by_definition(pitches: np.ndarray, run: int) -> np.ndarray:
        k = splits.kgram_length(run)
        if len(pitches) < run:
            return np.empty(0, np.uint64)
        intervals = np.diff(pitches.astype(np.int16)).astype(np.int8)
        hashes = splits.kgram_hashes(intervals, k)
        hashes[splits.low_information(intervals, k)] = splits.NO_FINGERPRINT
        kept = np.lib.stride_tricks.sliding_window_view(hashes, run - k).min(axis=1)
        return kept[kept != splits.NO_FINGERPRINT]

    rng = np.random.default_rng(0)
    found = 0
    for _ in range(600):
        run = int(rng.choice([8, 17, 24, 40]))
        tracks = []
        for _ in range(int(rng.integers(1, 5))):
            n = int(rng.integers(3, 300))
            steps = rng.choice(
                [-2, 0, 2, 3, -5, 7, -1], n, p=[0.25, 0.3, 0.15, 0.1, 0.1, 0.05, 0.05]
            )
            if rng.random() < 0.5:  # an arpeggio figure: low information
                steps[10:60] = np.tile([4, 3, -7, 0], 13)[: len(steps[10:60])]
            if rng.random() < 0.3:  # two intervals only: low information throughout
                steps[:] = rng.choice([0, 2], n)
            tracks.append(np.clip(60 + np.cumsum(steps), 0, 127))
        kept = splits.shared_run_fingerprints(tracks, run)
        want = np.unique(np.concatenate([by_definition(t, run) for t in tracks]))
        assert np.array_equal(kept, want)
        found += len(kept)
    assert found > 1000


def test_pairs_do_not_depend_on_how_many_slices_the_range_is_cut_in() -> None:
    """The sequences stage cuts the fingerprint range in more slices for more fingerprints
    (bounded memory): equal fingerprints share a slice, so the links are the same."""
    rng = np.random.default_rng(2)
    shared = rng.integers(0, 2**63, 40, dtype=np.int64).astype(np.uint64) * np.uint64(2)
    runs = [
        np.unique(np.r_[rng.integers(0, 2**63, 300).astype(np.uint64), rng.choice(shared, 3)])
        for _ in range(30)
    ]
    found = {}
    for slices in (splits.PAIRING_SLICES, 97):
        bounds = np.r_[np.uint64(0), splits.slice_bounds(slices)]
        pairs = []
        for lo, hi in zip(bounds, [*bounds[1:], None], strict=True):
            keep = [(r >= lo) & (r < hi) if hi is not None else r >= lo for r in runs]
            hashes = np.concatenate([r[k] for r, k in zip(runs, keep, strict=True)])
            owners = np.repeat(np.arange(len(runs)), [int(k.sum()) for k in keep])
            pairs.append(splits.slice_pairs(hashes, owners))
        found[slices] = splits.pairs_of(pairs, [f"f{i:02d}" for i in range(len(runs))])
    assert found[splits.PAIRING_SLICES] == found[97] and len(found[97]) > 10
    assert splits.slice_bounds(16).tolist() == [i << 60 for i in range(1, 16)]
