"""Shards: chunk examples, the on-disk spill's shuffle, and the shard writer."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from pipelines import shards


def test_the_spill_gives_each_split_in_key_order_whatever_order_chunks_came_in(
    tmp_path: Path,
) -> None:
    records = [
        (shards.shuffle_key(7, "file", 0, offset), b"chunk%d" % offset) for offset in range(200)
    ]
    orders = []
    for n, order in enumerate((records, records[::-1])):
        spill = shards.ChunkSpill(tmp_path / str(n), buckets=3)
        spill.folder.mkdir()
        for key, record in order:
            spill.add("train", key, record)
        spill.add("val", 5, b"the val chunk")
        spill.close()
        orders.append(list(spill.shuffled("train")))
        assert list(spill.shuffled("val")) == [b"the val chunk"]
        assert list(spill.shuffled("test")) == []
    assert orders[0] == orders[1]
    assert sorted(orders[0]) == sorted(r for _, r in records)
    by_bucket = sorted(records, key=lambda kr: (kr[0] % 3, kr[0]))
    assert orders[0] == [r for _, r in by_bucket]


def test_spilling_starts_empty_and_leaves_nothing_behind(tmp_path: Path) -> None:
    folder = tmp_path / "spill"
    folder.mkdir()
    (folder / "train-00000.spill").write_bytes(b"from a killed run")
    with pytest.raises(RuntimeError), shards.spilling(folder, 2) as spill:
        assert list(spill.shuffled("train")) == []
        spill.add("train", 1, b"x")
        raise RuntimeError
    assert not folder.exists()
    assert shards.spill_buckets(0) == 1
    assert shards.spill_buckets(shards.SPILL_BUCKET_BYTES // shards.SPILL_BYTES_PER_NOTE + 1) == 2


def test_chunk_example_holds_the_chunk_and_is_the_same_bytes_every_time() -> None:
    from tensorflow.core.example import example_pb2

    features = {
        "pitch": np.arange(60, 70),
        "step": np.linspace(0, 1, 10, dtype=np.float32),
        "duration": np.full(10, 0.5, np.float32),
        "velocity": np.arange(10) + 80,
        "part": np.array([0, 1, 2, 3] * 2 + [24, 24]),
    }
    data = shards.chunk_example(features, 2, 6, 48, "abc", 3)
    assert data == shards.chunk_example(features, 2, 6, 48, "abc", 3)
    feature = example_pb2.Example.FromString(data).features.feature
    assert list(feature["pitch"].int64_list.value) == [62, 63, 64, 65]
    assert list(feature["step"].float_list.value) == pytest.approx(features["step"][2:6])
    assert list(feature["velocity"].int64_list.value) == [82, 83, 84, 85]
    assert list(feature["part"].int64_list.value) == [2, 3, 0, 1]
    assert feature["program"].int64_list.value[0] == 48
    assert feature["file_id"].bytes_list.value[0] == b"abc"
    assert (feature["track"].int64_list.value[0], feature["offset"].int64_list.value[0]) == (3, 2)


def test_shards_are_cut_near_shard_bytes_and_named_by_their_count(tmp_path: Path) -> None:
    import tensorflow as tf

    rng = np.random.default_rng(0)
    records = [rng.bytes(4096) for _ in range(60)]  # random: gzip cannot shrink them
    written = shards.write_shards(iter(records), tmp_path, "train", 64 << 10)
    count = len(written)
    assert count > 2
    assert [s["name"] for s in written] == [
        f"train-{i:05d}-of-{count:05d}.tfrecord.gz" for i in range(count)
    ]
    assert sum(s["chunks"] for s in written) == len(records)
    assert all(s["bytes"] >= 64 << 10 for s in written[:-1])  # closed once over shard_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == [s["name"] for s in written]
    read: list[bytes] = []
    for s in written:
        path = tmp_path / s["name"]
        assert s["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert s["bytes"] == path.stat().st_size
        shard = tf.data.TFRecordDataset(str(path), compression_type="GZIP")
        got = [r.numpy() for r in shard]
        assert len(got) == s["chunks"]
        read += got
    assert read == records
    assert shards.write_shards(iter([]), tmp_path / "none", "val", 1 << 20) == []
