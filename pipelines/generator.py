"""Stateful batched generation from a trained lakhflow model, and the MLflow pyfunc that carries it.

`StepModel` runs the trained Keras model one note at a time with explicit LSTM states (sharing its
weights), `NoteSampler` turns a batch of primers into pieces, and `MusicGenerator` is the pyfunc
that the train stage logs and registers (`registry.log_generator`), so a registered model writes
music.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from pipelines.errors import LakhflowError, ParamsError
from pipelines.instruments import part_name
from pipelines.midi import FEATURES, Notes, seconds_per_unit, tempo_of
from pipelines.primers import class_values, pitches_primer, typical_note
from pipelines.schema import HEADS, INPUT_DTYPES

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

# Notes per second of music at most, when the length is given in seconds: a safety cap for a
# model that keeps predicting chords (step 0) and would otherwise never reach the end.
MAX_NOTES_PER_SECOND = 64
# Notes drawn per graph call when the length is in seconds (checked between calls).
ROUND_NOTES = 64
REQUEST_COLUMNS = ("notes", "temperature", "seed", "primer_pitches", "group")
# What each piece holds through its generation, [B] each: its style (a conditioned model), and
# the velocity and part the tutorial's regression heads do not predict (the primer's).
HELD = ("style", "velocity", "part")
NOTE_COLUMNS = ("piece", "pitch", "step", "duration", "velocity", "part", "start", "end")


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Sampling:
    """How each head's next value is drawn from its logits."""

    temperature: Mapping[str, float] = field(default_factory=dict)
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False
    repetition_penalty: float = 1.0
    repetition_window: int = 0

    def __post_init__(self) -> None:
        for head, t in self.temperature.items():
            if head not in FEATURES:
                raise ParamsError(f"generate.temperature: unknown head {head!r}")
            if not t > 0:
                raise ParamsError(f"generate.temperature must be > 0 (got {t:g} for {head})")
        if not 0 < self.top_p <= 1:
            raise ParamsError(f"generate.top_p must be in (0, 1] (got {self.top_p:g})")
        if self.top_k < 0:
            raise ParamsError(f"generate.top_k must be >= 0 (got {self.top_k})")
        if self.repetition_penalty < 1:
            raise ParamsError(
                f"generate.repetition_penalty must be >= 1 (got {self.repetition_penalty:g})"
            )
        if self.repetition_window < 0:
            raise ParamsError(
                f"generate.repetition_window must be >= 0 (got {self.repetition_window})"
            )

    @classmethod
    def with_temperature(cls, temperature: float | Mapping[str, float], **kw: Any) -> Sampling:
        """A float applies to every head; a dict names heads (the others stay at 1)."""
        if isinstance(temperature, Mapping):
            per_head = dict.fromkeys(FEATURES, 1.0) | {k: float(v) for k, v in temperature.items()}
        else:
            per_head = {h: float(temperature) for h in FEATURES}
        return cls(temperature=per_head, **kw)

    def tensors(self) -> dict[str, Any]:
        """The settings as the sampling graph takes them (tensors: no retracing per setting)."""
        import tensorflow as tf

        penalty = self.repetition_penalty if self.repetition_window > 0 else 1.0
        return {
            "temperature": {
                h: tf.constant(self.temperature.get(h, 1.0), tf.float32) for h in FEATURES
            },
            "top_k": tf.constant(self.top_k, tf.int32),
            "top_p": tf.constant(self.top_p, tf.float32),
            "greedy": tf.constant(self.greedy),
            "penalty": tf.constant(penalty, tf.float32),
        }


