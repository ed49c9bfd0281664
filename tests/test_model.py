"""The model: its layers and shapes, binning inside the model, window splitting, the losses
(the tutorial's regression loss checked by hand), placement and the resumable early stopping."""

from __future__ import annotations

import json
import math
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import FOUR_VOICES

from pipelines import model as M
from pipelines.config import Train
from pipelines.train import Progress, resume

MANIFEST = {
    "seq_length": 8,
    "bins": {
        "step": {"edges": [1e-6, 0.3, 0.6, 1.5], "values": [0.0, 0.25, 0.5, 1.0, 2.0]},
        "duration": {"edges": [0.3, 0.6, 1.5], "values": [0.25, 0.5, 1.0, 2.0]},
        "velocity": {"edges": [50.0, 70.5, 90.0], "values": [40, 60, 80, 100]},
    },
    "parts": FOUR_VOICES,
}


def window_batch(batch: int = 4, notes: int = 9, seed: int = 0) -> dict[str, np.ndarray]:
    out = M.example_inputs(batch, notes, seed)
    out["program"] = np.zeros(batch, np.int32)
    return out


def tiny(**kw: object) -> Train:
    return Train(**{"units": 8, "embedding_dim": 4, **kw})


def test_categorical_model_layers_and_shapes() -> None:
    model = M.build_model(tiny(layers=2), MANIFEST)
    assert set(model.input) == {"pitch", "step", "duration", "velocity", "part"}
    assert [layer.name for layer in model.layers if isinstance(layer, keras.layers.LSTM)] == [
        "lstm_0",
        "lstm_1",
    ]
    for head in ("pitch", "step", "duration", "velocity", "part"):
        assert isinstance(model.get_layer(head), keras.layers.Dense)
    out = model(M.example_inputs(3, 7))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "pitch": (3, 7, 128),
        "step": (3, 7, 5),
        "duration": (3, 7, 4),
        "velocity": (3, 7, 4),
        "part": (3, 7, 68),
    }
    for layer in model.layers:
        if isinstance(layer, keras.layers.LSTM):
            conf = layer.get_config()
            # the conditions under which Keras picks the cuDNN kernel on a GPU
            assert conf["activation"] == "tanh" and conf["recurrent_activation"] == "sigmoid"
            assert conf["recurrent_dropout"] == 0 and not conf["unroll"] and conf["use_bias"]


def test_binning_inside_the_model_equals_the_targets_binning() -> None:
    model = M.build_model(tiny(), MANIFEST)
    for head in ("step", "duration", "velocity"):
        edges = np.asarray(MANIFEST["bins"][head]["edges"], np.float32)
        # values exactly on, just below and just above every edge, plus the extremes
        probes = np.concatenate([edges, np.nextafter(edges, -np.inf), edges + 1e-3, [-1, 0, 1e9]])
        dtype = np.int32 if head == "velocity" else np.float32
        probes = probes.astype(dtype)[None, :]
        binned = M.to_classes(probes, M.bin_edges(MANIFEST, head))
        expected = np.searchsorted(edges, probes.astype(np.float32), side="right")
        np.testing.assert_array_equal(binned, expected)
        layer = model.get_layer(f"{head}_bins")
        np.testing.assert_array_equal(np.asarray(layer(probes)), expected)
        np.testing.assert_array_equal(
            np.asarray(M.to_classes(tf.constant(probes), edges)), expected
        )
    # class 0 of the step bins holds exactly the chords (step 0)
    assert M.to_classes(
        np.array([0.0, 0.1], np.float32), M.bin_edges(MANIFEST, "step")
    ).tolist() == [0, 1]


def test_split_window_targets_are_the_next_notes_binned() -> None:
    batch = window_batch()
    inputs, targets = M.split_window(batch, MANIFEST)
    assert set(inputs) == {"pitch", "step", "duration", "velocity", "part"}
    assert inputs["pitch"].shape == (4, 8)
    np.testing.assert_array_equal(targets["pitch"], batch["pitch"][:, 1:])
    np.testing.assert_array_equal(targets["part"], batch["part"][:, 1:])
    edges = np.float32(MANIFEST["bins"]["duration"]["edges"])
    np.testing.assert_array_equal(
        targets["duration"], np.searchsorted(edges, batch["duration"][:, 1:], side="right")
    )
    # the same split as a tf.data map gives the same arrays
    ds = tf.data.Dataset.from_tensors(batch).map(lambda b: M.split_window(b, MANIFEST))
    tf_inputs, tf_targets = next(iter(ds))
    for head in targets:
        np.testing.assert_array_equal(tf_targets[head].numpy(), targets[head])
    np.testing.assert_array_equal(tf_inputs["step"].numpy(), inputs["step"])


def test_a_group_conditioned_model_sees_its_style_at_every_step() -> None:
    manifest = {**MANIFEST, "groups": {
        "bach": {"train": 9, "val": 1, "test": 1},
        "palestrina": {"train": 8, "val": 1, "test": 1},
        "trecento": {"train": 3, "val": 0, "test": 0},
        "": {"train": 2, "val": 0, "test": 0},
    }}  # fmt: skip
    train = tiny(condition="group", min_group_files=8)
    assert M.style_groups(train, manifest) == ["other", "bach", "palestrina"]
    assert M.style_groups(tiny(), manifest) == []  # condition: none
    model = M.build_model(train, manifest)
    assert set(model.input) == {"pitch", "step", "duration", "velocity", "part", "style"}
    batch = {**window_batch(), "style": np.array([0, 1, 2, 1], np.int32)}
    inputs, _ = M.split_window(batch, manifest)
    np.testing.assert_array_equal(inputs["style"], np.repeat(batch["style"][:, None], 8, axis=1))
    # the style changes the prediction: the same notes in another style give other logits
    other = {**inputs, "style": np.roll(inputs["style"], 1, axis=0)}
    a = model(inputs)["pitch"].numpy()
    b = model(other)["pitch"].numpy()
    assert not np.allclose(a[1], b[1])

    _, last = M.split_window(batch, MANIFEST, "regression")
    assert last["pitch"].shape == (4,) and last["step"].shape == (4, 1)
    np.testing.assert_array_equal(last["duration"][:, 0], batch["duration"][:, -1])


