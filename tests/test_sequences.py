"""The sequences stage: track selection, parts, merged scores, leak-free splits, chunks, bins,
byte-identical shards."""

from __future__ import annotations

import itertools
import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import (
    SEQUENCES_TEST_PARAMS,
    another_hash_seed,
    folder_digests,
    make_project,
    run_cli,
)

from pipelines import config, dataset, instruments, sequences, splits, streams
from pipelines.errors import LakhflowError, ParamsError

T = SEQUENCES_TEST_PARAMS["seq_length"]


def file_id_of(path: Path) -> str:
    import hashlib

    return hashlib.md5(path.read_bytes()).hexdigest()


def splits_table(project: Path) -> pd.DataFrame:
    return pd.read_parquet(project / "data" / "shards" / "splits.parquet")


def manifest_of(project: Path) -> dict:
    return json.loads((project / "data" / "shards" / "manifest.json").read_text())


def note_table(project: Path) -> pd.DataFrame:
    return pd.concat(
        pd.read_parquet(p) for p in sorted((project / "data" / "notes").glob("notes-*.parquet"))
    )


def expected_parts(notes: pd.DataFrame, max_rank: int = 4) -> dict[tuple[str, int], int]:
    """Each pitched track's part, computed here independently: (GM family, rank by median pitch
    among the file's tracks of that family, highest first), ranks past max_rank the last."""
    tracks = (
        notes[~notes["is_drum"]]
        .groupby(["file_id", "track"], as_index=False)
        .agg(program=("program", "first"), median=("pitch", "median"))
    )
    tracks["family"] = tracks["program"] // 8
    tracks = tracks.sort_values(["file_id", "family", "median", "track"],
                                ascending=[True, True, False, True])  # fmt: skip
    rank = tracks.groupby(["file_id", "family"]).cumcount().clip(upper=max_rank - 1)
    part = tracks["family"] * max_rank + rank
    return dict(zip(zip(tracks["file_id"], tracks["track"], strict=True), part, strict=True))


def expected_scores(project: Path) -> dict[str, dict]:
    """Each file's pitched tracks merged, computed here independently: by onset, then part, then
    pitch from high to low, then track."""
    notes = note_table(project)
    parts = expected_parts(notes)
    notes = notes[~notes["is_drum"]].copy()
    notes["part"] = [parts[k] for k in zip(notes["file_id"], notes["track"], strict=True)]
    notes["minus_pitch"] = -notes["pitch"].astype(int)
    scores = {}
    for file_id, rows in notes.groupby("file_id", sort=True):
        if len(rows) < max(SEQUENCES_TEST_PARAMS["min_notes"], T + 1):
            continue
        rows = rows.sort_values(["start_beat", "part", "minus_pitch", "track"], kind="stable")
        start = rows["start_beat"].to_numpy(np.float64)
        scores[file_id] = {
            "pitch": rows["pitch"].to_numpy(np.int32),
            "step": np.clip(np.r_[0.0, np.diff(start)], 0, 4.0).astype(np.float32),
            "duration": np.clip(rows["end_beat"] - start, 0, 8.0).to_numpy(np.float32),
            "velocity": rows["velocity"].to_numpy(np.int32),
            "part": rows["part"].to_numpy(np.int32),
            "program": int(rows["program"].value_counts().sort_index().idxmax()),
        }
    return scores


def expected_tracks(project: Path, time_unit: str = "beats") -> dict[tuple[str, int], dict]:
    """The selected tracks' features, computed here from the note tables, independently."""
    notes = note_table(project)
    parts = expected_parts(notes)
    min_notes = max(SEQUENCES_TEST_PARAMS["min_notes"], T + 1)
    tracks = {}
    for (file_id, track), rows in notes.groupby(["file_id", "track"], sort=True):
        if rows["is_drum"].iloc[0] or len(rows) < min_notes:
            continue
        rows = rows.sort_values(["start", "pitch"], kind="stable")
        col = "start_beat" if time_unit == "beats" else "start"
        start = rows[col].to_numpy(np.float64)
        end = rows["end_beat" if time_unit == "beats" else "end"].to_numpy(np.float64)
        tracks[(file_id, int(track))] = {
            "pitch": rows["pitch"].to_numpy(np.int32),
            "step": np.clip(np.r_[0.0, np.diff(start)], 0, 4.0).astype(np.float32),
            "duration": np.clip(end - start, 0, 8.0).astype(np.float32),
            "velocity": rows["velocity"].to_numpy(np.int32),
            "program": int(rows["program"].iloc[0]),
            "part": parts[(file_id, int(track))],
        }
    return tracks


