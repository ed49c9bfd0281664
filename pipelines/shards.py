"""Shards: stream chunks (a track's or a merged score's) as tf.train.Examples, written as GZIP
TFRecord shards of about `sequences.shard_mb` each, each split in a shuffled order.

A chunk's place in its split is its `shuffle_key` (a hash of the seed and the chunk's identity),
so the order depends on no file order, process or worker count. Workers write their chunks as
keyed runs (`write_runs`: each split's records sorted by key, in one file per batch of note
tables); shard i of n holds the i-th of n equal ranges of the key space, gathered from every run
(`write_shard`), so shards are written side by side and every byte is the same whoever wrote it.

Neither the Example protos nor the TFRecord framing need TensorFlow here (importing it costs a
worker process some 4 s and 700 MB): `chunk_example` writes the proto wire format that
`SerializeToString(deterministic=True)` writes (a test compares them), and `write_tfrecords`
the framing of `tf.io.TFRecordWriter` (length, masked CRC32C of it, data, masked CRC32C).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import struct
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipelines import schema, storage

# ISA-L's gzip at its default level: some 25 times zlib's level 6 (TensorFlow's writer) on
# chunks, for shards about a fifth larger; any gzip reader (tf.data) reads them.
GZIP_LEVEL = 2
WRITE_BLOCK = 1 << 20  # framed records gathered before a write to the gzip stream
_LEN = struct.Struct("<Q")
_CRC = struct.Struct("<I")
KEY_SPACE = 1 << 64

# ------------------------------------------------------------------ the Example proto, by hand


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _BYTES[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_BYTES = [bytes((i,)) for i in range(256)]
_SHIFTS = np.arange(10, dtype=np.uint64) * np.uint64(7)
_LIMITS = np.left_shift(np.uint64(1), _SHIFTS[1:])  # a value at least this needs one more byte
_COLUMNS = np.arange(10)


def _varints(values: np.ndarray) -> bytes:
    """Protobuf varints of int64 values (a negative one takes ten bytes, two's complement)."""
    v = np.asarray(values, dtype=np.int64).view(np.uint64)
    sizes = 1 + (v[:, None] >= _LIMITS[None, :]).sum(axis=1)
    groups = ((v[:, None] >> _SHIFTS[None, :]) & np.uint64(0x7F)).astype(np.uint8)
    groups |= np.where(_COLUMNS[None, :] < (sizes - 1)[:, None], np.uint8(0x80), np.uint8(0))
    return groups[_COLUMNS[None, :] < sizes[:, None]].tobytes()


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field: tag byte (field << 3 | 2), length, payload."""
    return _BYTES[tag] + _varint(len(payload)) + payload


def _feature(kind: str, packed: bytes) -> bytes:
    """A tf.train.Feature: bytes_list (1) of one value, or float_list (2) or int64_list (3) of
    packed values (an empty packed field is left out)."""
    if kind == "bytes":
        return _field(0x0A, _field(0x0A, packed))
    return _field(0x12 if kind == "float" else 0x1A, _field(0x0A, packed) if packed else b"")


@functools.cache
def _entry_head(name: str, size: int) -> bytes:
    """The bytes before a note feature's `size` packed bytes in its map entry (the same for
    every chunk of that length: computed once)."""
    kind = schema.CHUNK_NOTE_FEATURES[name]
    if not size:  # an empty packed field is left out of the feature
        return _entry(name, _feature(kind, b""))
    return _entry(name, _feature(kind, b"\0" * size))[:-size]


def _entry(name: str, feature: bytes) -> bytes:
    """A map entry of Features: its key, then its value."""
    return _field(0x0A, _KEYS[name] + _field(0x12, feature))


class ChunkEncoder:
    """A stream's features encoded once (floats as float32, small ints as a byte each), then
    cut into chunks' serialized tf.train.Examples (schema.CHUNK_*): `track` is the track's
    number, or schema.SCORE_TRACK for a file's merged score.

    The bytes are those of TensorFlow's `SerializeToString(deterministic=True)`: map entries in
    key order, so two runs on the same notes write the same shard bytes and DVC does not rerun
    training."""

    def __init__(
        self, features: dict[str, np.ndarray], program: int, file_id: str, track: int, group: str
    ) -> None:
        self.notes: dict[str, tuple[np.ndarray, bool]] = {}
        for name, kind in schema.CHUNK_NOTE_FEATURES.items():
            values = np.asarray(features[name])
            if kind == "float":
                self.notes[name] = (values.astype("<f4"), True)
            else:
                wide = values.astype(np.int64)
                small = not len(wide) or (wide.min() >= 0 and wide.max() < 0x80)
                self.notes[name] = (wide.astype(np.uint8) if small else wide, small)
        self.context = {
            "program": _entry("program", _feature("int64", _varints(np.array([program])))),
            "file_id": _entry("file_id", _feature("bytes", file_id.encode())),
            "group": _entry("group", _feature("bytes", group.encode())),
            "track": _entry("track", _feature("int64", _varints(np.array([track])))),
        }

    def chunk(self, lo: int, hi: int) -> bytes:
        """Notes lo..hi as one serialized Example."""
        parts = []
        for name in _ORDER:
            if name in self.notes:
                values, raw = self.notes[name]
                packed = values[lo:hi].tobytes() if raw else _varints(values[lo:hi])
                parts += [_entry_head(name, len(packed)), packed]
            elif name == "offset":
                parts.append(_entry(name, _feature("int64", _varint(lo))))
            else:
                parts.append(self.context[name])
        return _field(0x0A, b"".join(parts))


def chunk_example(
    features: dict[str, np.ndarray],
    lo: int,
    hi: int,
    program: int,
    file_id: str,
    track: int,
    group: str = "",
) -> bytes:
    """Notes lo..hi of a stream's features as one serialized tf.train.Example (ChunkEncoder)."""
    return ChunkEncoder(features, program, file_id, track, group).chunk(lo, hi)


