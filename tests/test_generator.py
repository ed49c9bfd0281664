"""The stateful batched sampler and the MLflow pyfunc generator: the step model computes what the
full model computes, the sampling controls do what they say, and the logged model generates
through `mlflow.pyfunc.load_model` and through `mlflow models serve`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
import requests
from conftest import FOUR_VOICES, tool_env

from pipelines.config import Train
from pipelines.errors import ParamsError
from pipelines.generator import (
    MusicGenerator,
    Notes,
    NoteSampler,
    Sampling,
    StepModel,
    draw_classes,
    penalise,
)
from pipelines.model import build_model
from pipelines.registry import log_generator

# A shards manifest as CONTRACTS.md describes it (only what the model and generator read).
MANIFEST: dict[str, Any] = {
    "source": "bach",
    "time_unit": "beats",
    "seq_length": 8,
    "tempo_bpm": 100.0,
    "bins": {
        "step": {"edges": [0.1, 0.4, 0.75, 1.5], "values": [0.0, 0.25, 0.5, 1.0, 2.0]},
        "duration": {"edges": [0.4, 0.75, 1.5, 3.0], "values": [0.25, 0.5, 1.0, 2.0, 4.0]},
        "velocity": {"edges": [50.0, 70.0, 90.0], "values": [40.0, 60.0, 80.0, 100.0]},
    },
    "parts": FOUR_VOICES,
}
TINY = {"units": 16, "embedding_dim": 4, "layers": 2}


def random_notes(batch: int, length: int, seed: int = 0) -> Notes:
    rng = np.random.default_rng(seed)
    return Notes(
        rng.integers(40, 90, (batch, length)),
        rng.choice([0.0, 0.25, 0.5, 1.0, 2.0], (batch, length)),
        rng.choice([0.25, 0.5, 1.0, 3.0], (batch, length)),
        rng.integers(30, 120, (batch, length)),
        rng.integers(0, 4, (batch, length)),
    )


@pytest.fixture(scope="module", params=["categorical", "regression"])
def model(request: pytest.FixtureRequest) -> Any:
    """A two-layer model of each head kind, built by the train stage's builder (random weights)."""
    return build_model(Train(heads=request.param, **TINY), MANIFEST)


def test_stateful_logits_equal_the_full_model_on_the_sequence_so_far(model: Any) -> None:
    notes = random_notes(batch=3, length=14)
    stepped, _ = StepModel(model, MANIFEST).run(notes)
    for b in range(3):
        for t in range(len(notes)):
            so_far = notes.take((slice(b, b + 1), slice(0, t + 1))).as_inputs()
            for head, logits in model(so_far, training=False).items():
                full = np.asarray(logits)[0]
                full = full[-1] if full.ndim == 2 else full  # categorical: every position
                np.testing.assert_allclose(stepped[head][b, t], full, atol=1e-5, rtol=1e-5)


def test_the_same_seed_gives_the_same_pieces_and_another_seed_others(model: Any) -> None:
    sampler = NoteSampler(model, MANIFEST)
    primer = random_notes(batch=4, length=6, seed=1)
    sampling = Sampling.with_temperature(1.0, top_p=0.9, repetition_penalty=1.3)

    def pieces(seed: int) -> list[Notes]:
        return sampler.generate(primer, sampling, np.random.default_rng(seed), notes=20)

    first, again, other = pieces(5), pieces(5), pieces(6)
    assert all(len(p) == 6 + 20 for p in first)
    for a, b in zip(first, again, strict=True):
        for k in ("pitch", "step", "duration", "velocity"):
            np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    assert any(not np.array_equal(a.pitch, b.pitch) for a, b in zip(first, other, strict=True))
    for b, piece in enumerate(first):
        np.testing.assert_array_equal(piece.pitch[:6], primer.pitch[b])
        assert piece.pitch.min() >= 0 and piece.pitch.max() <= 127
        if sampler.categorical:  # the bins' representative values, velocities in 1..127
            assert set(piece.step[6:]) <= set(MANIFEST["bins"]["step"]["values"])
            assert set(piece.velocity[6:]) <= {40, 60, 80, 100}
        else:  # regression: times kept >= 0, velocity the primer's mean
            assert (piece.step[6:] >= 0).all() and (piece.duration[6:] >= 0).all()
            assert len(set(piece.velocity[6:])) == 1