# ---------------------------------------------------------------- pure parts


def test_program_selection_by_number_range_family_and_name() -> None:
    chosen = instruments.select_programs(["piano", "40-42", 73, "Church Organ", "synth lead"])
    assert chosen == frozenset([*range(8), 40, 41, 42, 73, 19, *range(80, 88)])
    assert instruments.select_programs([]) is None
    assert instruments.program_number("acoustic_grand_piano") == 0
    assert instruments.program_number("Violin") == 40
    assert instruments.program_number("73") == 73
    for bad in (128, -1, "kazoo", "9-3"):
        with pytest.raises(ParamsError):
            instruments.select_programs([bad])
    with pytest.raises(ParamsError, match="unknown General MIDI instrument"):
        instruments.program_number("kazoo")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sequences.programs=[200]", "outside 0-127"),
        ("sequences.programs=[kazoo]", "unknown program or family 'kazoo'"),
        ("sequences.seq_length=1", "sequences.seq_length"),
        ("sequences.split={train: 0.8, val: 0.3, test: 0.1}", "sum to 1"),
        ("sequences.shared_run=5", "sequences.shared_run: .*0 .*or at least 8 notes"),
        ("sequences.shared_run=300", "sequences.shared_run: Input should be less than"),
        ("sequences.mode=chords", "sequences.mode: 'chords' is not allowed; .*'score' or 'track'"),
        ("sequences.max_part_rank=0", "sequences.max_part_rank: Input should be greater"),
    ],
)
def test_bad_params_are_one_line_errors(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(ParamsError, match=message) as caught:
        config.load(make_project(tmp_path / "p"), [override])
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("n", [T + 1, 39, 40, 41, 63, 64, 65, 200])
@pytest.mark.parametrize("stride", [1, 3])
def test_chunks_overlap_so_no_window_is_lost(n: int, stride: int) -> None:
    chunk = SEQUENCES_TEST_PARAMS["chunk_notes"]
    starts = sequences.chunk_starts(n, chunk, T)
    covered = [s + w for s in starts for w in range(min(n, s + chunk) - s - T)]
    assert covered == list(range(n - T))  # every window start once, in one chunk
    assert all(min(n, s + chunk) - s >= T + 1 for s in starts)
    total = sum(sequences.windows_in(min(n, s + chunk) - s, T, 1) for s in starts)
    assert total == n - T
    assert sequences.windows_in(n, T, stride) == (n - T - 1) // stride + 1


def four_voices() -> splits.Notes:
    """A hand-made chorale bar: four piano tracks (bass, soprano, tenor, alto, in track order) in
    chords on every beat, the soprano's and the bass's passing notes between, the alto above the
    soprano on beat 3, a bass octave on beat 2, and a drum track."""
    voices = {  # track: (program, drum, [(beat, pitch, length)])
        0: (0, False, [(0, 48, 1), (1, 50, 0.5), (1.5, 52, 0.5), (2, 43, 1), (2, 55, 1),
                       (3, 48, 1)]),
        1: (0, False, [(0, 72, 0.5), (0.5, 74, 0.5), (1, 76, 1), (2, 74, 0.5), (2.5, 72, 0.5),
                       (3, 72, 1)]),
        2: (0, False, [(0, 55, 1), (1, 59, 1), (2, 59, 1), (3, 55, 1)]),
        3: (0, False, [(0, 64, 1), (1, 67, 1), (2, 67, 1), (3, 74, 1)]),
        4: (0, True, [(b / 2, 36, 0.25) for b in range(8)]),
    }  # fmt: skip
    rows = [(t, q, d, b, pitch, 60 + t, length)
            for t, (q, d, notes) in voices.items() for b, pitch, length in notes]  # fmt: skip
    rows.sort(key=lambda r: (r[0], r[3], r[4]))  # the note tables' order: track, start, pitch
    columns = (np.array(c) for c in zip(*rows, strict=True))
    track, program, drum, beat, pitch, velocity, length = columns
    return {
        "track": track.astype(np.int16),
        "program": program.astype(np.int8),
        "is_drum": drum.astype(bool),
        "pitch": pitch.astype(np.int8),
        "velocity": velocity.astype(np.int8),
        "start": (beat / 2).astype(np.float32),
        "end": ((beat + length) / 2).astype(np.float32),
        "start_beat": beat.astype(np.float32),
        "end_beat": (beat + length).astype(np.float32),
    }


SOPRANO, ALTO, TENOR, BASS = 0, 1, 2, 3  # the piano parts, by median pitch


def test_a_four_voice_score_is_one_stream_by_onset_part_and_pitch_from_high_to_low() -> None:
    p = config.Sequences(mode="score", seq_length=4, min_notes=4)
    notes = four_voices()
    selection = sequences.Selection.from_params(p)
    (score,) = sequences.file_streams(notes, selection, p)
    features = streams.stream_features(notes, score, p)
    assert score.track == -1
    chords = [  # (onset, part, pitch) in stream order
        (0, SOPRANO, 72), (0, ALTO, 64), (0, TENOR, 55), (0, BASS, 48),
        (0.5, SOPRANO, 74),
        (1, SOPRANO, 76), (1, ALTO, 67), (1, TENOR, 59), (1, BASS, 50),
        (1.5, BASS, 52),
        (2, SOPRANO, 74), (2, ALTO, 67), (2, TENOR, 59), (2, BASS, 55), (2, BASS, 43),
        (2.5, SOPRANO, 72),
        (3, SOPRANO, 72), (3, ALTO, 74), (3, TENOR, 55), (3, BASS, 48),  # by part, not pitch
    ]  # fmt: skip
    onset = np.array([c[0] for c in chords], dtype=np.float32)
    assert features["pitch"].tolist() == [c[2] for c in chords]
    assert features["part"].tolist() == [c[1] for c in chords]
    np.testing.assert_array_equal(features["step"], np.diff(onset, prepend=0.0))
    # the first note, and every note after the first at its onset
    assert np.count_nonzero(features["step"] == 0) == 1 + 3 + 3 + 4 + 3
    track_of = {SOPRANO: 1, ALTO: 3, TENOR: 2, BASS: 0}
    assert features["velocity"].tolist() == [60 + track_of[c[1]] for c in chords]
    assert instruments.part_name(BASS, p.max_part_rank) == "piano-4"
    assert selection.kept["sequences.include_drums"] == 4  # the drums left out


def test_track_mode_gives_each_track_its_part() -> None:
    p = config.Sequences(mode="track", seq_length=3, min_notes=4)
    notes = four_voices()
    tracks = sequences.file_streams(notes, sequences.Selection.from_params(p), p)
    assert [(s.track, set(s.part.tolist())) for s in tracks] == [
        (0, {BASS}),
        (1, {SOPRANO}),
        (2, {TENOR}),
        (3, {ALTO}),
    ]
    for s in tracks:
        features = streams.stream_features(notes, s, p)
        assert np.all(np.diff(notes["start_beat"][s.rows]) >= 0)
        assert features["part"].tolist() == s.part.tolist()


def test_parts_rank_within_a_class_and_share_the_last_rank() -> None:
    notes = four_voices()
    notes["program"][notes["track"] == 2] = 42  # the tenor on a cello: strings-1
    tracks = [(t, rows) for t, rows in streams.track_slices(notes) if t < 4]
    # bass and alto share piano-2, the cello alone is strings-1
    assert streams.track_parts(notes, tracks, 2) == [1, 0, 10, 1]
    assert [instruments.part_name(i, 2) for i in (0, 1, 10)] == ["piano-1", "piano-2", "strings-1"]
    assert instruments.part_name(streams.part_index(streams.DRUMS, 1, 4), 4) == "drums-1"


def test_the_length_filters_see_the_merged_score() -> None:
    notes = four_voices()
    for mode, count in (("track", 0), ("score", 1)):
        p = config.Sequences(mode=mode, seq_length=6, min_notes=7)  # every track is shorter
        selection = sequences.Selection.from_params(p)
        assert len(sequences.file_streams(notes, selection, p)) == count
    p = config.Sequences(mode="score", seq_length=30, min_notes=4)
    selection = sequences.Selection.from_params(p)
    assert sequences.file_streams(notes, selection, p) == []
    assert selection.empty_reason(5) == (
        "sequences.seq_length=30 (scores need seq_length+1 notes) removed all 1 remaining scores"
    )


# ---------------------------------------------------------------- the stage


def test_split_keys_keep_duplicates_same_notes_and_tunes_together(
    shards_project: Path, note_corpus: dict
) -> None:
    splits = splits_table(shards_project)
    assert splits.groupby("split_key")["split"].nunique().max() == 1
    assert splits["file_id"].is_unique
    assert "0" * 32 not in set(splits["file_id"])  # empty and quarantined files are not used
    by_id = splits.set_index("file_id")
    original = file_id_of(note_corpus["chorales"][0])
    for other in (note_corpus["resaved"], note_corpus["reharmonised"]):
        assert by_id.loc[file_id_of(other), "split_key"] == by_id.loc[original, "split_key"]
        assert by_id.loc[file_id_of(other), "split"] == by_id.loc[original, "split"]
    assert set(splits["split"]) == {"train", "val", "test"}
    # the manifest accounts for the grouping: the re-save and the re-harmonisation share long
    # runs with the original (the re-save all its notes)
    sizes = splits.groupby("split_key").size()
    grouping = manifest_of(shards_project)["grouping"]
    assert grouping.pop("files_grouped_by_shared_runs") >= 3
    assert grouping == {"shared_run": 24, "split_by": "tune", "files": len(splits),
                        "split_keys": len(sizes), "largest_split_group": sizes.max()}  # fmt: skip


@pytest.mark.parametrize("split_by", ["file", "group"])
@pytest.mark.parametrize("shared_run", [24, 0])
def test_split_by_file_and_group(
    shards_project: Path, note_corpus: dict, split_by: str, shared_run: int
) -> None:
    notes_dir = shards_project / "data" / "notes"
    files = pd.read_parquet(notes_dir / "files.parquet").query("status == 'ok'")
    selection = sequences.Selection.from_params(config.Sequences())
    survey, _, _ = sequences.survey_files(
        sequences.note_parts(notes_dir), set(files["file_id"]), selection, shared_run
    )
    groups = dict(zip(files["file_id"], files["group"], strict=True))
    keys = splits.split_keys(sorted(files["file_id"]), groups, survey, split_by)
    original = keys[file_id_of(note_corpus["chorales"][0])]
    # the same notes in other bytes share a key whatever split_by says
    assert keys[file_id_of(note_corpus["resaved"])] == original
    chorales = {keys[file_id_of(p)] for p in note_corpus["chorales"]}
    # the re-harmonisation (its soprano in another key) shares long runs with the original
    reharmonised = keys[file_id_of(note_corpus["reharmonised"])]
    if split_by == "file":
        assert (reharmonised == original) == (shared_run > 0)
        assert len(chorales) == len(note_corpus["chorales"])
    else:  # one folder group, joined to the re-harmonisation's group by its runs only
        assert chorales == {"group:bach"}
        assert reharmonised == ("group:bach" if shared_run else "group:other")
        assert keys[file_id_of(note_corpus["multi"])] == "group:synth"


def test_shared_run_zero_turns_the_link_off_in_the_stage(
    shards_project: Path, note_corpus: dict, tmp_path: Path
) -> None:
    project = make_project(tmp_path / "p", {"sequences": SEQUENCES_TEST_PARAMS})
    shutil.copytree(shards_project / "data" / "notes", project / "data" / "notes")
    metrics = sequences.run(
        config.load(project, ["sequences.shared_run=0", "sequences.split_by=file"])
    )
    assert metrics["files_grouped_by_shared_runs"] == 0
    assert manifest_of(project)["grouping"]["files_grouped_by_shared_runs"] == 0
    by_id = splits_table(project).set_index("file_id")["split_key"]
    original = by_id[file_id_of(note_corpus["chorales"][0])]
    assert by_id[file_id_of(note_corpus["resaved"])] == original  # same notes: still linked
    assert by_id[file_id_of(note_corpus["reharmonised"])] != original
    assert metrics["split_keys"] == by_id.nunique()


def test_chunks_match_the_note_tables_and_the_manifest_counts(shards_project: Path) -> None:
    manifest = manifest_of(shards_project)
    shard_dir = shards_project / "data" / "shards"
    split_of = splits_table(shards_project).set_index("file_id")["split"]
    tracks = expected_tracks(shards_project)
    seen: dict[str, set] = defaultdict(set)
    for split, counts in manifest["splits"].items():
        chunks = list(dataset.chunks(shard_dir, split))
        assert len(chunks) == counts["chunks"] == sum(s["chunks"] for s in counts["shards"])
        lengths: dict[tuple[str, int], int] = {}
        for c in chunks:
            key = (c["file_id"], c["track"])
            assert split_of[c["file_id"]] == split
            want = tracks[key]
            lo, hi = c["offset"], c["offset"] + len(c["pitch"])
            assert len(c["pitch"]) <= SEQUENCES_TEST_PARAMS["chunk_notes"]
            for name in ("pitch", "step", "duration", "velocity"):
                np.testing.assert_allclose(c[name], want[name][lo:hi], atol=1e-4)
            assert c["program"] == want["program"]
            assert c["part"].tolist() == [want["part"]] * len(c["pitch"])  # the track's part
            lengths[key] = max(lengths.get(key, 0), hi)
            seen[split].add(c["file_id"])
        assert all(lengths[k] == len(tracks[k]["pitch"]) for k in lengths)  # whole tracks
        assert sum(lengths.values()) == counts["notes"]
        assert len(seen[split]) == counts["files"]
        assert counts["windows"] == sum(len(tracks[k]["pitch"]) - T for k in lengths)
        assert counts["windows"] == sum(sequences.windows_in(len(c["pitch"]), T, 1) for c in chunks)
    assert set(tracks) == {
        (c["file_id"], c["track"]) for s in manifest["splits"] for c in dataset.chunks(shard_dir, s)
    }
    assert len(manifest["splits"]["train"]["shards"]) > 1  # shard_mb is tiny here


def test_bins_come_from_the_training_split(shards_project: Path) -> None:
    manifest = manifest_of(shards_project)
    shard_dir = shards_project / "data" / "shards"
    train: dict[str, list[np.ndarray]] = defaultdict(list)
    for c in dataset.chunks(shard_dir, "train"):
        fresh = slice(0 if c["offset"] == 0 else T, None)  # chunks overlap by T notes
        for name in ("step", "duration", "velocity"):
            train[name].append(c[name][fresh])
    for name, limit in (("step", 16), ("duration", 16), ("velocity", 8)):
        bins = manifest["bins"][name]
        edges, values = np.asarray(bins["edges"]), np.asarray(bins["values"])
        assert np.all(np.diff(edges) > 0) and len(values) == len(edges) + 1 <= limit
        x = np.concatenate(train[name]).astype(np.float64)
        classes = np.searchsorted(edges, x, side="right")
        for k in np.unique(classes):
            assert values[k] == pytest.approx(x[classes == k].mean(), rel=1e-6)
    step = manifest["bins"]["step"]
    assert step["edges"][0] < 1e-3 and step["values"][0] == 0.0  # the chord class


def test_manifest_describes_the_shards(shards_project: Path) -> None:
    import hashlib

    manifest = manifest_of(shards_project)
    shard_dir = shards_project / "data" / "shards"
    assert manifest["seq_length"] == T and manifest["time_unit"] == "beats"
    assert manifest["features"]["pitch"] == {"dtype": "int32", "shape": [T + 1]}
    assert manifest["programs"]["most_common"] == 0
    assert set(manifest["programs"]["counts"]) == {"0", "48"}  # drums and the short flute left out
    assert manifest["mode"] == "track"
    parts = manifest["parts"]
    assert (parts["max_rank"], parts["size"]) == (4, 17 * 4)
    # the chorales' four voices and the multi-program file's piano (piano-1: the piano tracks of
    # the chorales' re-saves rank alike) and strings (program 48, family ensemble)
    assert [(v["index"], v["name"], v["family"], v["rank"], v["program"])
            for v in parts["vocabulary"]] == [
        (0, "piano-1", "piano", 1, 0), (1, "piano-2", "piano", 2, 0),
        (2, "piano-3", "piano", 3, 0), (3, "piano-4", "piano", 4, 0),
        (24, "ensemble-1", "ensemble", 1, 48),
    ]  # fmt: skip
    by_part: dict[int, int] = defaultdict(int)
    for split in manifest["splits"]:
        for c in dataset.chunks(shard_dir, split):
            fresh = slice(0 if c["offset"] == 0 else T, None)  # chunks overlap by T notes
            for part, n in zip(*np.unique(c["part"][fresh], return_counts=True), strict=True):
                by_part[int(part)] += int(n)
    assert {v["index"]: v["notes"] for v in parts["vocabulary"]} == by_part
    assert sum(by_part.values()) == sum(v["notes"] for v in manifest["splits"].values())
    assert 60 < manifest["tempo_bpm"] < 200
    digest = hashlib.sha256((shard_dir / "splits.parquet").read_bytes()).hexdigest()
    assert manifest["splits_sha256"] == digest
    names = sorted(p.name for p in shard_dir.glob("*.tfrecord.gz"))
    listed = sorted(s["name"] for v in manifest["splits"].values() for s in v["shards"])
    assert names == listed
    for v in manifest["splits"].values():
        for s in v["shards"]:
            path = shard_dir / s["name"]
            assert hashlib.sha256(path.read_bytes()).hexdigest() == s["sha256"]
            assert path.stat().st_size == s["bytes"]


@pytest.fixture(scope="module")
def score_project(tmp_path_factory: pytest.TempPathFactory, shards_project: Path) -> Path:
    """The note corpus through the sequences stage in score mode (set in params.yaml)."""
    project = make_project(
        tmp_path_factory.mktemp("score") / "p",
        {"sequences": {**SEQUENCES_TEST_PARAMS, "mode": "score"}},
    )
    shutil.copytree(shards_project / "data" / "notes", project / "data" / "notes")
    sequences.run(config.load(project))
    return project


def test_score_mode_chunks_are_each_files_merged_tracks(
    score_project: Path, note_corpus: dict
) -> None:
    manifest = manifest_of(score_project)
    shard_dir = score_project / "data" / "shards"
    scores = expected_scores(score_project)
    assert manifest["mode"] == "score"
    joined: dict[str, int] = {}
    for split, counts in manifest["splits"].items():
        chunks = list(dataset.chunks(shard_dir, split))
        assert len(chunks) == counts["chunks"]
        for c in chunks:
            want = scores[c["file_id"]]
            lo, hi = c["offset"], c["offset"] + len(c["pitch"])
            assert c["track"] == -1 and c["program"] == want["program"]
            for name in ("pitch", "step", "duration", "velocity", "part"):
                np.testing.assert_allclose(c[name], want[name][lo:hi], atol=1e-4, err_msg=name)
            joined[c["file_id"]] = max(joined.get(c["file_id"], 0), hi)
        files = {c["file_id"] for c in chunks}
        assert counts["files"] == counts["streams"] == len(files)
        assert counts["notes"] == sum(len(scores[f]["pitch"]) for f in files)
        assert counts["windows"] == sum(len(scores[f]["pitch"]) - T for f in files)
    assert joined == {f: len(score["pitch"]) for f, score in scores.items()}  # whole scores
    # the short flute plays in its score (the length filters see the score), the drums do not
    assert set(manifest["programs"]["counts"]) == {"0", "48", "73"}
    assert [v["name"] for v in manifest["parts"]["vocabulary"]] == [
        "piano-1",
        "piano-2",
        "piano-3",
        "piano-4",
        "ensemble-1",
        "pipe-1",
    ]
    chorale = scores[file_id_of(note_corpus["chorales"][0])]
    assert set(chorale["part"].tolist()) == {0, 1, 2, 3}
    assert np.mean(chorale["step"] == 0) > 0.5  # four voices: most notes sound with others


def test_score_mode_splits_as_track_mode_does(score_project: Path, shards_project: Path) -> None:
    before, after = splits_table(shards_project), splits_table(score_project)
    assert before.equals(after)


def test_score_mode_writes_the_same_bytes_in_another_process(
    tmp_path: Path, score_project: Path
) -> None:
    again = make_project(tmp_path / "again", {"sequences": SEQUENCES_TEST_PARAMS})
    shutil.copytree(score_project / "data" / "notes", again / "data" / "notes")
    done = run_cli(
        ["lakhflow", "sequences", "-S", "sequences.mode=score"],
        again,
        PYTHONHASHSEED=another_hash_seed(),
    )
    assert done.returncode == 0, done.stderr
    first = folder_digests(score_project / "data" / "shards")
    assert sum(name.endswith(".tfrecord.gz") for name in first) > 1
    assert folder_digests(again / "data" / "shards") == first


def test_another_process_writes_the_same_bytes_and_another_seed_splits_otherwise(
    tmp_path: Path, shards_project: Path
) -> None:
    """The fixture's shards come from this process; `lakhflow sequences` on the same notes in
    another process (another hash seed, other addresses) must write every file byte for byte,
    or DVC sees data/shards changed and reruns training."""
    again = make_project(tmp_path / "again", {"sequences": SEQUENCES_TEST_PARAMS})
    shutil.copytree(shards_project / "data" / "notes", again / "data" / "notes")
    done = run_cli(["lakhflow", "sequences"], again, PYTHONHASHSEED=another_hash_seed())
    assert done.returncode == 0, done.stderr
    first = folder_digests(shards_project / "data" / "shards")
    assert sum(name.endswith(".tfrecord.gz") for name in first) > 2
    assert {"splits.parquet", "manifest.json"} <= first.keys()
    assert folder_digests(again / "data" / "shards") == first

    sequences.run(config.load(again, ["sequences.seed=24"]))
    before, after = splits_table(shards_project), splits_table(again)
    assert list(before["split_key"]) == list(after["split_key"])
    assert list(before["split"]) != list(after["split"])


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("sequences.programs=[brass]", "sequences.programs"),
        ("sequences.min_notes=100000", "sequences.min_notes"),
        ("sequences.seq_length=400", "sequences.seq_length"),
    ],
)
def test_an_empty_selection_names_the_filter(
    shards_project: Path, tmp_path: Path, override: str, names: str
) -> None:
    project = make_project(tmp_path / "p", {"sequences": SEQUENCES_TEST_PARAMS})
    shutil.copytree(shards_project / "data" / "notes", project / "data" / "notes")
    extra = ["sequences.chunk_notes=512"] if "seq_length" in override else []
    with pytest.raises(LakhflowError, match=f"no windows: {names}") as caught:
        sequences.run(config.load(project, [override, *extra]))
    assert "\n" not in str(caught.value)


