"""The shard reader: windows framed from chunks, batches per the manifest, transposition."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SEQUENCES_TEST_PARAMS
from test_sequences import expected_scores, expected_tracks, score_project  # noqa: F401 (a fixture)

from pipelines import dataset, sequences

T = SEQUENCES_TEST_PARAMS["seq_length"]
FEATURES = ("pitch", "step", "duration", "velocity", "part")


def window_key(window: dict, shift: int = 0) -> tuple:
    return (
        (np.asarray(window["pitch"], np.int32) + shift).tobytes(),
        np.round(np.asarray(window["step"], np.float64), 4).tobytes(),
        np.round(np.asarray(window["duration"], np.float64), 4).tobytes(),
        np.asarray(window["velocity"], np.int32).tobytes(),
        np.broadcast_to(np.asarray(window["part"], np.int32), len(window["pitch"])).tobytes(),
        int(window["program"]),
    )


def read_windows(shard_dir: Path, split: str, manifest: dict, **kwargs) -> list[dict]:
    out = []
    for batch in dataset.windows(shard_dir, split, manifest, batch_size=50, **kwargs):
        arrays = {k: v.numpy() for k, v in batch.items()}
        out += [{k: arrays[k][i] for k in arrays} for i in range(len(arrays["program"]))]
    return out


@pytest.fixture(scope="module")
def shards(shards_project: Path) -> tuple[Path, dict]:
    shard_dir = shards_project / "data" / "shards"
    return shard_dir, json.loads((shard_dir / "manifest.json").read_text())


def test_every_window_is_a_run_of_one_track_and_none_is_lost(
    shards_project: Path, shards: tuple[Path, dict]
) -> None:
    shard_dir, manifest = shards
    split_of = pd.read_parquet(shard_dir / "splits.parquet").set_index("file_id")["split"]
    tracks = expected_tracks(shards_project)
    for split in ("train", "val", "test"):
        expected: Counter = Counter()
        for (file_id, _), track in tracks.items():
            if split_of[file_id] == split:
                for s in range(len(track["pitch"]) - T):
                    window = {k: track[k][s : s + T + 1] for k in FEATURES if k != "part"}
                    window["part"] = track["part"]
                    expected[window_key({**window, "program": track["program"]})] += 1
        got = Counter(window_key(w) for w in read_windows(shard_dir, split, manifest))
        assert got == expected, split
        assert sum(got.values()) == manifest["splits"][split]["windows"]


def test_score_windows_are_runs_of_a_merged_score_and_none_is_lost(
    score_project: Path,  # noqa: F811 (the fixture imported above)
) -> None:
    shard_dir = score_project / "data" / "shards"
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    split_of = pd.read_parquet(shard_dir / "splits.parquet").set_index("file_id")["split"]
    scores = expected_scores(score_project)
    for split in ("train", "val", "test"):
        expected: Counter = Counter()
        for file_id, score in scores.items():
            if split_of[file_id] == split:
                for s in range(len(score["pitch"]) - T):
                    window = {k: score[k][s : s + T + 1] for k in FEATURES}
                    expected[window_key({**window, "program": score["program"]})] += 1
        windows = read_windows(shard_dir, split, manifest)
        # the model's windows: notes with their parts, the program and the file's group
        assert {k for w in windows[:1] for k in w} == {*FEATURES, "program", "group"}
        got = Counter(window_key(w) for w in windows)
        assert got == expected, split
        assert sum(got.values()) == manifest["splits"][split]["windows"]


def test_batches_match_the_manifest_feature_spec(shards: tuple[Path, dict]) -> None:
    shard_dir, manifest = shards
    ds = dataset.windows(shard_dir, "train", manifest, batch_size=8, shuffle=True, transpose=3)
    batch = next(iter(ds))
    for name, spec in manifest["features"].items():
        assert batch[name].dtype.name == spec["dtype"], name
        assert list(batch[name].shape) == [8, *spec["shape"]], name
    single = next(iter(dataset.windows(shard_dir, "val", manifest)))
    assert {k: list(v.shape) for k, v in single.items()} == {
        k: spec["shape"] for k, spec in manifest["features"].items()
    }


def test_stride_is_a_reader_setting(shards: tuple[Path, dict]) -> None:
    shard_dir, manifest = shards
    lengths = [len(c["pitch"]) for c in dataset.chunks(shard_dir, "train")]
    got = len(read_windows(shard_dir, "train", manifest, stride=3))
    assert got == sum(sequences.windows_in(n, T, 3) for n in lengths)


def test_transposition_stays_in_range_and_spares_val_and_test(shards: tuple[Path, dict]) -> None:
    shard_dir, manifest = shards
    plain = read_windows(shard_dir, "train", manifest)
    moved = read_windows(shard_dir, "train", manifest, shuffle=True, transpose=6, seed=5)
    assert len(moved) == len(plain)
    pitches = np.stack([w["pitch"] for w in moved])
    assert pitches.min() >= 0 and pitches.max() <= 127

    def shape(w: dict) -> tuple:  # a window up to transposition
        return window_key({**w, "pitch": w["pitch"] - w["pitch"].min()})

    assert Counter(map(shape, moved)) == Counter(map(shape, plain))
    assert Counter(map(window_key, moved)) != Counter(map(window_key, plain))
    # a window whose shape is unique pairs with its unaugmented self: its shift is known
    lows: dict[tuple, list[list[int]]] = {}
    for i, group in enumerate((plain, moved)):
        for w in group:
            lows.setdefault(shape(w), [[], []])[i].append(int(w["pitch"].min()))
    shifts = Counter(m[0] - p[0] for p, m in lows.values() if len(p) == 1)
    assert len(shifts) > 5 and all(abs(s) <= 6 for s in shifts)
    # windows spanning 0..127 cannot move at all
    extreme = [w for w in plain if w["pitch"].min() == 0 and w["pitch"].max() == 127]
    for w in extreme:
        assert window_key(w) in set(map(window_key, moved))
    for split in ("val", "test"):
        untouched = read_windows(shard_dir, split, manifest, shuffle=True, transpose=6, seed=5)
        assert Counter(map(window_key, untouched)) == Counter(
            map(window_key, read_windows(shard_dir, split, manifest))
        )


def test_shuffled_reads_repeat_and_are_reproducible(shards: tuple[Path, dict]) -> None:
    shard_dir, manifest = shards
    total = manifest["splits"]["train"]["windows"]

    def first_batches(seed: int) -> list[np.ndarray]:
        ds = dataset.windows(
            shard_dir, "train", manifest, batch_size=64, shuffle=True, transpose=3,
            seed=seed, repeat=True,
        )  # fmt: skip
        return [b["pitch"].numpy() for b in ds.take(total // 64 + 10)]

    one, two = first_batches(1), first_batches(1)
    assert all(np.array_equal(a, b) for a, b in zip(one, two, strict=True))
    assert not np.array_equal(one[0], first_batches(2)[0])
    assert sum(len(b) for b in one) > total  # it repeats past one epoch
