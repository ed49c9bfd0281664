"""Notes/s of three ways to generate 64 pieces of 256 notes with the default model architecture.

1. the generate stage's sampler: all pieces in one batch, one LSTM step per note with the
   state carried, the sampling loop inside one TensorFlow graph;
2. the TensorFlow tutorial's way: one piece at a time, `model.predict` on the whole window for
   every note (so slow that a few notes are timed and the rate extrapolated: said below);
3. the whole window re-run for every note, but with all 64 pieces in one batch (one compiled
   call per note: model, the same sampling ops, the window shifted inside the graph).

Random weights: speed does not depend on training. Run: `.venv/bin/python benchmarks/generate.py`.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

from pipelines.config import Generate, Sequences, Train
from pipelines.generate import sampling_of
from pipelines.generator import FEATURES, HELD, Notes, NoteSampler, Sampling
from pipelines.model import build_model

PIECES = 64
NOTES = 256
LONG_NOTES = 1024
SEQ_LENGTH = Sequences().seq_length  # the default window the model is trained on (32)
REPEATS = 3
TUTORIAL_PIECES = 2
TUTORIAL_NOTES = 12


def default_manifest() -> dict[str, Any]:
    """Bins shaped as the defaults make them: 16 step/duration classes, 8 velocity classes."""
    times = np.geomspace(0.0625, 4.0, 15).tolist()
    return {
        "time_unit": "beats",
        "seq_length": SEQ_LENGTH,
        "tempo_bpm": 100.0,
        "bins": {
            "step": {"edges": [0.01, *times[1:]], "values": [0.0, *times]},
            "duration": {"edges": times, "values": [0.05, *[t * 1.2 for t in times]]},
            "velocity": {
                "edges": [30.0, 45.0, 60.0, 70.0, 80.0, 90.0, 105.0],
                "values": [20.0, 38.0, 52.0, 65.0, 75.0, 85.0, 97.0, 115.0],
            },
        },
        "parts": {"max_rank": 4, "size": 68, "vocabulary": []},
    }


def primers(seed: int = 0) -> Notes:
    rng = np.random.default_rng(seed)
    shape = (PIECES, SEQ_LENGTH)
    return Notes(
        rng.integers(48, 84, shape),
        rng.choice([0.0, 0.25, 0.5, 1.0], shape),
        rng.choice([0.25, 0.5, 1.0, 2.0], shape),
        rng.integers(50, 110, shape),
        rng.integers(0, 4, shape),
    )


def stateful_rate(sampler: NoteSampler, sampling: Sampling, notes: int) -> list[float]:
    rates = []
    for seed in range(REPEATS):
        started = time.perf_counter()
        sampler.generate(primers(), sampling, np.random.default_rng(seed), notes=notes)
        rates.append(PIECES * notes / (time.perf_counter() - started))
    return rates


def tutorial_rate(model: Any, manifest: dict[str, Any]) -> float:
    """Per piece, model.predict on the full window for every note; pitch, step, duration and
    velocity drawn with a plain softmax in numpy (cheaper than the stage's sampling)."""
    rng = np.random.default_rng(0)
    values = {h: np.asarray(manifest["bins"][h]["values"]) for h in manifest["bins"]}
    window = primers().take(slice(0, TUTORIAL_PIECES))
    model.predict(window.take(slice(0, 1)).as_inputs(), verbose=0)  # build predict's function
    started = time.perf_counter()
    for piece in range(TUTORIAL_PIECES):
        notes = window.take(slice(piece, piece + 1))
        for _ in range(TUTORIAL_NOTES):
            out = model.predict(notes.as_inputs(), verbose=0)
            note = {}
            for head in FEATURES:
                z = out[head][0, -1].astype(np.float64)
                p = np.exp(z - z.max())
                k = rng.choice(len(p), p=p / p.sum())
                note[head] = values[head][k] if head in values else k
            notes = Notes(
                *(np.append(getattr(notes, f)[:, 1:], [[note[f]]], axis=1) for f in FEATURES)
            )
    return TUTORIAL_PIECES * TUTORIAL_NOTES / (time.perf_counter() - started)


def batched_window_rate(sampler: NoteSampler, sampling: Sampling, notes: int) -> list[float]:
    """All pieces in one batch, the full window re-run per note in one compiled call."""
    step_model = sampler.step_model
    model = step_model.model
    settings = sampling.tensors()

    @tf.function(reduce_retracing=True)
    def next_note(window: dict[str, Any], recent: Any, uniform: Any) -> Any:
        out = model(window, training=False)
        logits = {h: tf.cast(out[h][:, -1], tf.float32) for h in step_model.heads}
        held = {k: tf.zeros_like(recent[:, 0]) for k in HELD}
        note = step_model.draw_note(logits, recent, uniform, held, settings)
        window = {k: tf.concat([v[:, 1:], note[k][:, None]], axis=1) for k, v in window.items()}
        recent = tf.concat([recent[:, 1:], note["pitch"][:, None]], axis=1)
        return window, recent

    rates = []
    for seed in range(REPEATS):
        rng = np.random.default_rng(seed)
        window = {k: tf.constant(v) for k, v in primers().as_inputs().items()}
        recent = tf.constant(primers().pitch[:, -sampling.repetition_window :].astype(np.int32))
        heads = len(step_model.heads)
        next_note(window, recent, tf.constant(rng.random((heads, PIECES)), tf.float32))  # trace
        started = time.perf_counter()
        for _ in range(notes):
            uniform = tf.constant(rng.random((heads, PIECES)), tf.float32)
            window, recent = next_note(window, recent, uniform)
        window["pitch"].numpy()
        rates.append(PIECES * notes / (time.perf_counter() - started))
    return rates


def main() -> None:
    tf.keras.utils.set_random_seed(0)
    manifest = default_manifest()
    train = Train()
    model = build_model(train, manifest)
    sampler = NoteSampler(model, manifest)
    g = Generate()  # the default sampling settings
    sampling = sampling_of(g)
    print(
        f"model: {train.layers} LSTM layer(s) of {train.units} units, embeddings "
        f"{train.embedding_dim}, window {SEQ_LENGTH} notes; {PIECES} pieces x {NOTES} notes; "
        f"sampling top_p {g.top_p}, repetition penalty {g.repetition_penalty} over "
        f"{g.repetition_window} notes; {os.cpu_count()} CPU cores"
    )
    sampler.generate(primers(), sampling, np.random.default_rng(0), notes=16)  # first run
    # Interleave the variants so background load on a shared machine hits them alike.
    stateful, long, window = [], [], []
    for _ in range(2):
        stateful += stateful_rate(sampler, sampling, NOTES)
        long += stateful_rate(sampler, sampling, LONG_NOTES)
        window += batched_window_rate(sampler, sampling, NOTES)
    tutorial = tutorial_rate(model, manifest)

    best = {"stateful": max(stateful), "long": max(long), "window": max(window)}
    median = {
        "stateful": statistics.median(stateful),
        "long": statistics.median(long),
        "window": statistics.median(window),
    }
    rows = [
        ("stage: stateful, batched (256 notes)", "stateful"),
        ("stage: stateful, batched (1,024 notes)", "long"),
        ("full window re-run, 64 pieces batched", "window"),
    ]
    print(f"{'variant':<44}{'best notes/s':>14}{'median':>12}")
    for label, key in rows:
        print(f"{label:<44}{best[key]:>14,.0f}{median[key]:>12,.0f}")
    print(
        f"{'tutorial: per piece, model.predict per note':<44}{tutorial:>14,.1f}"
        f"{'':>12}  (timed on {TUTORIAL_PIECES} pieces x {TUTORIAL_NOTES} notes, extrapolated)"
    )
    vs_tutorial = best["stateful"] / tutorial
    vs_window = best["stateful"] / best["window"]
    long_ratio = best["long"] / best["stateful"]
    print(f"stage / tutorial:            {vs_tutorial:8.1f}x   (target >= 20x)")
    print(f"stage / batched full window: {vs_window:8.1f}x   (target >= 5x)")
    print(f"1,024-note / 256-note rate:  {long_ratio:8.2f}    (target within 20%: 0.80-1.20)")
    ok = vs_tutorial >= 20 and vs_window >= 5 and abs(long_ratio - 1) <= 0.2
    print("targets met" if ok else "TARGETS MISSED")


if __name__ == "__main__":
    main()