def test_most_common_instrument_and_drums(shards_project: Path, tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", {"sequences": SEQUENCES_TEST_PARAMS})
    shutil.copytree(shards_project / "data" / "notes", project / "data" / "notes")
    sequences.run(config.load(project, ["sequences.programs=[ensemble]"]))
    assert manifest_of(project)["programs"]["counts"] == {"48": 120}
    sequences.run(config.load(project, ["sequences.include_drums=true"]))
    counts = manifest_of(project)["programs"]["counts"]
    assert counts["0"] > manifest_of(shards_project)["programs"]["counts"]["0"]  # + the drums
    sequences.run(config.load(project, ["sequences.instrument=most_common"]))
    assert manifest_of(project)["programs"]["counts"].keys() == {"0"}


def test_cli_reports_bad_params_and_missing_notes_in_one_line(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    bad = run_cli(["lakhflow", "sequences", "-S", "sequences.programs=[kazoo]"], project)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "kazoo" in bad.stderr
    missing = run_cli(["lakhflow", "sequences"], project)
    assert missing.returncode == 1
    assert "files.parquet not found" in missing.stderr.strip().splitlines()[-1]


PARSE_STAND_IN = """\
import shutil, sys
shutil.copytree(sys.argv[1], "data/notes")
"""


@pytest.mark.slow
def test_dvc_repro_after_a_params_change_reruns_sequences_and_later_only(
    shards_project: Path, tmp_path: Path
) -> None:
    """A real DVC project: parse (a stand-in that copies note tables) -> sequences -> a consumer."""
    import yaml

    project = make_project(tmp_path / "p", {"sequences": SEQUENCES_TEST_PARAMS})
    source = tmp_path / "notes-source"
    shutil.copytree(shards_project / "data" / "notes", source)
    (project / "parse_stand_in.py").write_text(PARSE_STAND_IN)
    stages = {
        "parse": {"cmd": f"python parse_stand_in.py {source}", "deps": ["parse_stand_in.py"],
                  "params": ["parse"], "outs": ["data/notes"]},
        "sequences": {"cmd": "lakhflow sequences", "deps": ["data/notes"],
                      "params": ["download.source", "sequences"], "outs": ["data/shards"]},
        "train": {"cmd": "python -c \"import shutil; shutil.copytree('data/shards', 'data/model')\"",  # noqa: E501
                  "deps": ["data/shards"], "params": ["train"], "outs": ["data/model"]},
    }  # fmt: skip
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))

    def repro() -> str:
        done = run_cli(["dvc", "repro"], project)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    first = repro()
    assert all(f"Running stage '{s}'" in first for s in ("parse", "sequences", "train"))
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["sequences"]["seed"] = 24
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    second = repro()
    assert "Stage 'parse' didn't change, skipping" in second
    assert "Running stage 'sequences'" in second and "Running stage 'train'" in second
    assert "Running stage 'parse'" not in second
    manifest = json.loads((project / "data" / "model" / "manifest.json").read_text())
    assert manifest["seed"] == 24