_ORDER = sorted([*schema.CHUNK_NOTE_FEATURES, *schema.CHUNK_CONTEXT_FEATURES])  # map key order
_KEYS = {name: _field(0x0A, name.encode()) for name in _ORDER}  # each map entry's key field


def shuffle_key(seed: int, file_id: str, track: int, offset: int) -> int:
    """A chunk's place in its split's shuffled order: the same whatever order files came in."""
    digest = hashlib.sha256(f"{seed}:{file_id}:{track}:{offset}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


# ------------------------------------------------------------------ TFRecord framing


def _masked_crc(data: bytes) -> int:
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def write_tfrecords(path: Path, records: Iterable[bytes]) -> int:
    """A GZIP TFRecord file of `records`, as tf.io.TFRecordWriter frames them; the count.

    The gzip header holds no name or time, so the bytes depend on the records alone."""
    count = 0
    block: list[bytes] = []
    size = 0
    from isal import igzip

    with (
        open(path, "wb") as raw,
        igzip.GzipFile(
            filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0
        ) as out,
    ):
        for record in records:
            length = _LEN.pack(len(record))
            block += [
                length,
                _CRC.pack(_masked_crc(length)),
                record,
                _CRC.pack(_masked_crc(record)),
            ]
            size += len(record) + 16
            count += 1
            if size >= WRITE_BLOCK:
                out.write(b"".join(block))
                block, size = [], 0
        out.write(b"".join(block))
    return count


def read_tfrecords(path: Path) -> Iterator[bytes]:
    """The records of a GZIP TFRecord file, their CRCs checked: what tf.data.TFRecordDataset
    gives, at a fraction of its cost per record when read one by one in Python."""
    from isal import igzip

    with igzip.open(path, "rb") as f:
        while head := f.read(12):
            if len(head) < 12 or _CRC.unpack_from(head, 8)[0] != _masked_crc(head[:8]):
                raise ValueError(f"{path}: a damaged record header")
            (size,) = _LEN.unpack_from(head)
            record = f.read(size)
            tail = f.read(4)
            if len(record) < size or len(tail) < 4 or _CRC.unpack(tail)[0] != _masked_crc(record):
                raise ValueError(f"{path}: a damaged record")
            yield record


def compression_ratio(sample: Sequence[bytes]) -> float:
    """Compressed over raw bytes of framed records, measured on a sample (at least 0.05)."""
    raw = b"".join(sample)
    if not raw:
        return 1.0
    from isal import isal_zlib

    return max(0.05, len(isal_zlib.compress(raw, GZIP_LEVEL)) / len(raw))


# ------------------------------------------------------------------ keyed runs


def write_runs(path: Path, by_split: dict[str, list[tuple[int, bytes]]]) -> dict[str, Any]:
    """Each split's (key, record) pairs, sorted by key then bytes, into one arrays file at
    `path` (keys, record ends, record bytes per split); its summary: records and bytes."""
    summary: dict[str, dict[str, int]] = {}
    arrays: dict[str, np.ndarray] = {}
    for split in sorted(by_split):
        pairs = sorted(by_split[split])
        data = b"".join(r for _, r in pairs)
        arrays[f"{split}.keys"] = np.array([k for k, _ in pairs], dtype=np.uint64)
        arrays[f"{split}.ends"] = np.cumsum([len(r) for _, r in pairs], dtype=np.uint64)
        arrays[f"{split}.data"] = np.frombuffer(data, dtype=np.uint8)
        summary[split] = {"count": len(pairs), "bytes": len(data)}
    storage.write_arrays(path, summary, arrays)
    return summary


class Runs:
    """A keyed-runs file, read in key ranges without loading it (memory-mapped)."""

    def __init__(self, path: Path) -> None:
        self.summary, self.arrays = storage.read_arrays(path)

    def range(self, split: str, lo: int, hi: int) -> list[tuple[int, bytes]]:
        """The split's records with lo <= key < hi, in key order."""
        keys = self.arrays.get(f"{split}.keys", np.empty(0, np.uint64))
        first = int(np.searchsorted(keys, np.uint64(lo)))
        last = len(keys) if hi >= KEY_SPACE else int(np.searchsorted(keys, np.uint64(hi)))
        return self._records(split, first, last)

    def sample(self, split: str, limit: int) -> list[bytes]:
        """The split's first records (by key) up to about `limit` bytes: a fair sample."""
        ends = self.arrays.get(f"{split}.ends", np.empty(0, np.uint64))
        last = int(np.searchsorted(ends, np.uint64(limit))) + 1
        return [record for _, record in self._records(split, 0, min(last, len(ends)))]

    def _records(self, split: str, first: int, last: int) -> list[tuple[int, bytes]]:
        if first >= last:
            return []
        keys, ends, data = (self.arrays[f"{split}.{name}"] for name in ("keys", "ends", "data"))
        bounds = [int(ends[first - 1]) if first else 0, *ends[first:last].tolist()]
        return [
            (int(key), data[bounds[i] : bounds[i + 1]].tobytes())
            for i, key in enumerate(keys[first:last].tolist())
        ]


def shard_ranges(n: int) -> list[tuple[int, int]]:
    """n equal ranges of the 64-bit key space, in order (also the fingerprint slices of
    splits.slice_bounds)."""
    edges = [i * KEY_SPACE // n for i in range(n + 1)]
    return list(itertools.pairwise(edges))


def shard_count(records_bytes: int, ratio: float, shard_bytes: int) -> int:
    """Shards of about shard_bytes each (compressed) for records of this many bytes."""
    return max(1, round(records_bytes * ratio / shard_bytes))


def write_shard(path: Path, runs: Sequence[Path], split: str, lo: int, hi: int) -> dict[str, Any]:
    """One shard: the split's records with keys in [lo, hi) from every run, in key order."""
    pairs: list[tuple[int, bytes]] = []
    for run in runs:
        pairs += Runs(run).range(split, lo, hi)
    pairs.sort()
    count = write_tfrecords(path, (record for _, record in pairs))
    return {
        "sha256": storage.file_digest(path, "sha256"),
        "bytes": path.stat().st_size,
        "chunks": count,
    }