def test_parts_are_drawn_and_a_piece_without_primer_starts_from_the_model(model: Any) -> None:
    sampler = NoteSampler(model, MANIFEST)
    empty = Notes(
        **{k: np.zeros((3, 0)) for k in ("pitch", "step", "duration", "velocity", "part")}
    )
    pieces = sampler.generate(
        empty, Sampling.with_temperature(1.0), np.random.default_rng(0), notes=12
    )
    for piece in pieces:
        assert len(piece) == 12 and piece.part.dtype == np.int64
        assert piece.part.min() >= 0 and piece.part.max() < 68
    if sampler.categorical:  # an untrained part head spreads its draws over many parts
        assert len(set(np.concatenate([p.part for p in pieces]).tolist())) > 4
    else:  # the tutorial's heads predict no part: the piece stays in part 0
        assert all(set(p.part.tolist()) == {0} for p in pieces)


STYLED = {**MANIFEST, "groups": {"bach": {"train": 9}, "palestrina": {"train": 9}}}


def test_a_styled_model_steps_as_the_full_model_and_its_style_changes_the_music() -> None:
    model = build_model(Train(condition="group", min_group_files=1, **TINY), STYLED)
    notes = random_notes(batch=2, length=6)
    style = np.array([1, 2])
    stepped, _ = StepModel(model, STYLED).run(notes, style=style)
    inputs = notes.as_inputs() | {"style": np.repeat(style[:, None].astype(np.int32), 6, axis=1)}
    full = model(inputs, training=False)["pitch"].numpy()
    np.testing.assert_allclose(stepped["pitch"], full, atol=1e-5, rtol=1e-5)
    # the same notes in another style: other predictions at every step
    restyled, _ = StepModel(model, STYLED).run(notes, style=style[::-1])
    assert not np.allclose(stepped["pitch"], restyled["pitch"], atol=1e-4)
    sampler = NoteSampler(model, STYLED)
    sampling = Sampling.with_temperature(1.0)

    def pitches(styles: list[int]) -> np.ndarray:
        pieces = sampler.generate(
            notes, sampling, np.random.default_rng(0), notes=16, style=np.array(styles)
        )
        return np.stack([p.pitch for p in pieces])

    np.testing.assert_array_equal(pitches([1, 2]), pitches([1, 2]))  # a seed fixes the music


def test_length_in_seconds_trims_each_piece(model: Any) -> None:
    sampler = NoteSampler(model, MANIFEST)
    primer = random_notes(batch=3, length=4, seed=2)
    pieces = sampler.generate(
        primer, Sampling.with_temperature(1.0), np.random.default_rng(0), seconds=4.0
    )
    for piece in pieces:
        onsets = np.cumsum(piece.step[4:]) * 60 / MANIFEST["tempo_bpm"]
        assert len(onsets) >= 1 and (onsets < 4.0).all()


def draw(logits: np.ndarray, u: np.ndarray, **settings: Any) -> np.ndarray:
    import tensorflow as tf

    s = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "greedy": False} | settings
    return np.asarray(
        draw_classes(
            tf.constant(logits, tf.float32),
            tf.constant(u, tf.float32),
            tf.constant(s["temperature"], tf.float32),
            tf.constant(s["top_k"], tf.int32),
            tf.constant(s["top_p"], tf.float32),
            tf.constant(s["greedy"]),
        )
    )


def test_sampling_controls() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(400, 12)) * 2
    u = rng.random(400)
    best = logits.argmax(axis=1)
    top3 = np.argsort(-logits, axis=1)[:, :3]
    np.testing.assert_array_equal(draw(logits, u, greedy=True), best)
    np.testing.assert_array_equal(draw(logits, u, top_k=1), best)
    np.testing.assert_array_equal(draw(logits, u, top_p=1e-6), best)
    picked = draw(logits, u, top_k=3)
    assert all(p in row for p, row in zip(picked, top3, strict=True))
    assert len(set((picked[:, None] == top3).argmax(axis=1))) == 3  # not only the best
    # The nucleus: classes outside the smallest set holding top_p of the mass never come up.
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    ranked = np.sort(p, axis=1)[:, ::-1]
    need = (np.cumsum(ranked, axis=1) < 0.6).sum(axis=1) + 1
    picked = draw(logits, u, top_p=0.6)
    rank = (p > p[np.arange(400), picked][:, None]).sum(axis=1)
    assert (rank < need).all()
    # A low temperature concentrates the draws on the best class.
    cold = (draw(logits, u, temperature=0.05) == best).mean()
    warm = (draw(logits, u, temperature=1.0) == best).mean()
    assert cold > 0.9 > warm