def recut_notes(source: Path, dest: Path, files_per_part: int) -> int:
    """The note tables of `source` cut as parse writes them: a part per few files, no file cut
    across parts; returns the number of parts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dest.mkdir(parents=True)
    shutil.copy2(source / "files.parquet", dest / "files.parquet")
    notes = pa.concat_tables(pq.read_table(p) for p in sequences.note_parts(source))
    ids = notes.column("file_id").to_numpy(zero_copy_only=False)
    starts = [0, *(np.flatnonzero(ids[1:] != ids[:-1]) + 1).tolist(), len(ids)]
    cuts = sorted({*starts[::files_per_part], len(ids)})
    for k, (lo, hi) in enumerate(itertools.pairwise(cuts)):
        pq.write_table(notes.slice(lo, hi - lo), dest / f"notes-{k:05d}.parquet")
    return len(cuts) - 1


@pytest.mark.slow
def test_shards_are_the_same_bytes_with_one_or_two_workers_and_on_a_dask_cluster(
    tmp_path: Path, shards_project: Path
) -> None:
    """The stage's work is cut by notes part across worker processes (or a Dask cluster's): in
    separate processes, 1 and 2 workers write every file byte for byte alike, and so does a
    real LocalCluster. Cut otherwise (the fixture's tables cut files across parts, so its units
    of work differ), the same chunks land in the same shards."""
    from distributed import LocalCluster

    projects = {}
    for run in ("1", "2", "dask"):
        project = make_project(tmp_path / run, {"sequences": SEQUENCES_TEST_PARAMS})
        parts = recut_notes(shards_project / "data" / "notes", project / "data" / "notes", 2)
        projects[run] = project
    assert parts > 4
    for workers in ("1", "2"):
        done = run_cli(
            ["lakhflow", "sequences", "-S", f"sequences.workers={workers}"],
            projects[workers],
            PYTHONHASHSEED=another_hash_seed(),
        )
        assert done.returncode == 0, done.stderr
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
        host="127.0.0.1",
    ) as cluster:  # fmt: skip
        address = cluster.scheduler_address
        sequences.run(
            config.load(
                projects["dask"],
                ["sequences.executor=dask", f"sequences.scheduler_address={address}"],
            )
        )
    digests = {
        run: folder_digests(project / "data" / "shards") for run, project in projects.items()
    }
    assert sum(name.endswith(".tfrecord.gz") for name in digests["1"]) > 2
    assert digests["1"] == digests["2"] == digests["dask"]
    fixture = folder_digests(shards_project / "data" / "shards")
    records = {k: v for k, v in digests["1"].items() if k.endswith((".gz", ".parquet"))}
    assert records == {k: v for k, v in fixture.items() if k in records}