def test_regression_model_has_the_tutorials_shapes_and_loss() -> None:
    keras.utils.set_random_seed(1)
    model = M.build_model(tiny(heads="regression"), MANIFEST)
    inputs, targets = M.split_window(window_batch(batch=5, notes=26), MANIFEST, "regression")
    out = model.predict(inputs, verbose=0)
    assert {k: v.shape for k, v in out.items()} == {
        "pitch": (5, 128),
        "step": (5, 1),
        "duration": (5, 1),
    }
    # the tutorial's loss, by hand: 0.05 * cross-entropy(pitch) + Σ mse + 10·max(-y_pred, 0)
    logits = out["pitch"].astype(np.float64)
    log_p = logits - logits.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    ce = -log_p[np.arange(5), targets["pitch"]].mean()

    def pressure(y: np.ndarray, p: np.ndarray) -> float:
        return float(np.mean((y - p) ** 2 + 10 * np.maximum(-p, 0)))

    by_hand = (
        0.05 * ce
        + pressure(targets["step"], out["step"])
        + pressure(targets["duration"], out["duration"])
    )
    result = model.evaluate(inputs, targets, batch_size=5, verbose=0, return_dict=True)
    assert result["loss"] == pytest.approx(by_hand, rel=1e-5)
    assert result["pitch_loss"] == pytest.approx(ce, rel=1e-5)


def test_mse_with_positive_pressure_pushes_negative_predictions_up() -> None:
    y_true = tf.constant([[1.0], [0.5]])
    y_pred = tf.constant([[0.5], [-0.5]])
    # ((0.5)^2 + 0) and ((1.0)^2 + 10 * 0.5), averaged
    assert float(M.mse_with_positive_pressure(y_true, y_pred)) == pytest.approx((0.25 + 6.0) / 2)


def test_categorical_loss_uses_the_params_loss_weights() -> None:
    weights = {"pitch": 1.0, "step": 0.5, "duration": 2.0, "velocity": 0.0, "part": 0.25}
    model = M.build_model(tiny(loss_weights=weights), MANIFEST)
    inputs, targets = M.split_window(window_batch(), MANIFEST)
    result = model.evaluate(inputs, targets, batch_size=4, verbose=0, return_dict=True)
    total = sum(w * result[f"{h}_loss"] for h, w in weights.items())
    assert result["loss"] == pytest.approx(total, rel=1e-5)
    assert {f"{h}_accuracy" for h in weights} <= set(result)


def test_saved_model_loads_and_predicts_the_same(tmp_path: Path) -> None:
    model = M.build_model(tiny(heads="regression"), MANIFEST)
    model.optimizer.build(model.trainable_variables)
    inputs = M.example_inputs(2, 6)
    model.save(tmp_path / "model.keras")
    loaded = M.load_model(tmp_path / "model.keras")
    for head, value in model(inputs).items():
        np.testing.assert_allclose(loaded(inputs)[head], value, rtol=1e-6)


def test_cpu_placement_keeps_float32_unless_asked() -> None:
    try:
        placement = M.choose_placement("auto")
        assert not placement.mixed_precision and placement.replicas == 1
        assert placement.device.startswith("CPU")
        assert keras.mixed_precision.global_policy().name == "float32"
        assert M.choose_placement("on").mixed_precision
        model = M.build_model(tiny(), MANIFEST)
        assert model.get_layer("lstm_0").compute_dtype == "float16"
        assert model.get_layer("pitch").compute_dtype == "float32"  # logits stay float32
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_early_stopping_state_survives_a_resume(tmp_path: Path) -> None:
    val_losses = [3.0, 2.0, 2.5, 1.9, 2.0, 2.1, 1.0]
    progress = Progress()
    seen = []
    for epoch, loss in enumerate(val_losses, start=1):
        if progress.stopped:
            break
        improved = progress.update_early_stopping(epoch, loss, patience=2)
        seen.append((epoch, improved))
        if epoch == 3:  # a kill and restart in the middle
            progress.epochs_done = epoch
            progress.save(tmp_path)
            progress = Progress.from_json(json.loads((tmp_path / "state.json").read_text()))
    assert seen == [(1, True), (2, True), (3, False), (4, True), (5, False), (6, False)]
    assert progress.stopped and progress.best_epoch == 4 and progress.best_monitor == 1.9
    fresh, model = resume(tmp_path / "nowhere", load=None)
    assert model is None and fresh.best_monitor == math.inf


def test_a_head_with_a_single_class_trains_with_zero_loss() -> None:
    # music21's Bach has one velocity everywhere: the manifest has no velocity edges
    manifest = {**MANIFEST, "bins": {**MANIFEST["bins"], "velocity": {"edges": [], "values": [90]}}}
    model = M.build_model(tiny(), manifest)
    inputs, targets = M.split_window(window_batch(), manifest)
    assert model(inputs)["velocity"].shape == (4, 8, 1)
    assert set(np.unique(targets["velocity"])) == {0}
    result = model.fit(inputs, targets, epochs=1, verbose=0).history
    assert result["velocity_loss"] == [0.0] and result["velocity_accuracy"] == [1.0]
    assert np.isfinite(result["loss"][0])