def draw_classes(
    logits: Any, uniform: Any, temperature: Any, top_k: Any, top_p: Any, greedy: Any
) -> Any:
    """One class per row of `logits` [B, C] (TensorFlow ops, inside the sampling graph).

    `uniform` [B] in [0, 1) comes from the numpy Generator, so a seed fixes every draw.
    top_k 0 keeps every class; top_p keeps the most likely classes whose mass reaches it.
    """
    import tensorflow as tf

    classes = int(logits.shape[-1])
    # Running sums as products with a triangle of ones: tf.cumsum is several times slower on
    # a CPU for rows this short, and sampling runs once per head per note.
    inclusive = tf.constant(np.triu(np.ones((classes, classes), np.float32)))
    exclusive = tf.constant(np.triu(np.ones((classes, classes), np.float32), k=1))
    best = tf.argmax(logits, axis=-1, output_type=tf.int32)
    z = logits / temperature
    p = tf.exp(z - tf.reduce_max(z, axis=-1, keepdims=True))

    def keep_top_k() -> Any:
        kth = tf.math.top_k(p, tf.clip_by_value(top_k, 1, classes)).values[:, -1:]
        return p * tf.cast(p >= kth, tf.float32)

    def keep_nucleus(q: Any) -> Any:
        ranked = tf.sort(q, axis=-1, direction="DESCENDING")
        kept = tf.matmul(ranked, exclusive) < top_p * tf.reduce_sum(ranked, -1, keepdims=True)
        # The least likely class inside the nucleus: everything below it goes (ties stay).
        floor = tf.reduce_min(tf.where(kept, ranked, np.inf), axis=-1, keepdims=True)
        return q * tf.cast(q >= floor, tf.float32)

    p = tf.cond(top_k > 0, keep_top_k, lambda: p)
    p = tf.cond(top_p < 1, lambda: keep_nucleus(p), lambda: p)
    cdf = tf.matmul(p, inclusive)
    drawn = tf.reduce_sum(tf.cast(cdf <= uniform[:, None] * cdf[:, -1:], tf.int32), axis=-1)
    drawn = tf.minimum(drawn, classes - 1)
    return tf.where(greedy, best, drawn)


def penalise(logits: Any, recent: Any, penalty: Any) -> Any:
    """CTRL's repetition penalty on the pitches in `recent` [B, W] (-1: none yet)."""
    import tensorflow as tf

    played = tf.reduce_sum(tf.one_hot(recent, logits.shape[-1]), axis=1) > 0
    shrunk = tf.where(logits > 0, logits / penalty, logits * penalty)
    return tf.where(played, shrunk, logits)


# --------------------------------------------------------------------------- the step model


def styles_of(style: np.ndarray | None, notes: Notes) -> np.ndarray:
    """Each piece's style index [B]; 0 (the pooled `other`) where none is given."""
    batch = notes.pitch.shape[0]
    return np.zeros(batch, np.int32) if style is None else np.asarray(style, np.int32)


def style_names(manifest: Mapping[str, Any]) -> list[str]:
    """A model's style vocabulary (the train stage's): [] for an unconditioned model."""
    return [g["name"] for g in (manifest.get("style") or {}).get("groups", [])]


def _lstm_index(name: str) -> int | None:
    found = re.fullmatch(r"lstm_(\d+)", name)
    return int(found.group(1)) if found else None


