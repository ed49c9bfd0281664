"""The reader of the sequences stage's shards: track chunks in, training windows out (tf.data).

`windows(shard_dir, split, manifest, ...)` frames the chunks of a split into windows of
`seq_length + 1` notes, shuffled, transposed (training only) and batched for Keras;
`chunks(shard_dir, split)` gives the chunks themselves as numpy arrays, for tests and evaluation.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from pipelines import storage
from pipelines.config import MANIFEST_FILE
from pipelines.errors import LakhflowError
from pipelines.schema import CHUNK_CONTEXT_FEATURES, CHUNK_NOTE_FEATURES, NOTE_FEATURES

CHUNKS_PER_BLOCK = 16  # chunks framed together; a block's windows are shuffled among themselves
CHUNK_SHUFFLE_BUFFER = 256  # chunks (of up to chunk_notes notes) in the shuffle buffer
MAX_PITCH = 127

_DTYPES = {"int64": tf.int64, "float": tf.float32}
_PARSE_SPEC = {  # what the model reads of the shard writer's chunks (schema.CHUNK_*): the notes
    # with their parts, the program and the file's group
    **{name: tf.io.RaggedFeature(_DTYPES[CHUNK_NOTE_FEATURES[name]]) for name in NOTE_FEATURES},
    "program": tf.io.FixedLenFeature([], _DTYPES[CHUNK_CONTEXT_FEATURES["program"]]),
    "group": tf.io.FixedLenFeature([], tf.string, default_value=""),
}


def read_manifest(shard_dir: Path) -> dict[str, Any]:
    path = Path(shard_dir) / MANIFEST_FILE
    if not path.exists():
        raise LakhflowError(f"{path} not found; run `lakhflow sequences` first")
    manifest: dict[str, Any] = storage.read_json(path)
    return manifest


def shard_paths(shard_dir: Path, split: str, manifest: dict[str, Any] | None = None) -> list[Path]:
    """The split's shards, in name order (the manifest's list when given)."""
    shard_dir = Path(shard_dir)
    if manifest is not None:
        if split not in manifest["splits"]:
            raise LakhflowError(f"no split {split!r} in the manifest (train, val, test)")
        return [shard_dir / s["name"] for s in manifest["splits"][split]["shards"]]
    return sorted(shard_dir.glob(f"{split}-*-of-*.tfrecord.gz"))


def chunks(shard_dir: Path, split: str, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """The chunks of a split in shard order (every one, or the first `limit`: a fixed random
    sample, as each split's chunks lie in shuffled order): note arrays (pitch, step, duration,
    velocity, part) plus program, file_id, group, track (-1: a merged score), offset."""
    from tensorflow.core.example import example_pb2

    from pipelines.shards import read_tfrecords

    records = (r for path in shard_paths(shard_dir, split) for r in read_tfrecords(path))
    for record in itertools.islice(records, limit):
        feature = example_pb2.Example.FromString(record).features.feature
        yield {
            "part": np.asarray(feature["part"].int64_list.value, dtype=np.int32),
            "group": feature["group"].bytes_list.value[0].decode(),
            "pitch": np.asarray(feature["pitch"].int64_list.value, dtype=np.int32),
            "step": np.asarray(feature["step"].float_list.value, dtype=np.float32),
            "duration": np.asarray(feature["duration"].float_list.value, dtype=np.float32),
            "velocity": np.asarray(feature["velocity"].int64_list.value, dtype=np.int32),
            "program": int(feature["program"].int64_list.value[0]),
            "file_id": feature["file_id"].bytes_list.value[0].decode(),
            "track": int(feature["track"].int64_list.value[0]),
            "offset": int(feature["offset"].int64_list.value[0]),
        }


def _frame(block: dict[str, Any], window: int, stride: int) -> dict[str, tf.Tensor]:
    """All windows of a block of chunks at once: gathers from the chunks' concatenated notes."""
    pitch = block["pitch"]
    lengths = tf.cast(pitch.row_lengths(), tf.int64)
    per_chunk = tf.maximum(tf.constant(0, tf.int64), (lengths - window) // stride + 1)
    chunk_of = tf.repeat(tf.range(tf.size(lengths, out_type=tf.int64)), per_chunk)
    within = tf.ragged.range(per_chunk).flat_values * stride
    starts = tf.gather(tf.cast(pitch.row_starts(), tf.int64), chunk_of) + within
    index = starts[:, None] + tf.range(window, dtype=tf.int64)[None, :]
    out = {name: tf.gather(block[name].flat_values, index) for name in NOTE_FEATURES}
    for name in ("pitch", "velocity", "part"):
        out[name] = tf.cast(out[name], tf.int32)
    out["program"] = tf.cast(tf.gather(block["program"], chunk_of), tf.int32)
    out["group"] = tf.gather(block["group"], chunk_of)
    return out


def _transpose(
    batch: dict[str, tf.Tensor], semitones: int, seed: tf.Tensor
) -> dict[str, tf.Tensor]:
    """Shift each window by one random amount in ±semitones, narrowed so it stays in 0..127."""
    pitch = batch["pitch"]
    low = tf.maximum(-semitones, -tf.reduce_min(pitch, axis=1))
    high = tf.minimum(semitones, MAX_PITCH - tf.reduce_max(pitch, axis=1))
    u = tf.random.stateless_uniform(tf.shape(low), seed=seed)
    shift = low + tf.cast(tf.floor(u * tf.cast(high - low + 1, tf.float32)), tf.int32)
    shift = tf.minimum(shift, high)  # u is < 1, but guard the float rounding anyway
    return {**batch, "pitch": pitch + shift[:, None]}


def _shuffle_windows(batch: dict[str, tf.Tensor], seed: tf.Tensor) -> dict[str, tf.Tensor]:
    order = tf.argsort(tf.random.stateless_uniform(tf.shape(batch["program"]), seed=seed))
    return {name: tf.gather(value, order) for name, value in batch.items()}


def windows(
    shard_dir: Path,
    split: str,
    manifest: dict[str, Any],
    *,
    batch_size: int | None = None,
    stride: int | None = None,
    shuffle: bool = False,
    transpose: int = 0,
    seed: int = 0,
    repeat: bool = False,
    groups: Sequence[str] | None = None,
) -> tf.data.Dataset:
    """Windows of seq_length+1 notes cut from the split's chunks; never across a chunk's end.

    Each window carries its notes (with their parts), its program and its file's `group`; with
    `groups` (a style vocabulary whose first entry is the pool, `other`) also its `style`: the
    group's index in it, 0 for a group not listed.
    Transposition applies to the train split only: val and test are read as they are.
    """
    window = int(manifest["seq_length"]) + 1
    stride = int(stride or manifest["stride"])
    if stride < 1:
        raise LakhflowError(f"stride must be >= 1 (got {stride})")
    semitones = int(transpose) if split == "train" else 0
    paths = [str(p) for p in shard_paths(Path(shard_dir), split, manifest)]
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise LakhflowError(f"shard {missing[0]} is missing; run `lakhflow sequences` again")

    files = tf.data.Dataset.from_tensor_slices(
        tf.constant(paths, dtype=tf.string, shape=[len(paths)])
    )
    if shuffle and len(paths) > 1:
        files = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        files = files.repeat()
    records = files.interleave(
        lambda path: tf.data.TFRecordDataset(path, compression_type="GZIP"),
        cycle_length=max(1, min(len(paths), 4)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    if shuffle:
        records = records.shuffle(CHUNK_SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
    blocks = records.batch(CHUNKS_PER_BLOCK)
    # one random seed per block keeps the transposition and window order reproducible
    seeds = tf.data.Dataset.random(seed=seed).batch(2)
    stream = tf.data.Dataset.zip((blocks, seeds))

    table = None
    if groups is not None:
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(list(groups), tf.string), tf.range(len(groups), dtype=tf.int32)
            ),
            default_value=0,
        )

    def to_windows(serialized: tf.Tensor, block_seed: tf.Tensor) -> dict[str, tf.Tensor]:
        batch = _frame(tf.io.parse_example(serialized, _PARSE_SPEC), window, stride)
        if table is not None:
            batch["style"] = table.lookup(batch["group"])
        if semitones > 0:
            batch = _transpose(batch, semitones, block_seed)
        if shuffle:
            batch = _shuffle_windows(batch, tf.reverse(block_seed, [0]))
        return batch

    framed = stream.map(to_windows, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    out = framed.rebatch(batch_size) if batch_size else framed.unbatch()
    return out.prefetch(tf.data.AUTOTUNE)
