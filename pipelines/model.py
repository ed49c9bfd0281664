"""The LSTM over notes: built from the train params and the shards' manifest (whose bin edges
turn step, duration and velocity into classes inside the model), its losses, how a reader
window of T+1 notes becomes inputs and targets, and where training runs (device, strategy).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from pipelines.config import Train
from pipelines.schema import (
    HEADS,
    INPUT_DTYPES,
    NOTE_FEATURES,
    OTHER_STYLE,
    PITCHES,
    bin_edges,
    classes_of,
    n_classes,
)

if TYPE_CHECKING:
    import tensorflow as tf

# TensorFlow is imported only where it is used (to_classes inside tf.data, the placement), so
# importing this module, building, loading and calling the model need no TensorFlow under
# another Keras backend (JAX on a GPU machine without TensorFlow, say).

log = logging.getLogger(__name__)

FEATURES = NOTE_FEATURES  # the model's raw inputs
BINNED = ("step", "duration", "velocity")  # heads that are classes over the manifest's bins
REGRESSION_HEADS = ("pitch", "step", "duration")  # the TensorFlow tutorial's heads


def style_groups(train: Train, manifest: Mapping[str, Any]) -> list[str]:
    """The style vocabulary of a group-conditioned model: `other` first (groups with fewer than
    train.min_group_files train files, and files in no folder), then the groups, by name.
    Empty for an unconditioned model."""
    if train.condition != "group" or train.heads == "regression":
        return []
    counts = manifest.get("groups") or {}
    kept = sorted(
        g
        for g, n in counts.items()
        if g and g != OTHER_STYLE and n["train"] >= train.min_group_files
    )
    return [OTHER_STYLE, *kept]


# Keras needs unique layer names, and the heads own the names pitch/step/...; the inputs keep
# those names as their dict keys (what callers pass), their layers are called `<name>_in`.
INPUT_SUFFIX = "_in"
# The tutorial's loss weights: pitch cross-entropy is ~4.8 at start, the regressions ~0.1.
REGRESSION_LOSS_WEIGHTS = {"pitch": 0.05, "step": 1.0, "duration": 1.0}


# The losses are keras.ops, so a saved model loads under any Keras backend (JAX without
# TensorFlow, say); on TensorFlow they are the same ops as tf.* and give the same numbers.
@keras.saving.register_keras_serializable(package="lakhflow")
def mse_with_positive_pressure(y_true: Any, y_pred: Any) -> Any:
    """The tutorial's regression loss: squared error plus a push away from negative values."""
    y_true = keras.ops.cast(y_true, y_pred.dtype)
    mse = (y_true - y_pred) ** 2
    positive_pressure = 10 * keras.ops.maximum(-y_pred, 0.0)
    return keras.ops.mean(mse + positive_pressure)


@keras.saving.register_keras_serializable(package="lakhflow")
def single_class_loss(y_true: Any, y_pred: Any) -> Any:
    """Cross-entropy of a head with one class (such as velocity in a corpus with one velocity):
    always 0. Keras would squeeze the [B, T, 1] logits to [B, T] before a sparse cross-entropy
    and fail on the ranks; zero times the logits keeps a (zero) gradient for the head."""
    return 0.0 * keras.ops.cast(y_pred, "float32")


def to_classes(values: Any, edges: np.ndarray) -> Any:
    """Class index of each value: searchsorted(edges, x, side='right'), as Discretization does.

    numpy in, numpy out; a tensor in (inside tf.data), a tensor out. Both compare in float32.
    """
    if isinstance(values, np.ndarray):
        return classes_of(values, edges)
    import tensorflow as tf

    bucketed = tf.raw_ops.Bucketize(
        input=tf.cast(values, tf.float32), boundaries=[float(e) for e in edges]
    )
    return tf.cast(bucketed, tf.int32)


