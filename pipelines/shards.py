"""Shards: stream chunks (a track's or a merged score's) as tf.train.Examples, shuffled within
their split through buckets on disk, written as GZIP TFRecord shards of about `sequences.shard_mb`
each.

Every step is deterministic (hash-keyed order, deterministic proto bytes, flushes at the same
records), so the same notes give byte-identical shards in any process.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from pipelines import schema, storage

SPILL_BUCKET_BYTES = 256 << 20  # memory bound of the within-split shuffle
SPILL_BYTES_PER_NOTE = 24  # what one note costs in a spilled chunk, to size the buckets
FLUSH_MAX = 4 << 20  # uncompressed bytes between looks at a shard's size on disk
_SPILL_HEADER = struct.Struct("<QI")


def chunk_example(
    features: dict[str, np.ndarray],
    lo: int,
    hi: int,
    program: int,
    file_id: str,
    track: int,
    group: str = "",
) -> bytes:
    """Notes lo..hi of a stream's features as one serialized tf.train.Example (schema.CHUNK_*);
    `track` is the track's number, or schema.SCORE_TRACK for a file's merged score."""
    from tensorflow.core.example import example_pb2  # importing shards must not load TensorFlow

    example = example_pb2.Example()
    feature = example.features.feature

    def put(name: str, kind: str, values: list[Any]) -> None:
        {"int64": feature[name].int64_list, "float": feature[name].float_list,
         "bytes": feature[name].bytes_list}[kind].value.extend(values)  # fmt: skip

    for name, kind in schema.CHUNK_NOTE_FEATURES.items():
        put(name, kind, features[name][lo:hi].tolist())
    context = {
        "program": program,
        "file_id": file_id.encode(),
        "group": group.encode(),
        "track": track,
        "offset": lo,
    }
    for name, kind in schema.CHUNK_CONTEXT_FEATURES.items():
        put(name, kind, [context[name]])
    # A proto map's wire order follows a hash seeded per process: without `deterministic`
    # two runs on the same notes write other shard bytes, and DVC reruns training.
    return example.SerializeToString(deterministic=True)


def shuffle_key(seed: int, file_id: str, track: int, offset: int) -> int:
    """A chunk's place in its split's shuffled order: the same whatever order files came in."""
    digest = hashlib.sha256(f"{seed}:{file_id}:{track}:{offset}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def spill_buckets(notes: int) -> int:
    """Buckets enough that one holds about SPILL_BUCKET_BYTES of chunks, for `notes` notes."""
    return max(1, -(-notes * SPILL_BYTES_PER_NOTE // SPILL_BUCKET_BYTES))


@contextlib.contextmanager
def spilling(folder: Path, buckets: int) -> Iterator[ChunkSpill]:
    """A fresh, empty spill in `folder`, deleted afterwards however the stage ends."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    spill = ChunkSpill(folder, buckets)
    try:
        yield spill
    finally:
        spill.close()
        shutil.rmtree(folder, ignore_errors=True)


class ChunkSpill:
    """Chunks of each split in hash buckets on disk, so the shuffle needs one bucket in memory."""

    def __init__(self, folder: Path, buckets: int) -> None:
        self.folder = folder
        self.buckets = buckets
        self.handles: dict[tuple[str, int], BinaryIO] = {}

    def add(self, split: str, key: int, record: bytes) -> None:
        bucket = key % self.buckets
        handle = self.handles.get((split, bucket))
        if handle is None:
            handle = open(self.folder / f"{split}-{bucket:05d}.spill", "wb")  # noqa: SIM115 (held across add calls, closed by close())
            self.handles[(split, bucket)] = handle
        handle.write(_SPILL_HEADER.pack(key, len(record)))
        handle.write(record)

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()
        self.handles.clear()

    def shuffled(self, split: str) -> Iterator[bytes]:
        """The split's chunks in shuffled order: buckets in turn, each sorted by its keys."""
        for bucket in range(self.buckets):
            path = self.folder / f"{split}-{bucket:05d}.spill"
            if not path.exists():
                continue
            data = path.read_bytes()
            records: list[tuple[int, bytes]] = []
            pos = 0
            while pos < len(data):
                key, size = _SPILL_HEADER.unpack_from(data, pos)
                pos += _SPILL_HEADER.size
                records.append((key, data[pos : pos + size]))
                pos += size
            records.sort()
            for _, record in records:
                yield record


def write_shards(
    records: Iterator[bytes], folder: Path, split: str, shard_bytes: int
) -> list[dict]:
    """GZIP TFRecord shards of about `shard_bytes` each, named once their count is known."""
    import tensorflow as tf

    options = tf.io.TFRecordOptions(compression_type="GZIP")
    flush_every = int(min(FLUSH_MAX, max(16 << 10, shard_bytes)))
    written: list[tuple[Path, int]] = []
    writer = None
    path = folder
    count = pending = 0
    for record in records:
        if writer is None:
            path = folder / f".{split}-{len(written):05d}.partial"
            writer = tf.io.TFRecordWriter(str(path), options)
            count = pending = 0
        writer.write(record)
        count += 1
        pending += len(record)
        if pending >= flush_every:
            writer.flush()  # deterministic: flushes happen at the same records every run
            pending = 0
            if path.stat().st_size >= shard_bytes:
                writer.close()
                written.append((path, count))
                writer = None
    if writer is not None:
        writer.close()
        written.append((path, count))
    shards = []
    for i, (partial, chunks) in enumerate(written):
        final = folder / f"{split}-{i:05d}-of-{len(written):05d}.tfrecord.gz"
        partial.replace(final)
        shards.append(
            {
                "name": final.name,
                "sha256": storage.file_digest(final, "sha256"),
                "bytes": final.stat().st_size,
                "chunks": chunks,
            }
        )
    return shards