def test_repetition_penalty_moves_away_from_recent_pitches() -> None:
    import tensorflow as tf

    logits = tf.constant([[0.0] * 60 + [3.0, 2.5, -1.0] + [0.0] * 65])
    recent = tf.constant([[60, 62, -1]])
    out = np.asarray(penalise(logits, recent, tf.constant(2.0)))[0]
    assert out[60] == 1.5 and out[61] == 2.5 and out[62] == -2.0
    assert out.argmax() == 61


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"temperature": {"pitch": -1.0}}, "temperature must be > 0"),
        ({"temperature": 1.0, "top_p": 0.0}, "top_p must be in (0, 1]"),
        ({"temperature": 1.0, "top_p": 1.5}, "top_p must be in (0, 1]"),
    ],
)
def test_bad_sampling_settings_are_one_line_errors(settings: dict, message: str) -> None:
    temperature = settings.pop("temperature")
    with pytest.raises(ParamsError, match=message.replace("(", r"\(").replace("]", r"\]")):
        Sampling.with_temperature(temperature, **settings)


# --------------------------------------------------------------------------- the pyfunc


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    model = build_model(Train(units=16, embedding_dim=4), MANIFEST)
    folder = tmp_path / "model"
    folder.mkdir()
    model.save(folder / "model.keras")
    (folder / "manifest.json").write_text(json.dumps(MANIFEST))
    return folder


@pytest.fixture
def registered(model_dir: Path, mlflow_uri: str) -> str:
    """The generator logged into a run and registered as version 1 of `tiny-generator`."""
    mlflow.set_experiment("lakhflow")
    with mlflow.start_run():
        info = log_generator(model_dir, registered_model_name="tiny-generator")
    assert info.registered_model_version == 1
    return "models:/tiny-generator/1"


@pytest.mark.slow
def test_the_registered_pyfunc_generates(registered: str) -> None:
    loaded = mlflow.pyfunc.load_model(registered)
    request = loaded.input_example.copy()
    request = request.loc[[0, 0]].reset_index(drop=True)
    request.loc[1, ["seed", "notes", "primer_pitches"]] = [7, 5, None]
    notes = loaded.predict(request)
    assert list(notes.columns) == [
        "piece", "pitch", "step", "duration", "velocity", "part", "start", "end"
    ]  # fmt: skip
    assert notes.groupby("piece").size().to_dict() == {0: 16, 1: 5}
    assert notes["part"].str.fullmatch(r"[a-z_]+-[1-4]").all()  # named parts of the vocabulary
    assert notes["pitch"].between(0, 127).all() and (notes["end"] >= notes["start"]).all()
    assert notes.equals(loaded.predict(request))  # the seed fixes the notes
    with pytest.raises(ParamsError, match="unknown group 'bach'; the model knows none"):
        loaded.predict(request.assign(group="bach"))  # this model was trained without styles
    generator = loaded.unwrap_python_model()
    assert isinstance(generator, MusicGenerator)
    assert generator.keras_model.get_layer("lstm_0").units == 16  # the Keras model, one call away


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_notes(registered: str, mlflow_uri: str) -> None:
    port = free_port()
    server = subprocess.Popen(
        ["mlflow", "models", "serve", "-m", registered, "--env-manager", "local",
         "--host", "127.0.0.1", "-p", str(port)],
        env=tool_env(MLFLOW_TRACKING_URI=mlflow_uri),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: the server and its workers stop together
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 150
        while True:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            try:
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "the model server did not start"
            time.sleep(1)
        request = {"dataframe_records": [{"notes": 12, "temperature": 0.8, "seed": 3,
                                          "primer_pitches": "60 64 67"}]}  # fmt: skip
        answer = requests.post(f"http://127.0.0.1:{port}/invocations", json=request, timeout=60)
        assert answer.status_code == 200, answer.text
        notes = answer.json()["predictions"]
        assert len(notes) == 12 and all(0 <= n["pitch"] <= 127 for n in notes)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