def split_window(
    batch: Mapping[str, Any], manifest: Mapping[str, Any], heads: str = "categorical"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A reader batch of T+1 notes -> (inputs: notes 0..T-1, targets).

    Categorical targets are notes 1..T as class indices (pitch itself, the others binned);
    regression targets are the last note only: pitch [B], step and duration [B, 1].
    Works on numpy arrays and on tensors (as a tf.data map).
    """
    inputs = {name: batch[name][:, :-1] for name in FEATURES}
    if "style" in batch:  # the window's style (the reader's, given a vocabulary), at every step
        inputs["style"] = batch["style"][:, None] + 0 * inputs["part"]
    if heads == "regression":
        targets = {
            "pitch": batch["pitch"][:, -1],
            "step": batch["step"][:, -1:],
            "duration": batch["duration"][:, -1:],
        }
        return inputs, targets
    targets = {"pitch": batch["pitch"][:, 1:], "part": batch["part"][:, 1:]}
    for head in BINNED:
        targets[head] = to_classes(batch[head][:, 1:], bin_edges(manifest, head))
    return inputs, targets


def _inputs(conditioned: bool = False) -> dict[str, keras.KerasTensor]:
    names = (*FEATURES, "style") if conditioned else FEATURES
    return {
        name: keras.Input(shape=(None,), dtype=INPUT_DTYPES[name], name=name + INPUT_SUFFIX)
        for name in names
    }


def _lstm(units: int, index: int, return_sequences: bool) -> keras.layers.LSTM:
    # The cuDNN kernel needs exactly these: tanh, sigmoid, no recurrent dropout, no unroll, bias.
    return keras.layers.LSTM(
        units,
        activation="tanh",
        recurrent_activation="sigmoid",
        recurrent_dropout=0.0,
        unroll=False,
        use_bias=True,
        return_sequences=return_sequences,
        name=f"lstm_{index}",
    )


def _functional(inputs: dict[str, Any], outputs: dict[str, Any], name: str) -> keras.Model:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="When providing `inputs` as a dict")
        return keras.Model(inputs=inputs, outputs=outputs, name=name)


def build_categorical(train: Train, manifest: Mapping[str, Any]) -> keras.Model:
    """Sequence to sequence: the outputs at position t are logits for note t+1, per head.

    Every step sees its note's pitch, part and binned step, duration and velocity, each embedded;
    a group-conditioned model also sees the piece's style (an embedding of its group)."""
    groups = style_groups(train, manifest)
    inputs = _inputs(conditioned=bool(groups))
    embedded = [
        keras.layers.Embedding(PITCHES, train.embedding_dim, name="pitch_embedding")(
            inputs["pitch"]
        ),
        keras.layers.Embedding(
            n_classes(manifest, "part"), train.embedding_dim, name="part_embedding"
        )(inputs["part"]),
    ]
    if groups:
        embedded.append(
            keras.layers.Embedding(len(groups), train.embedding_dim, name="style_embedding")(
                inputs["style"]
            )
        )
    for head in BINNED:
        edges = bin_edges(manifest, head)
        classes = keras.layers.Discretization(
            bin_boundaries=[float(e) for e in edges], name=f"{head}_bins"
        )(inputs[head])
        embedded.append(
            keras.layers.Embedding(len(edges) + 1, train.embedding_dim, name=f"{head}_embedding")(
                classes
            )
        )
    x = keras.layers.Concatenate(name="notes")(embedded)
    for i in range(train.layers):
        x = _lstm(train.units, i, return_sequences=True)(x)
        x = keras.layers.Dropout(train.dropout, name=f"dropout_{i}")(x)
    # Heads in float32 so logits and softmax stay stable under mixed precision.
    outputs = {
        head: keras.layers.Dense(n_classes(manifest, head), name=head, dtype="float32")(x)
        for head in HEADS
    }
    return _functional(inputs, outputs, name="lakhflow_lstm")


def build_regression(train: Train) -> keras.Model:
    """The TensorFlow tutorial's model: (pitch/128, step, duration) -> next note, last step only.

    It takes the same raw input dict as the categorical model (velocity is ignored).
    """
    inputs = _inputs()
    pitch = keras.layers.Rescaling(1.0 / PITCHES, name="pitch_scaled")(inputs["pitch"])
    columns = [
        keras.layers.Reshape((-1, 1), name=f"{name}_column")(tensor)
        for name, tensor in (
            ("pitch", pitch),
            ("step", inputs["step"]),
            ("duration", inputs["duration"]),
        )
    ]
    x = keras.layers.Concatenate(name="notes")(columns)
    for i in range(train.layers):
        last = i == train.layers - 1
        x = _lstm(train.units, i, return_sequences=not last)(x)
        if not last:
            x = keras.layers.Dropout(train.dropout, name=f"dropout_{i}")(x)
    outputs = {
        "pitch": keras.layers.Dense(PITCHES, name="pitch", dtype="float32")(x),
        "step": keras.layers.Dense(1, name="step", dtype="float32")(x),
        "duration": keras.layers.Dense(1, name="duration", dtype="float32")(x),
    }
    return _functional(inputs, outputs, name="tutorial_lstm")


def reseed_dropout(model: keras.Model, seed: int, epoch: int) -> None:
    """Set every dropout mask stream to a state given by (seed, epoch, layer), so an epoch
    draws the same masks whether the run went on unbroken or resumed from a checkpoint. The
    stream counts up one a step from epoch << 32, so no two epochs share a step's masks."""
    for index, layer in enumerate(model.layers):
        generator = getattr(layer, "seed_generator", None)
        if generator is not None:
            state = [seed * 1009 + index, epoch << 32]
            generator.state.assign(np.asarray(state, dtype=generator.state.dtype))


def dropout_states(model: keras.Model) -> dict[str, list[int]]:
    """Each dropout layer's seed state, by layer name: what a checkpoint inside an epoch keeps,
    since model.save() does not (a loaded model's streams start afresh)."""
    return {
        layer.name: [int(x) for x in keras.ops.convert_to_numpy(generator.state.value)]
        for layer in model.layers
        if (generator := getattr(layer, "seed_generator", None)) is not None
    }


def restore_dropout_states(model: keras.Model, states: Mapping[str, list[int]]) -> None:
    for layer in model.layers:
        generator = getattr(layer, "seed_generator", None)
        if generator is not None:
            generator.state.assign(np.asarray(states[layer.name], dtype=generator.state.dtype))


def head_names(heads: str) -> tuple[str, ...]:
    return REGRESSION_HEADS if heads == "regression" else HEADS


def loss_weights(train: Train) -> dict[str, float]:
    if train.heads == "regression":
        return dict(REGRESSION_LOSS_WEIGHTS)
    return {head: float(train.loss_weights.get(head, 1.0)) for head in HEADS}


def compile_model(model: keras.Model, train: Train) -> keras.Model:
    """Adam with clipping; cross-entropy on logits, or the tutorial's losses and weights."""

    def ce(head: str) -> Any:
        if model.output[head].shape[-1] == 1:
            return single_class_loss
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def accuracy() -> list[Any]:
        return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]

    if train.heads == "regression":
        losses: dict[str, Any] = {
            "pitch": ce("pitch"),
            "step": mse_with_positive_pressure,
            "duration": mse_with_positive_pressure,
        }
        metrics: dict[str, Any] = {"pitch": accuracy()}
    else:
        losses = {head: ce(head) for head in HEADS}
        metrics = {head: accuracy() for head in HEADS}
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=train.learning_rate, clipnorm=train.clipnorm),
        loss=losses,
        loss_weights=loss_weights(train),
        metrics=metrics,
    )
    return model