class StepModel:
    """The trained model run one note at a time, carrying each LSTM layer's (h, c) state.

    The layers before `lstm_0` (binning, embeddings) and after the last LSTM (the heads) are
    cut out of the trained model as sub-models, and each LSTM layer's own cell is called for
    one step, so every weight is shared with the trained model and nothing is copied. The
    sampling loop runs inside one TensorFlow graph: per note there is no Python at all.
    """

    def __init__(self, model: keras.Model, manifest: Mapping[str, Any]) -> None:
        import warnings

        import keras
        import tensorflow as tf

        lstms = sorted(
            (layer for layer in model.layers if _lstm_index(layer.name) is not None),
            key=lambda layer: _lstm_index(layer.name) or 0,
        )
        if not lstms:
            raise LakhflowError("the model has no LSTM layers named lstm_0, lstm_1, ...")
        self.model = model
        self.cells = [layer.cell for layer in lstms]
        self.units = [int(layer.units) for layer in lstms]
        self.state_dtype = lstms[0].compute_dtype
        # Keras warns that the dict keys (pitch, ...) differ from the Input layers' names.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="When providing `inputs` as a dict")
            try:
                self.front = keras.Model(model.input, lstms[0].input)
                self.links = [
                    None if a.output is b.input else keras.Model(a.output, b.input)
                    for a, b in itertools.pairwise(lstms)
                ]
                self.tail = keras.Model(lstms[-1].output, model.output)
            except Exception as exc:  # a graph that is not inputs -> LSTM stack -> heads
                msg = f"cannot cut the model into steps around its LSTM layers: {exc}"
                raise LakhflowError(msg.splitlines()[0]) from None
        self.sequences = [bool(layer.return_sequences) for layer in lstms]
        self.heads = [h for h in HEADS if h in model.output]
        self.categorical = len(model.output["pitch"].shape) == 3
        # A style-conditioned model takes the piece's style at every step.
        self.styled = "style" in model.input
        self.values = {
            h: tf.constant(class_values(manifest, h), tf.float32)
            for h in ("step", "duration", "velocity")
            if self.categorical
        }
        notes = {
            k: tf.TensorSpec([None, None], INPUT_DTYPES[k], name=k)
            for k in (*FEATURES, "style")
            if k in model.input
        }
        states = [
            (tf.TensorSpec([None, u], self.state_dtype), tf.TensorSpec([None, u], self.state_dtype))
            for u in self.units
        ]
        self._run = tf.function(self._run_graph, input_signature=[notes, states])
        self.classes = {h: int(model.output[h].shape[-1]) for h in self.heads}
        logits = {h: tf.TensorSpec([None, c]) for h, c in self.classes.items()}
        scalar = tf.TensorSpec([], tf.float32)
        settings = {
            "temperature": dict.fromkeys(FEATURES, scalar),
            "top_k": tf.TensorSpec([], tf.int32),
            "top_p": scalar,
            "greedy": tf.TensorSpec([], tf.bool),
            "penalty": scalar,
        }
        signature = [
            logits,
            states,
            tf.TensorSpec([None, None], tf.int32),  # recent pitches
            tf.TensorSpec([None, None, None], tf.float32),  # uniforms
            {k: tf.TensorSpec([None], tf.int32) for k in HELD},
            settings,
        ]
        self._sample = tf.function(self._sample_graph, input_signature=signature)
        # Trace both graphs now, so timing a generation measures generating, not tracing.
        self._run.get_concrete_function()
        self._sample.get_concrete_function()

    def _logits(self, notes: Mapping[str, Any], states: list[tuple[Any, Any]]) -> Any:
        """One step: notes {feature: [B, 1]} -> ({head: logits [B, C]}, new states)."""
        import tensorflow as tf

        x = self.front(dict(notes), training=False)[:, 0]
        new_states = []
        for i, cell in enumerate(self.cells):
            x, (h, c) = cell(x, list(states[i]), training=False)
            new_states.append((h, c))
            link = self.links[i] if i < len(self.links) else None
            if link is not None:
                x = link(x[:, None], training=False)[:, 0]
        if self.sequences[-1]:
            x = x[:, None]
        outputs = self.tail(x, training=False)
        logits = {}
        for head in self.heads:
            y = tf.cast(outputs[head], tf.float32)
            logits[head] = y[:, 0] if len(y.shape) == 3 else y
        return logits, new_states

    def _run_graph(self, notes: dict[str, Any], states: list[tuple[Any, Any]]) -> Any:
        """Feed notes [B, T] one step at a time: logits after each {head: [T, B, C]}, states."""
        import tensorflow as tf

        steps = tf.shape(notes["pitch"])[1]
        batch = tf.shape(notes["pitch"])[0]
        out = {h: tf.TensorArray(tf.float32, size=steps) for h in self.heads}
        logits = {h: tf.zeros([batch, self.classes[h]]) for h in self.heads}
        for t in tf.range(steps):
            logits, states = self._logits({k: v[:, t : t + 1] for k, v in notes.items()}, states)
            out = {h: out[h].write(t, logits[h]) for h in self.heads}
        return {h: out[h].stack() for h in self.heads}, states

    def draw_note(
        self,
        logits: Mapping[str, Any],
        recent: Any,
        uniform: Any,
        held: Mapping[str, Any],
        settings: Mapping[str, Any],
    ) -> dict[str, Any]:
        """The next note of every piece from its heads' logits (graph ops); uniform [heads, B].
        `held` [B] per piece: the style, and what the tutorial's heads do not predict."""
        import tensorflow as tf

        temperature = settings["temperature"]
        pick = {k: settings[k] for k in ("top_k", "top_p", "greedy")}
        pitch_logits = penalise(logits["pitch"], recent, settings["penalty"])
        note = {"pitch": draw_classes(pitch_logits, uniform[0], temperature["pitch"], **pick)}
        if self.categorical:
            for i, head in enumerate(("step", "duration", "velocity"), start=1):
                k = draw_classes(logits[head], uniform[i], temperature[head], **pick)
                note[head] = tf.gather(self.values[head], k)
            note["velocity"] = tf.cast(
                tf.clip_by_value(tf.round(note["velocity"]), 1, 127), tf.int32
            )
            note["part"] = draw_classes(logits["part"], uniform[4], temperature["part"], **pick)
        else:
            # The tutorial's regression heads: a number per note, kept >= 0.
            note["step"] = tf.maximum(logits["step"][:, 0], 0.0)
            note["duration"] = tf.maximum(logits["duration"][:, 0], 0.0)
            note["velocity"] = held["velocity"]
            note["part"] = held["part"]
        return note

    def _sample_graph(
        self,
        logits: dict[str, Any],
        states: list[tuple[Any, Any]],
        recent: Any,
        uniforms: Any,
        held: dict[str, Any],
        settings: dict[str, Any],
    ) -> Any:
        """Draw len(uniforms) notes per piece, feeding each back in; uniforms [N, heads, B]."""
        import tensorflow as tf

        count = tf.shape(uniforms)[0]
        drawn = {
            k: tf.TensorArray(tf.float32 if k in ("step", "duration") else tf.int32, size=count)
            for k in FEATURES
        }
        for n in tf.range(count):
            note = self.draw_note(logits, recent, uniforms[n], held, settings)
            drawn = {k: drawn[k].write(n, note[k]) for k in FEATURES}
            recent = tf.concat([recent[:, 1:], note["pitch"][:, None]], axis=1)
            fed = {k: v[:, None] for k, v in note.items()}
            if self.styled:
                fed["style"] = held["style"][:, None]
            logits, states = self._logits(fed, states)
        notes = {k: tf.transpose(drawn[k].stack()) for k in FEATURES}
        return notes, logits, states, recent

    def initial_states(self, batch: int) -> list[tuple[Any, Any]]:
        import tensorflow as tf

        return [
            (tf.zeros([batch, u], self.state_dtype), tf.zeros([batch, u], self.state_dtype))
            for u in self.units
        ]

    def run(
        self,
        notes: Notes,
        states: list[tuple[Any, Any]] | None = None,
        style: np.ndarray | None = None,
    ) -> tuple[dict[str, np.ndarray], list[tuple[Any, Any]]]:
        """Feed notes [B, T] (of pieces in the styles [B] for a conditioned model): each head's
        logits after every note [B, T, C], and the states."""
        if states is None:
            states = self.initial_states(notes.pitch.shape[0])
        inputs = notes.as_inputs()
        if self.styled:
            inputs["style"] = np.repeat(styles_of(style, notes)[:, None], len(notes), axis=1)
        logits, states = self._run(inputs, states)
        return {h: np.swapaxes(np.asarray(v), 0, 1) for h, v in logits.items()}, states

    def first_logits(self, batch: int) -> dict[str, np.ndarray]:
        """The heads before any note (the LSTM's zero state): where a piece with no primer
        starts. The style enters with the first note fed back."""
        import tensorflow as tf

        x = tf.zeros([batch, self.units[-1]], self.state_dtype)
        outputs = self.tail(x[:, None] if self.sequences[-1] else x, training=False)
        logits = {}
        for head in self.heads:
            y = np.asarray(tf.cast(outputs[head], tf.float32))
            logits[head] = y[:, 0] if y.ndim == 3 else y
        return logits

    def sample(
        self,
        logits: Mapping[str, Any],
        states: list[tuple[Any, Any]],
        recent: np.ndarray,
        uniforms: np.ndarray,
        held: Mapping[str, np.ndarray],
        sampling: Sampling,
    ) -> tuple[Notes, dict[str, Any], list[tuple[Any, Any]], np.ndarray]:
        """Draw uniforms.shape[0] notes for every piece; returns them [B, N] and the carry."""
        notes, carried, states, recent = self._sample(
            dict(logits),
            states,
            recent.astype(np.int32),
            uniforms.astype(np.float32),
            {k: np.asarray(held[k], np.int32) for k in HELD},
            sampling.tensors(),
        )
        arrays = {k: np.asarray(v) for k, v in notes.items()}
        return Notes(**arrays), dict(carried), states, np.asarray(recent)


