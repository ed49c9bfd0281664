"""Training speed of the default model and of the TensorFlow tutorial's configuration, side by side.

Both train on synthetic windows (so the reader's speed is not measured): one warm-up epoch
each, then `--epochs` timed epochs taken in turns; prints windows/s, seconds per epoch, ratio.

    .venv/bin/python benchmarks/train.py [--windows 8192] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from pipelines.config import Train
from pipelines.model import build_model, choose_placement, split_window


@dataclass(frozen=True)
class Variant:
    name: str
    train: Train
    seq_length: int


def synthetic_manifest(bins: int = 16, velocity_bins: int = 8) -> dict[str, Any]:
    return {
        "bins": {
            "step": {"edges": np.geomspace(1e-3, 4, bins - 1).tolist()},
            "duration": {"edges": np.geomspace(1e-2, 8, bins - 1).tolist()},
            "velocity": {"edges": np.linspace(16, 112, velocity_bins - 1).tolist()},
        }
    }


def synthetic_windows(n: int, seq_length: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (n, seq_length + 1)
    return {
        "pitch": rng.integers(36, 90, shape).astype(np.int32),
        "step": rng.choice([0.0, 0.25, 0.5, 1.0], shape).astype(np.float32),
        "duration": rng.choice([0.25, 0.5, 1.0, 2.0], shape).astype(np.float32),
        "velocity": rng.integers(40, 110, shape).astype(np.int32),
    }


def prepare(variant: Variant, n_windows: int) -> tuple[Any, Any]:
    """The compiled model and its (cached) dataset, after one warm-up epoch (tracing)."""
    keras.utils.set_random_seed(0)
    manifest = synthetic_manifest()
    model = build_model(variant.train, manifest)
    heads = variant.train.heads
    ds = (
        tf.data.Dataset.from_tensor_slices(synthetic_windows(n_windows, variant.seq_length))
        .batch(variant.train.batch_size, drop_remainder=True)
        .map(lambda b: split_window(b, manifest, heads))
        .cache()
        .prefetch(tf.data.AUTOTUNE)
    )
    model.fit(ds, epochs=1, verbose=0, shuffle=False)
    return model, ds


def timed_epoch(model: Any, ds: Any) -> float:
    started = time.perf_counter()
    model.fit(ds, epochs=1, verbose=0, shuffle=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=8192, help="windows per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (after a warm-up)")
    args = parser.parse_args()

    placement = choose_placement(Train().mixed_precision)
    default = Train()
    variants = [
        Variant("default (categorical)", default, seq_length=32),
        Variant(
            "tutorial (regression)",
            Train(heads="regression", layers=1, units=128, batch_size=64, learning_rate=0.005),
            seq_length=25,
        ),
    ]
    print(f"device: {placement.device}; mixed precision: {placement.mixed_precision}")
    print(f"{args.windows} windows per epoch, 1 warm-up + {args.epochs} timed epochs (median)\n")
    header = ("variant", "layers x units", "T", "batch", "windows/s", "s/epoch")
    print("{:<24} {:>14} {:>4} {:>6} {:>10} {:>8}".format(*header))
    prepared = [prepare(v, args.windows) for v in variants]
    # Epochs of the variants alternate, so a busy moment on a shared machine hits both alike.
    seconds: list[list[float]] = [[] for _ in variants]
    for _ in range(args.epochs):
        for i, (model, ds) in enumerate(prepared):
            seconds[i].append(timed_epoch(model, ds))
    results = []
    for v, times in zip(variants, seconds, strict=True):
        per_epoch = float(np.median(times))
        windows = (args.windows // v.train.batch_size) * v.train.batch_size
        rate = windows / per_epoch
        results.append(rate)
        shape = f"{v.train.layers} x {v.train.units}"
        print(
            f"{v.name:<24} {shape:>14} {v.seq_length:>4} {v.train.batch_size:>6} "
            f"{rate:>10,.0f} {per_epoch:>8.2f}"
        )
    print(f"\ndefault / tutorial windows/s: {results[0] / results[1]:.2f}")
    manifest = Path("data/shards/manifest.json")
    if manifest.exists():
        windows = int(json.loads(manifest.read_text())["splits"]["train"]["windows"])
        pairs = zip(variants, results, strict=True)
        epochs = ", ".join(f"{v.name} {windows / r:.0f} s" for v, r in pairs)
        print(f"an epoch of {manifest.parent}'s train split ({windows:,} windows): {epochs}")


if __name__ == "__main__":
    main()
