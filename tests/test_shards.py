"""Shards: chunk examples written without TensorFlow, TFRecord framing, keyed runs and shards cut
from key ranges."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from pipelines import schema, shards


def tensorflow_example(features: dict, lo: int, hi: int, context: dict) -> bytes:
    """The chunk as TensorFlow's own protos serialize it (the bytes chunk_example must write)."""
    from tensorflow.core.example import example_pb2

    example = example_pb2.Example()
    feature = example.features.feature
    lists = {"int64": "int64_list", "float": "float_list", "bytes": "bytes_list"}
    for name, kind in schema.CHUNK_NOTE_FEATURES.items():
        getattr(feature[name], lists[kind]).value.extend(features[name][lo:hi].tolist())
    for name, kind in schema.CHUNK_CONTEXT_FEATURES.items():
        getattr(feature[name], lists[kind]).value.extend([context[name]])
    return example.SerializeToString(deterministic=True)


def test_chunk_examples_are_the_bytes_tensorflow_writes() -> None:
    """Random chunks (large and negative values, empty and long groups, float64 steps) encode
    byte for byte as TensorFlow's deterministic serialization, which also reads them back."""
    from tensorflow.core.example import example_pb2

    rng = np.random.default_rng(1)
    for _ in range(200):
        n = int(rng.integers(1, 700))
        features = {
            "pitch": rng.integers(0, 128, n),
            "step": rng.random(n) * 4,
            "duration": (rng.random(n) * 8).astype(np.float32),
            "velocity": rng.integers(0, 128, n),
            "part": rng.integers(0, 300, n),  # past 127: two-byte varints
        }
        lo = int(rng.integers(0, n))
        hi = int(rng.integers(lo + 1, n + 1))
        group = str(rng.choice(["", "bach", "x" * 200]))
        track = int(rng.choice([schema.SCORE_TRACK, 0, 5, 300]))
        program = int(rng.integers(0, 128))
        data = shards.chunk_example(features, lo, hi, program, "f" * 32, track, group)
        context = {"program": program, "file_id": b"f" * 32, "group": group.encode(),
                   "track": track, "offset": lo}  # fmt: skip
        assert data == tensorflow_example(features, lo, hi, context)
    feature = example_pb2.Example.FromString(data).features.feature
    assert list(feature["pitch"].int64_list.value) == features["pitch"][lo:hi].tolist()
    assert feature["track"].int64_list.value[0] == track


def test_tfrecords_read_back_with_tensorflow_and_their_bytes_follow_the_records(
    tmp_path: Path,
) -> None:
    import tensorflow as tf

    rng = np.random.default_rng(0)
    records = [rng.bytes(int(rng.integers(0, 5000))) for _ in range(300)]
    assert shards.write_tfrecords(tmp_path / "a.gz", records) == len(records)
    shards.write_tfrecords(tmp_path / "b.gz", iter(records))
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()
    read = tf.data.TFRecordDataset(str(tmp_path / "a.gz"), compression_type="GZIP")
    assert [r.numpy() for r in read] == records
    assert list(shards.read_tfrecords(tmp_path / "a.gz")) == records  # without TensorFlow
    import gzip

    framed = bytearray(gzip.decompress((tmp_path / "a.gz").read_bytes()))
    framed[len(framed) // 2] ^= 0xFF  # one flipped byte in the middle: a CRC fails
    (tmp_path / "bad.gz").write_bytes(gzip.compress(bytes(framed)))
    with pytest.raises(ValueError, match="damaged"):
        list(shards.read_tfrecords(tmp_path / "bad.gz"))
    assert shards.write_tfrecords(tmp_path / "none.gz", []) == 0
    assert list(tf.data.TFRecordDataset(str(tmp_path / "none.gz"), compression_type="GZIP")) == []


def keyed(rng: np.random.Generator, n: int) -> list[tuple[int, bytes]]:
    return [
        (int(rng.integers(0, 2**63)) * 2, rng.bytes(int(rng.integers(1, 300)))) for _ in range(n)
    ]


def test_shards_from_key_ranges_are_the_same_bytes_however_the_runs_were_cut(
    tmp_path: Path,
) -> None:
    """A split's records spread over 1 or 3 runs files (what 1 or 3 workers write) give the same
    shards; shard i holds the i-th key range, in key order; together they hold every record."""
    rng = np.random.default_rng(3)
    train, val = keyed(rng, 400), keyed(rng, 30)
    layouts = {1: [slice(0, None)], 3: [slice(0, 100), slice(100, 101), slice(101, None)]}
    digests = {}
    for workers, cuts in layouts.items():
        runs = []
        for i, cut in enumerate(cuts):
            path = tmp_path / f"{workers}-{i}.arrays"
            summary = shards.write_runs(path, {"train": train[cut], "val": val[cut], "test": []})
            assert summary["train"]["count"] == len(train[cut])
            runs.append(path)
        ranges = shards.shard_ranges(4)
        got = []
        for i, (lo, hi) in enumerate(ranges):
            shard = tmp_path / f"{workers}-train-{i}.gz"
            info = shards.write_shard(shard, runs, "train", lo, hi)
            assert info["sha256"] == hashlib.sha256(shard.read_bytes()).hexdigest()
            in_range = sorted((k, r) for k, r in train if lo <= k < hi)
            assert info["chunks"] == len(in_range)
            got += [r for _, r in in_range]
            digests.setdefault(i, set()).add(info["sha256"])
        assert got == [r for _, r in sorted(train)]
        assert shards.write_shard(tmp_path / "t.gz", runs, "test", 0, 1 << 64)["chunks"] == 0
    assert all(len(d) == 1 for d in digests.values())
    assert ranges[0][0] == 0 and ranges[-1][1] == 1 << 64


def test_runs_sample_takes_the_first_records_by_key(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    records = keyed(rng, 50)
    shards.write_runs(tmp_path / "r.arrays", {"train": records})
    runs = shards.Runs(tmp_path / "r.arrays")
    ordered = [r for _, r in sorted(records)]
    sample = runs.sample("train", 1000)
    assert sample == ordered[: len(sample)]
    assert sum(map(len, sample[:-1])) < 1000 <= sum(map(len, sample))
    assert runs.sample("val", 1000) == []
    assert runs.sample("train", 10**9) == ordered


@pytest.mark.parametrize(
    ("size", "ratio", "shard", "count"),
    [(0, 0.3, 100, 1), (1000, 0.3, 100, 3), (1000, 1.0, 100, 10), (10, 0.3, 1 << 20, 1)],
)
def test_shard_count_sizes_shards_near_the_target(
    size: int, ratio: float, shard: int, count: int
) -> None:
    assert shards.shard_count(size, ratio, shard) == count


def test_compression_ratio_is_measured_on_the_sample() -> None:
    rng = np.random.default_rng(5)
    assert shards.compression_ratio([rng.bytes(50_000)]) > 0.95  # random bytes do not shrink
    assert shards.compression_ratio([b"\x00" * 50_000]) == 0.05  # the floor
    assert shards.compression_ratio([]) == 1.0