# --------------------------------------------------------------------------- the sampler


class NoteSampler:
    """Generates a batch of pieces together: prime each piece's LSTM state, then sample notes."""

    def __init__(self, model: keras.Model, manifest: Mapping[str, Any]) -> None:
        self.manifest = dict(manifest)
        self.step_model = StepModel(model, manifest)
        self.categorical = self.step_model.categorical

    def generate(
        self,
        primer: Notes,
        sampling: Sampling,
        rng: np.random.Generator,
        *,
        notes: int | None = None,
        seconds: float | None = None,
        tempo_bpm: float | None = None,
        style: np.ndarray | None = None,
    ) -> list[Notes]:
        """Continue each primer row ([B, P] arrays; P may be 0) by `notes` notes or `seconds`
        of music, each piece in its style [B] (a conditioned model; None: `other`).

        Returns one `Notes` per piece: the primer followed by the generated notes.
        """
        if (notes is None) == (seconds is None):
            raise ParamsError("give the length as generate.notes or generate.seconds, not both")
        scale = seconds_per_unit(self.manifest, tempo_bpm or tempo_of(self.manifest))
        batch = primer.pitch.shape[0]
        window = max(sampling.repetition_window, 1)
        recent = np.full((batch, window), -1, dtype=np.int64)
        if sampling.repetition_window and len(primer):
            tail = primer.pitch[:, -window:]
            recent[:, -tail.shape[1] :] = tail
        held = {"style": styles_of(style, primer)}
        if len(primer):
            held["velocity"] = np.clip(np.rint(primer.velocity.mean(axis=1)), 1, 127)
            held["part"] = primer.part[:, -1]
        else:
            held["velocity"] = np.full(batch, typical_note(self.manifest)[2])
            held["part"] = np.zeros(batch, np.int64)
        heads = len(self.step_model.heads)

        if len(primer):
            primed, states = self.step_model.run(primer, style=held["style"])
            logits = {h: v[:, -1] for h, v in primed.items()}
        else:
            states = self.step_model.initial_states(batch)
            logits = self.step_model.first_logits(batch)
        if seconds is None:
            uniforms = rng.random((int(notes or 0), heads, batch))
            made, *_ = self.step_model.sample(logits, states, recent, uniforms, held, sampling)
            return [_join(primer.take(b), made.take(b)) for b in range(batch)]

        # Length in seconds: draw in rounds until every piece is long enough, then trim each.
        limit = max(1, int(np.ceil(seconds * MAX_NOTES_PER_SECOND)))
        rounds: list[Notes] = []
        total = 0
        elapsed = np.zeros(batch)
        while total < limit and not bool((elapsed >= seconds).all()):
            size = min(ROUND_NOTES, limit - total)
            uniforms = rng.random((size, heads, batch))
            made, logits, states, recent = self.step_model.sample(
                logits, states, recent, uniforms, held, sampling
            )
            rounds.append(made)
            total += size
            elapsed += made.step.sum(axis=1) * scale
        if total >= limit:
            log.warning("stopped at %d notes before reaching %g s of music", limit, seconds)
        made = Notes(*(np.concatenate([getattr(r, k) for r in rounds], axis=1) for k in FEATURES))
        pieces = []
        for b in range(batch):
            onsets = np.cumsum(made.step[b]) * scale
            keep = int(np.searchsorted(onsets, seconds, side="left"))
            pieces.append(_join(primer.take(b), made.take((b, slice(0, keep)))))
        return pieces


