"""How fast the sequences stage writes shards and the reader feeds windows, side by side.

Builds a synthetic note table (cached under benchmarks/.cache/), runs the sequences stage on it,
then reads GZIP shards as training does: windows of 65 notes, stride 1, shuffled, transposed.
Prints windows/s for the training read and for plain variants, shard-writing notes/s, bytes on
disk per note, and (when pipelines/model.py exists) the ratio to the default model's windows/s.

    .venv/bin/python benchmarks/input_pipeline.py [--notes 2000000] [--seconds 10] [--shard-mb 64]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import itertools
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / ".cache" / "input_pipeline"
SEQ_LENGTH = 64  # windows of 65 notes


def synthetic_notes(total_notes: int, seed: int = 0) -> tuple[pa.Table, pa.Table]:
    """Files of 1-4 tracks of 100-900 notes: random-walk melodies, chords, rests, 120 bpm."""
    from pipelines import schema

    rng = np.random.default_rng(seed)
    lengths: list[int] = []
    while sum(lengths) < total_notes:
        lengths.append(int(rng.integers(100, 900)))
    n_tracks = len(lengths)
    track_file = np.cumsum(rng.random(n_tracks) < 0.4)  # about 2.5 tracks per file
    n_files = int(track_file[-1]) + 1
    ids = sorted(hashlib.md5(f"synthetic-{i}".encode()).hexdigest() for i in range(n_files))
    rows = np.repeat(np.arange(n_tracks), lengths)
    n = len(rows)
    first = np.r_[0, np.cumsum(lengths)[:-1]]
    walk = rng.integers(-3, 4, n)
    walk[first] = 0
    pitch_base = rng.integers(40, 80, n_tracks)[rows]
    pitch_offset = np.cumsum(walk) - np.repeat(np.cumsum(walk)[first], lengths)
    pitch = np.clip(pitch_base + pitch_offset, 0, 127)
    step = rng.choice([0.0, 0.25, 0.5, 0.5, 1.0, 1.0, 1.5, 2.0], n)
    step[first] = 0.0
    start_beat = np.cumsum(step) - np.repeat(np.cumsum(step)[first], lengths)
    duration = rng.choice([0.25, 0.5, 1.0, 2.0], n)
    file_index = track_file[rows]
    track_in_file = rows - np.searchsorted(track_file, track_file)[rows]
    notes = pa.table(
        {
            "file_id": pa.array(np.asarray(ids, dtype=object)[file_index], pa.string()),
            "track": track_in_file.astype(np.int16),
            "program": (track_in_file * 8).astype(np.int8),
            "is_drum": np.zeros(n, dtype=bool),
            "pitch": pitch.astype(np.int8),
            "velocity": rng.integers(40, 110, n).astype(np.int8),
            "start": (start_beat * 0.5).astype(np.float32),
            "end": ((start_beat + duration) * 0.5).astype(np.float32),
            "start_beat": start_beat.astype(np.float32),
            "end_beat": (start_beat + duration).astype(np.float32),
        },
        schema=schema.NOTES,
    )
    counts = np.bincount(file_index, minlength=n_files)
    files = pa.Table.from_pylist(
        [
            {
                "file_id": f,
                "path": f"synthetic/{f}.mid",
                "size": 0,
                "status": "ok",
                "error_type": None,
                "error": None,
                "n_notes": int(c),
                "n_tracks": 1,
                "duration_s": 0.0,
                "group": "synthetic",
            }
            for f, c in zip(ids, counts, strict=True)
        ],
        schema=schema.FILES,
    )
    return notes, files


def prepare(total_notes: int) -> Path:
    project = CACHE / f"notes-v2-{total_notes}"
    notes_dir = project / "data" / "notes"
    if not (notes_dir / "files.parquet").exists():
        notes, files = synthetic_notes(total_notes)
        tmp = project / "data" / ".notes-tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        # parts of 64 whole files, as the parse stage writes them (a part is a unit of work)
        ids = notes.column("file_id").to_numpy(zero_copy_only=False)
        starts = [0, *(np.flatnonzero(ids[1:] != ids[:-1]) + 1).tolist()]
        cuts = [*starts[::64], len(ids)]
        for i, (lo, hi) in enumerate(itertools.pairwise(cuts)):
            pq.write_table(notes.slice(lo, hi - lo), tmp / f"notes-{i:05d}.parquet")
        pq.write_table(files, tmp / "files.parquet")
        (project / "params.yaml").write_text((ROOT / "params.yaml").read_text())
        tmp.replace(notes_dir)
    return project


def write_shards(project: Path, shard_mb: float) -> tuple[dict[str, Any], float]:
    from pipelines import config, sequences

    cfg = config.load(
        project,
        [
            f"sequences.seq_length={SEQ_LENGTH}",
            "sequences.min_notes=65",
            f"sequences.shard_mb={shard_mb}",
        ],
    )
    started = time.perf_counter()
    sequences.run(cfg)
    return sequences_manifest(project), time.perf_counter() - started


def sequences_manifest(project: Path) -> dict[str, Any]:
    from pipelines import dataset

    return dataset.read_manifest(project / "data" / "shards")


def read_rate(shard_dir: Path, manifest: dict[str, Any], seconds: float, **kwargs: Any) -> float:
    """Windows per second delivered by the reader, after a warm-up."""
    from pipelines import dataset

    ds = dataset.windows(shard_dir, "train", manifest, repeat=True, **kwargs)
    it = iter(ds)
    for _ in range(20):  # warm up: fill the shuffle buffer and the prefetch
        next(it)
    count = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        count += int(next(it)["program"].shape[0])
    return count / (time.perf_counter() - started)


def model_rate(project: Path, manifest: dict[str, Any], seconds: float) -> float | None:
    """Windows/s the default model trains on here, if the train stage's model exists."""
    if importlib.util.find_spec("pipelines.model") is None:
        return None
    try:
        from pipelines import config, dataset, model

        cfg = config.load(project)
        keras_model = model.build_model(cfg.train, manifest)
        batches = dataset.windows(
            project / "data" / "shards", "train", manifest, batch_size=cfg.train.batch_size,
            shuffle=True, transpose=3, repeat=True,
        )  # fmt: skip
        fixed = [model.split_window(b, manifest, cfg.train.heads) for b in batches.take(8)]
        keras_model.train_on_batch(*fixed[0])  # compile and trace
        count = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            x, y = fixed[count % len(fixed)]
            keras_model.train_on_batch(x, y)
            count += 1
        return count * cfg.train.batch_size / (time.perf_counter() - started)
    except Exception as exc:  # the model is another stage's work in progress: report, go on
        print(f"model rate: not measured ({type(exc).__name__}: {exc})")
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notes", type=int, default=2_000_000, help="notes in the synthetic table")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per read measurement")
    parser.add_argument(
        "--shard-mb", type=float, default=64.0, help="sequences.shard_mb (small: many shards)"
    )
    args = parser.parse_args()

    project = prepare(args.notes)
    manifest, write_s = write_shards(project, args.shard_mb)
    shard_dir = project / "data" / "shards"
    splits = manifest["splits"]
    notes = sum(s["notes"] for s in splits.values())
    stored = sum(x["bytes"] for s in splits.values() for x in s["shards"])
    shards = sum(len(s["shards"]) for s in splits.values())
    print(f"synthetic corpus: {notes:,} selected notes; {shards} shards, {stored / 1e6:.1f} MB")
    print(f"the whole sequences stage (all cores): {notes / write_s:,.0f} notes/s")
    print(f"bytes on disk per note: {stored / notes:.2f}")

    variants = {
        "training read (batch 64, shuffled, transposed)": {
            "batch_size": 64, "shuffle": True, "transpose": 3},
        "training read (batch 256, shuffled, transposed)": {
            "batch_size": 256, "shuffle": True, "transpose": 3},
        "plain read (batch 256, in order, no transposition)": {"batch_size": 256},
    }  # fmt: skip
    rates = {
        name: read_rate(shard_dir, manifest, args.seconds, **kw) for name, kw in variants.items()
    }
    base = next(iter(rates.values()))
    for name, rate in rates.items():
        print(f"{name}: {rate:,.0f} windows/s ({rate / base:.2f}x the first)")
    print(f"target: >= 250,000 windows/s: {'met' if base >= 250_000 else 'NOT met'} (batch 64)")
    trained = model_rate(project, manifest, args.seconds)
    if trained:
        print(f"default model trains at {trained:,.0f} windows/s here: the reader is "
              f"{base / trained:,.0f}x faster")  # fmt: skip


if __name__ == "__main__":
    main()