def build_model(train: Train, manifest: Mapping[str, Any]) -> keras.Model:
    """The compiled model for `train.heads`, with the manifest's bins inside it."""
    if train.heads == "regression":
        model = build_regression(train)
    else:
        model = build_categorical(train, manifest)
    return compile_model(model, train)


def load_model(path: Path, *, compile: bool = True) -> keras.Model:
    """Load a saved model.keras (with the custom loss known, and without the dict-name warning)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="When providing `inputs` as a dict")
        return keras.saving.load_model(
            path,
            custom_objects={
                "mse_with_positive_pressure": mse_with_positive_pressure,
                "single_class_loss": single_class_loss,
            },
            compile=compile,
        )


def example_inputs(batch: int = 2, length: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """Raw notes of the input contract's shapes and dtypes (signatures, smoke tests)."""
    rng = np.random.default_rng(seed)
    return {
        "pitch": rng.integers(48, 80, size=(batch, length)).astype(np.int32),
        "step": rng.choice([0.0, 0.25, 0.5, 1.0], size=(batch, length)).astype(np.float32),
        "duration": rng.choice([0.25, 0.5, 1.0, 2.0], size=(batch, length)).astype(np.float32),
        "velocity": rng.integers(40, 110, size=(batch, length)).astype(np.int32),
        "part": rng.integers(0, 4, size=(batch, length)).astype(np.int32),
    }


@dataclass(frozen=True)
class Placement:
    """Where training runs: the distribution strategy, what to log about it, precision."""

    strategy: tf.distribute.Strategy
    device: str
    strategy_name: str
    replicas: int
    mixed_precision: bool


def choose_placement(mixed_precision: str) -> Placement:
    """GPUs if there are any (MirroredStrategy over more than one), else the CPU.

    `auto` turns mixed precision on only with a GPU (on a CPU float16 is slower, not faster).
    Sets Keras' global dtype policy accordingly, so call it before building the model.
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = []
        for gpu in gpus:
            details = tf.config.experimental.get_device_details(gpu)
            names.append(str(details.get("device_name", gpu.name)))
        device = f"{len(gpus)}x GPU ({', '.join(sorted(set(names)))})"
    else:
        device = f"CPU ({os.cpu_count()} cores)"
    # One device needs no strategy; several GPUs get synchronous data parallelism.
    strategy = tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    mixed = mixed_precision == "on" or (mixed_precision == "auto" and bool(gpus))
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    return Placement(
        strategy=strategy,
        device=device,
        strategy_name="MirroredStrategy" if len(gpus) > 1 else "default (one device)",
        replicas=int(strategy.num_replicas_in_sync),
        mixed_precision=mixed,
    )


def summary_text(model: keras.Model) -> str:
    lines: list[str] = []
    model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line), line_length=100)
    return "\n".join(lines) + "\n"