def _join(primer: Notes, made: Notes) -> Notes:
    return Notes(
        **{
            k: np.concatenate([getattr(primer, k), getattr(made, k)]).astype(
                np.float64 if k in ("step", "duration") else np.int64
            )
            for k in FEATURES
        }
    )


# --------------------------------------------------------------------------- the pyfunc


def load_keras(path: Path) -> keras.Model:
    from pipelines.model import load_model

    return load_model(path, compile=False)


class MusicGenerator(PythonModel):
    """An MLflow pyfunc that writes music: one request row per piece.

    Input columns: `notes` (int), `temperature` (float), `seed` (int), `primer_pitches` (str,
    optional, such as "60 62 64"; without it a piece starts from middle C), `group` (str,
    optional: the style of a style-conditioned model). Output: the generated notes (`piece`,
    `pitch`, `step`, `duration`, `velocity`, `part` (its name, such as piano-1) and `start`,
    `end` in seconds from the primer's first note). `keras_model`, `manifest` and `sampler` are
    there for callers that want more than the request columns (the generate stage does).
    """

    keras_model: Any = None
    manifest: dict[str, Any]
    sampler: NoteSampler

    def load_context(self, context: Any) -> None:
        self.manifest = json.loads(Path(context.artifacts["manifest"]).read_text())
        self.keras_model = load_keras(Path(context.artifacts["model"]))
        self.sampler = NoteSampler(self.keras_model, self.manifest)

    def style_of(self, group: Any) -> np.ndarray | None:
        """A request's `group` as the style index [1]; None (no style asked) where it is empty."""
        if not isinstance(group, str) or not group.strip():
            return None
        styles = style_names(self.manifest)
        if group not in styles:
            known = ", ".join(styles) if styles else "none: the model has no styles"
            raise ParamsError(f"group: unknown group {group!r}; the model knows {known}")
        return np.asarray([styles.index(group)])

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        requests = pd.DataFrame(model_input)
        missing = {"notes", "temperature", "seed"} - set(requests.columns)
        if missing:
            raise LakhflowError(f"request lacks the columns {', '.join(sorted(missing))}")
        tempo = tempo_of(self.manifest)
        scale = seconds_per_unit(self.manifest, tempo)
        max_rank = int(self.manifest["parts"]["max_rank"])
        frames = []
        rows: list[dict[Any, Any]] = requests.to_dict("records")
        for piece, row in enumerate(rows):
            text = row.get("primer_pitches")
            text = text if isinstance(text, str) and text.strip() else "60"
            primer = pitches_primer(text, self.manifest)
            primer = primer.repeated(1)
            sampling = Sampling.with_temperature(float(row["temperature"]))
            rng = np.random.default_rng(int(row["seed"]))
            count = int(row["notes"])
            if count < 1:
                raise ParamsError(f"notes must be >= 1 (got {count})")
            style = self.style_of(row.get("group"))
            (notes,) = self.sampler.generate(
                primer, sampling, rng, notes=count, tempo_bpm=tempo, style=style
            )
            start = notes.starts() * scale
            new = slice(len(primer), None)
            frames.append(
                pd.DataFrame(
                    {
                        "piece": np.full(count, piece, np.int64),
                        "pitch": notes.pitch[new].astype(np.int64),
                        "step": notes.step[new].astype(np.float64),
                        "duration": notes.duration[new].astype(np.float64),
                        "velocity": notes.velocity[new].astype(np.int64),
                        "part": [part_name(int(p), max_rank) for p in notes.part[new]],
                        "start": start[new],
                        "end": start[new] + notes.duration[new] * scale,
                    }
                )
            )
        if not frames:
            return pd.DataFrame({c: [] for c in NOTE_COLUMNS})
        return pd.concat(frames, ignore_index=True)
