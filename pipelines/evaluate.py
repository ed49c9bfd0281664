"""Evaluate stage: reads data/model, the test and train splits (data/shards, data/notes) and
the generated MIDI (data/generated); scores the model and count baselines on the test windows,
judges the generated music against real excerpts and two controls (controls.py), looks for runs
copied from the training files; writes data/metrics/eval.json (every figure),
data/metrics/headline.json (the few `dvc metrics` shows) and data/evaluation/ (plots,
report.html), logs them to the model's MLflow run and tags the headline on its registered version.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines import baselines as bl
from pipelines import controls, registry, storage, tracking
from pipelines import music_metrics as mm
from pipelines.config import MODEL_FILE, Config
from pipelines.controls import Track
from pipelines.errors import LakhflowError
from pipelines.midi import read_midi_notes
from pipelines.report import plot_evaluation, report_html
from pipelines.schema import BINNED_HEADS, HEADS, classes_of, n_classes

log = logging.getLogger(__name__)

BATCH = 256
# Above this many training notes the copy detector filters the corpus by k-grams first.
EXACT_COPY_NOTES = 5_000_000


# --------------------------------------------------------------------------- inputs


@dataclass
class Inputs:
    """What the stage reads, checked up front so a missing piece is one clear line."""

    model_dir: Path
    manifest: dict[str, Any]  # the shards' manifest the model was trained on
    run_info: dict[str, Any]
    generated: dict[str, Any]  # data/generated/manifest.json


def read_inputs(cfg: Config) -> Inputs:
    paths = cfg.paths
    needed = {
        paths.model_file: "train",
        paths.model_manifest: "train",
        paths.model_run: "train",
        paths.shards_manifest: "sequences",
        paths.splits: "sequences",
        paths.generated_manifest: "generate",
    }
    for path, stage in needed.items():
        if not path.exists():
            raise LakhflowError(f"{path} not found; run `lakhflow {stage}` first")
    if not any(paths.notes.glob("notes-*.parquet")):
        raise LakhflowError(f"no note tables in {paths.notes}; run `lakhflow parse` first")
    manifest = storage.read_json(paths.model_manifest)
    shards = storage.read_json(paths.shards_manifest)
    if manifest.get("splits_sha256") != shards.get("splits_sha256"):
        raise LakhflowError(
            "the model was trained on other splits than data/shards holds "
            f"({str(manifest.get('splits_sha256'))[:12]} vs "
            f"{str(shards.get('splits_sha256'))[:12]}); "
            "run `lakhflow train` again so the test split is really held out"
        )
    return Inputs(
        model_dir=paths.model,
        manifest=manifest,
        run_info=storage.read_json(paths.model_run),
        generated=storage.read_json(paths.generated_manifest),
    )


def tokens_of(
    notes: Mapping[str, np.ndarray], manifest: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """Each head's class indices: the pitch and part themselves, the other heads binned by the
    manifest."""
    out = {name: np.asarray(notes[name], dtype=np.int64) for name in ("pitch", "part")}
    for head in BINNED_HEADS:
        out[head] = classes_of(notes[head], manifest["bins"][head]["edges"])
    return out


# --------------------------------------------------------------------------- the model on test


def log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    top = logits.max(axis=-1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))


@dataclass
class HeadTally:
    """Running sums of one head's scores over test batches."""

    nll: float = 0.0
    correct: int = 0
    squared_error: float = 0.0
    count: int = 0

    def add_logits(self, logits: np.ndarray, targets: np.ndarray) -> None:
        logp = log_softmax(logits)
        targets = np.asarray(targets, dtype=np.int64)
        picked = np.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        self.nll -= float(picked.sum())
        self.correct += int((logp.argmax(axis=-1) == targets).sum())
        self.count += targets.size

    def add_values(self, predicted: np.ndarray, targets: np.ndarray) -> None:
        error = np.asarray(predicted, np.float64).ravel() - np.asarray(targets, np.float64).ravel()
        self.squared_error += float((error**2).sum())
        self.count += error.size

    def result(self, kind: str) -> dict[str, float]:
        n = max(self.count, 1)
        if kind == "regression":
            return {"mse": self.squared_error / n, "count": self.count}
        return {"nll": self.nll / n, "accuracy": self.correct / n, "count": self.count}


def test_stride(manifest: Mapping[str, Any], max_windows: int) -> int:
    """A stride that spreads at most `max_windows` windows over the whole test split."""
    stride = int(manifest.get("stride", 1))
    available = int(manifest["splits"]["test"].get("windows", 0))
    return stride * max(1, math.ceil(available / max_windows))


def test_batches(cfg: Config, manifest: Mapping[str, Any]) -> Iterator[dict[str, np.ndarray]]:
    """Batches of test windows (T+1 notes), at most `evaluate.max_test_windows` in all."""
    from pipelines.dataset import windows

    stride = test_stride(manifest, cfg.evaluate.max_test_windows)
    dataset = windows(cfg.paths.shards, "test", dict(manifest), batch_size=BATCH, stride=stride)
    left = cfg.evaluate.max_test_windows
    for batch in dataset.as_numpy_iterator():
        if left <= 0:
            break
        batch = {k: v[:left] for k, v in batch.items()}
        left -= len(batch["pitch"])
        yield batch


@dataclass
class TestScores:
    """The model's scores per head, and the test targets the baselines are scored on."""

    heads: str
    model: dict[str, dict[str, float]]
    windows: int
    previous: dict[str, np.ndarray] = field(default_factory=dict)
    targets: dict[str, np.ndarray] = field(default_factory=dict)
    # the pitch of each window's last note only, predicted from the whole window before it
    full_context: dict[str, float] = field(default_factory=dict)
    previous_last: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    targets_last: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))


def score_model(cfg: Config, inputs: Inputs) -> TestScores:
    """NLL and accuracy per head on the test windows (every position for the categorical
    model; the last note for the tutorial's regression model, with MSE for step and duration)."""
    from pipelines.model import load_model, split_window

    manifest = inputs.manifest
    model = load_model(inputs.model_dir / MODEL_FILE, compile=False)
    heads = "categorical"
    tallies = {head: HeadTally() for head in HEADS}
    full = HeadTally()
    previous: dict[str, list[np.ndarray]] = {head: [] for head in HEADS}
    targets: dict[str, list[np.ndarray]] = {head: [] for head in HEADS}
    last: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    n_windows = 0
    for batch in test_batches(cfg, manifest):
        n_windows += len(batch["pitch"])
        x, _ = split_window(batch, manifest)  # the inputs are the same for both kinds of heads
        outputs = {k: np.asarray(v) for k, v in model(x, training=False).items()}
        # The tutorial's regression model answers for the last note only: pitch logits [B, 128].
        heads = "regression" if outputs["pitch"].ndim == 2 else "categorical"
        _, y = split_window(batch, manifest, heads)
        tokens = tokens_of(batch, manifest)
        last[0].append(tokens["pitch"][:, -2])
        last[1].append(tokens["pitch"][:, -1])
        pitch_logits = outputs["pitch"] if heads == "regression" else outputs["pitch"][:, -1]
        full.add_logits(pitch_logits, tokens["pitch"][:, -1])
        for head in HEADS:
            if heads == "regression":
                previous[head].append(tokens[head][:, -2])
                targets[head].append(tokens[head][:, -1])
            else:
                previous[head].append(tokens[head][:, :-1].ravel())
                targets[head].append(tokens[head][:, 1:].ravel())
            if head not in outputs:
                continue
            if heads == "regression" and head != "pitch":
                tallies[head].add_values(outputs[head], y[head])
            else:
                tallies[head].add_logits(outputs[head], np.asarray(y[head]))
    if n_windows == 0:
        raise LakhflowError("the test split holds no window of seq_length + 1 notes to score")
    kind = {h: "regression" if heads == "regression" and h != "pitch" else "nll" for h in HEADS}
    scores = {head: tallies[head].result(kind[head]) for head in HEADS if tallies[head].count}
    return TestScores(
        heads=heads,
        model=scores,
        windows=n_windows,
        previous={h: np.concatenate(v) for h, v in previous.items()},
        targets={h: np.concatenate(v) for h, v in targets.items()},
        full_context=full.result("nll"),
        previous_last=np.concatenate(last[0]),
        targets_last=np.concatenate(last[1]),
    )


def chunk_overlap(manifest: Mapping[str, Any]) -> int:
    """The notes a chunk shares with the chunk before it in its track (every chunk but a
    track's first): seq_length, so that every window lies whole in one chunk."""
    return int(manifest["seq_length"])


def fit_baselines(cfg: Config, manifest: Mapping[str, Any]) -> dict[str, bl.Baselines]:
    """Unigram and bigram counts of each head over the train split's tracks; add-k from val."""
    from pipelines.dataset import chunks

    fitted = {}
    train = {h: bl.TokenCounts(n_classes(manifest, h)) for h in HEADS}
    val = {h: bl.TokenCounts(n_classes(manifest, h)) for h in HEADS}
    overlap = chunk_overlap(manifest)
    for split, counts in (("train", train), ("val", val)):
        for chunk in chunks(cfg.paths.shards, split):
            tokens = tokens_of(chunk, manifest)
            seen = overlap if chunk["offset"] > 0 else 0  # counted with the chunk before
            for head in HEADS:
                counts[head].add(tokens[head], seen=seen)
    for head in HEADS:
        if train[head].unigram.sum() == 0:
            raise LakhflowError("the train split holds no notes to fit the baselines on")
        fitted[head] = bl.Baselines(train[head], bl.choose_k(train[head], val[head]))
    return fitted


def score_baselines(
    fitted: Mapping[str, bl.Baselines], scores: TestScores
) -> dict[str, dict[str, Any]]:
    """Each head's unigram and bigram on the model's targets; for pitch also on the windows'
    last notes only (`bigram_full_context`), the targets of the model's full-context score."""
    out: dict[str, dict[str, Any]] = {}
    for head, model in fitted.items():
        result = model.score(scores.previous[head], scores.targets[head])
        out[head] = {name: s.as_dict() for name, s in result.items()} | {"k": model.k}
    last = fitted["pitch"].score(scores.previous_last, scores.targets_last)["bigram"]
    out["pitch"]["bigram_full_context"] = last.as_dict()
    return out


# --------------------------------------------------------------------------- the music


def primer_lengths(generated: Mapping[str, Any]) -> dict[str, int]:
    """MIDI file name -> its primer's length in notes, from data/generated/manifest.json."""
    out = {}
    for piece in generated.get("pieces", []):
        name = piece.get("midi")
        if "notes" in piece and "generated_notes" in piece:
            primer = int(piece["notes"]) - int(piece["generated_notes"])
        elif isinstance(piece.get("primer"), Mapping) and "notes" in piece["primer"]:
            primer = int(piece["primer"]["notes"])
        else:
            continue
        if name:
            out[Path(str(name)).name] = primer
    return out


def beats(pitch: np.ndarray, start: np.ndarray, end: np.ndarray, spb: float) -> mm.Piece:
    """A piece starting at 0, timed in beats (`spb`: time units per beat, 1 for beats)."""
    offset = start.min() if len(start) else 0.0
    return mm.Piece(pitch, (start - offset) / spb, (end - offset) / spb)


def seconds_per_beat(manifest: Mapping[str, Any]) -> float:
    if manifest.get("time_unit", "beats") == "beats":
        return 1.0
    tempo = float(manifest.get("tempo_bpm") or 120.0)
    return 60.0 / tempo


def generated_continuations(cfg: Config, inputs: Inputs) -> dict[str, mm.Piece]:
    """Each generated piece's notes after its primer, timed in beats."""
    primers = primer_lengths(inputs.generated)
    files = sorted(cfg.paths.generated.glob("*.mid"))
    if not files:
        raise LakhflowError(f"no MIDI files in {cfg.paths.generated}; run `lakhflow generate`")
    unit = inputs.manifest.get("time_unit", "beats")
    spb = seconds_per_beat(inputs.manifest)
    out = {}
    for path in files:
        if path.name not in primers:
            raise LakhflowError(
                f"{cfg.paths.generated / 'manifest.json'} gives no primer length for {path.name}"
            )
        pitch, start, end = read_midi_notes(path, unit)
        keep = slice(primers[path.name], None)
        if len(pitch[keep]) >= 2:
            out[path.stem] = beats(pitch[keep], start[keep], end[keep], spb)
    if not out:
        raise LakhflowError("no generated piece has two or more notes after its primer")
    return out


def split_tracks(cfg: Config, split: str) -> list[Track]:
    """The split's tracks, each joined from its chunks (read in shuffled shard order)."""
    from pipelines.dataset import chunks

    found: dict[tuple[str, int], list[tuple[int, dict[str, np.ndarray]]]] = {}
    for chunk in chunks(cfg.paths.shards, split):
        notes = {name: np.asarray(chunk[name]) for name in ("pitch", "step", "duration")}
        found.setdefault((chunk["file_id"], chunk["track"]), []).append((chunk["offset"], notes))
    return [Track(f, t, join_chunks(parts)) for (f, t), parts in sorted(found.items())]


def join_chunks(parts: Sequence[tuple[int, Mapping[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    """One track's notes from its chunks (offset, notes): in offset order, and the notes a
    chunk shares with the one before it taken once."""
    joined: dict[str, list[np.ndarray]] = {name: [] for name in parts[0][1]}
    end = 0  # the track's notes taken so far
    for offset, notes in sorted(parts, key=lambda part: part[0]):
        if offset > end:
            raise LakhflowError(f"a track's chunks leave notes {end}..{offset - 1} out")
        for name, values in notes.items():
            joined[name].append(np.asarray(values)[end - offset :])
        end = max(end, offset + len(notes["pitch"]))
    return {name: np.concatenate(values) for name, values in joined.items()}


# --------------------------------------------------------------------------- copying


@dataclass
class Copies:
    """Each query's longest run found in the training files: exact, and up to transposition."""

    exact: list[mm.CopiedRun]
    transposed: list[mm.CopiedRun]
    sources: list[tuple[str, int]]  # corpus index -> (file_id, track)
    training_notes: int


def train_tracks(cfg: Config) -> Iterator[tuple[str, int, np.ndarray]]:
    """The pitched tracks of the training files, from the note tables: (file_id, track, pitches).

    The tables are sorted by file, track, start, pitch, so a track is a run of equal keys; a
    track may go on in the next part, so each part's last track waits for the next part.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    splits = pq.read_table(cfg.paths.splits, columns=["file_id", "split"])
    train_ids = splits.filter(pc.equal(splits["split"], "train"))["file_id"]
    pending: tuple[str, int, np.ndarray] | None = None
    for part in sorted(cfg.paths.notes.glob("notes-*.parquet")):
        table = pq.read_table(part, columns=["file_id", "track", "is_drum", "pitch"])
        keep = pc.and_(pc.is_in(table["file_id"], value_set=train_ids), pc.invert(table["is_drum"]))
        table = table.filter(keep)
        if not table.num_rows:
            continue
        file_codes = table["file_id"].combine_chunks().dictionary_encode()
        codes = np.asarray(file_codes.indices, dtype=np.int64)
        names = file_codes.dictionary.to_pylist()
        track = np.asarray(table["track"], dtype=np.int64)
        pitch = np.asarray(table["pitch"], dtype=np.int64)
        change = np.flatnonzero((np.diff(codes) != 0) | (np.diff(track) != 0)) + 1
        bounds = np.concatenate([[0], change, [len(pitch)]])
        for a, b in itertools.pairwise(bounds):
            current = (names[codes[a]], int(track[a]), pitch[a:b])
            if pending is not None and pending[:2] == current[:2]:
                current = (current[0], current[1], np.concatenate([pending[2], current[2]]))
            elif pending is not None:
                yield pending
            pending = current
    if pending is not None:
        yield pending


def training_notes(cfg: Config) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in cfg.paths.notes.glob("notes-*.parquet"))


def copy_anchor(total_notes: int, copy_threshold: int) -> int | None:
    """The k of the k-grams the copy detector filters the training notes by; None: no filter."""
    # Past a few million notes, only stretches whose k-grams occur in the queries are scanned:
    # still exact for every run of k notes or more, so for the copy threshold.
    return None if total_notes <= EXACT_COPY_NOTES else max(2, min(8, copy_threshold))


def find_copies(
    queries: Sequence[np.ndarray],
    tracks: Iterable[tuple[str, int, np.ndarray]],
    *,
    anchor: int | None,
) -> Copies:
    """Stream the training tracks (file_id, track, pitches) once through two suffix automata of
    the queries: exact pitches, and intervals (up to transposition)."""
    exact = mm.CopyDetector(queries, anchor=anchor, bits=7)
    transposed = mm.CopyDetector([mm.intervals(q) for q in queries], anchor=anchor, bits=8)
    sources: list[tuple[str, int]] = []
    fed = 0
    for file_id, track, pitch in tracks:
        index = len(sources)
        sources.append((file_id, track))
        exact.feed(pitch, index)
        transposed.feed(mm.intervals(pitch), index)
        fed += len(pitch)
    return Copies(exact.runs(), transposed.runs(), sources, fed)


def notes_of_intervals(run: int) -> int:
    """n equal consecutive intervals are n + 1 notes copied up to transposition (0 are 1 note)."""
    return run + 1


def file_paths(cfg: Config) -> dict[str, str]:
    import pyarrow.parquet as pq

    path = cfg.paths.files_table
    if not path.exists():
        return {}
    table = pq.read_table(path, columns=["file_id", "path"])
    return dict(zip(table["file_id"].to_pylist(), table["path"].to_pylist(), strict=True))


# --------------------------------------------------------------------------- MLflow


def log_to_mlflow(
    cfg: Config, inputs: Inputs, result: Mapping[str, Any], files: Sequence[Path]
) -> None:
    """Metrics and artifacts into the model's run; headline figures as registered-version tags."""
    import mlflow
    from mlflow import MlflowClient

    tracking.setup(cfg.paths)
    run_id = inputs.run_info.get("run_id")
    name = inputs.run_info.get("model_name") or cfg.train.model_name
    version = inputs.run_info.get("model_version")
    # every number of the flat figures; a yes/no (beats_shuffled) as 1 or 0, so runs compare
    numbers = {
        f"{registry.TAG_PREFIX}{k}": float(v)
        for k, v in result.items()
        if isinstance(v, int | float) and math.isfinite(v)
    }
    try:
        with mlflow.start_run(run_id=run_id):
            mlflow.log_metrics(numbers)
            for path in files:
                mlflow.log_artifact(str(path), artifact_path="evaluation")
        if version is not None:
            registry.set_tags(MlflowClient(), name, str(version), registry.evaluation_tags(result))
    except tracking.errors() as exc:
        raise LakhflowError(
            f"cannot log to the model's MLflow run {run_id} ({tracking.reason(exc)}); "
            "is MLFLOW_TRACKING_URI the store the model was trained in? eval.json and the "
            "report are written: run `lakhflow evaluate` again to log them"
        ) from None


# --------------------------------------------------------------------------- the stage


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def copying_summary(
    names: Sequence[str],
    generated: Sequence[mm.Piece],
    copies: Copies,
    paths: Mapping[str, str],
    threshold: int,
) -> dict[str, Any]:
    """Each generated piece's longest copied run and where it comes from, and the real
    excerpts' runs for scale; `copies` holds the generated pieces first, then the real ones."""
    per_piece = []
    for i, name in enumerate(names):
        run, shifted = copies.exact[i], copies.transposed[i]
        entry: dict[str, Any] = {
            "piece": name,
            "notes": len(generated[i]),
            "longest_copied_run": run.length,
            # n equal consecutive intervals are n + 1 notes copied up to transposition
            "longest_copied_run_transposed": notes_of_intervals(shifted.length),
        }
        if run.source >= 0:
            file_id, track = copies.sources[run.source]
            entry |= {"source_file_id": file_id, "source_track": track,
                      "source_path": paths.get(file_id, ""),
                      "source_end_note": run.source_end}  # fmt: skip
        per_piece.append(entry)
    real_runs = [c.length for c in copies.exact[len(names) :]]
    real_shifted = [notes_of_intervals(c.length) for c in copies.transposed[len(names) :]]
    return {
        "generated": per_piece,
        "real": real_runs,
        "real_transposed": real_shifted,
        "max_generated": max(c["longest_copied_run"] for c in per_piece),
        "max_generated_transposed": max(c["longest_copied_run_transposed"] for c in per_piece),
        "max_real": max(real_runs),
        "pieces_copying": sum(c["longest_copied_run"] >= threshold for c in per_piece),
        "threshold": threshold,
        "training_notes": copies.training_notes,
    }


# The figures of each set compared (model, real, shuffled) that eval.json carries flat.
FLAT_FIGURES = ("overlap", "kl", "longest_repeat", "pitch_range", "n_pitches_used",
                "scale_consistency")  # fmt: skip
# What `dvc metrics show/diff` reads (data/metrics/headline.json): at most 12 figures.
HEADLINE = (
    "pitch_nll",
    "pitch_nll_full_context",
    "pitch_nll_ratio_to_bigram",
    "overlap",
    "overlap_real",
    "overlap_shuffled",
    "overlap_ratio",
    "beats_shuffled",
    "longest_repeat",
    "longest_repeat_real",
    "pitch_range",
    "max_copied_run",
)


def music_figures(sets: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, Any]:
    """The flat figures of the model and both controls, the ratio to real and beats_shuffled."""
    out: dict[str, Any] = {}
    for figure in FLAT_FIGURES:
        for name in controls.SETS:
            suffix = "" if name == "model" else f"_{name}"
            out[f"{figure}{suffix}"] = sets[name][figure]["mean"]
            if figure == "overlap":
                out[f"overlap{suffix}_std"] = sets[name][figure]["std"]
    out["overlap_ratio"] = out["overlap"] / out["overlap_real"]
    out["beats_shuffled"] = controls.beats_shuffled(sets["model"]["overlap"],
                                                    sets["shuffled"]["overlap"])  # fmt: skip
    return out


def run(cfg: Config) -> dict[str, Any]:
    tracking.check(cfg.paths)  # an unreachable server fails now, not after the scoring
    inputs = read_inputs(cfg)
    manifest = inputs.manifest
    e = cfg.evaluate
    log.info("scoring the model on the test split ...")
    scores = score_model(cfg, inputs)
    fitted = fit_baselines(cfg, manifest)
    base = score_baselines(fitted, scores)
    log.info("comparing generated music with real excerpts and the controls ...")
    generated = generated_continuations(cfg, inputs)
    names = list(generated)
    continuations = [generated[n] for n in names]
    try:
        judged = controls.judge(
            continuations, split_tracks(cfg, "test"),
            set_size=e.set_size, draws=e.draws, seed=e.seed,
            seconds_per_beat=seconds_per_beat(manifest), kde_points=e.kde_points, ngrams=e.ngrams,
        )  # fmt: skip
    except ValueError as exc:
        raise LakhflowError(str(exc)) from None
    music: dict[str, Any] = dict(judged.summary)
    if music["set_size"] < e.set_size:
        log.warning(
            "sets of %d pieces, not evaluate.set_size=%d: %d generated pieces, and the test "
            "split holds %d excerpts of %d notes; generate.count=%d compares full sets",
            music["set_size"], e.set_size, len(names), music["test_excerpts"],
            music["eval_notes"], e.set_size,
        )  # fmt: skip
    anchor = copy_anchor(training_notes(cfg), e.copy_threshold)
    queries = [p.pitch for p in (*continuations, *judged.first.reference)]
    copies = find_copies(queries, train_tracks(cfg), anchor=anchor)
    music["copying"] = copying_summary(names, continuations, copies, file_paths(cfg),
                                       e.copy_threshold)  # fmt: skip

    pitch = scores.model["pitch"]
    bigram = base["pitch"]["bigram"]
    sets = music["sets"]
    result: dict[str, Any] = {
        "model_name": inputs.run_info.get("model_name", cfg.train.model_name),
        "model_version": str(inputs.run_info.get("model_version", "")),
        "heads": scores.heads,
        "pitch_nll": pitch["nll"],
        "pitch_accuracy": pitch["accuracy"],
        "pitch_nll_full_context": scores.full_context["nll"],
        "unigram_pitch_nll": base["pitch"]["unigram"]["nll"],
        "bigram_pitch_nll": bigram["nll"],
        "bigram_pitch_accuracy": bigram["accuracy"],
        "bigram_pitch_nll_full_context": base["pitch"]["bigram_full_context"]["nll"],
        "pitch_nll_ratio_to_bigram": pitch["nll"] / bigram["nll"],
        **music_figures(sets),
        "max_copied_run": music["copying"]["max_generated"],
        "max_copied_run_transposed": music["copying"]["max_generated_transposed"],
        "max_copied_run_real": music["copying"]["max_real"],
        "pieces_copying": music["copying"]["pieces_copying"],
        "eval_notes": music["eval_notes"],
        "set_size": music["set_size"],
        "draws": music["draws"],
        "test_windows": scores.windows,
        "source": str(manifest.get("source", "")),
        "splits_sha256": str(manifest.get("splits_sha256", "")),
    }
    for head, s in scores.model.items():
        if head != "pitch":
            result |= {f"{head}_{k}": v for k, v in s.items() if k != "count"}
    result["model"] = {"heads_kind": scores.heads, "windows": scores.windows, "heads": scores.model,
                       "pitch_full_context": scores.full_context}  # fmt: skip
    result["baselines"] = base
    result["music"] = music

    out = cfg.paths.evaluation
    with storage.atomic_dir(out, "evaluate") as tmp:
        pictures = plot_evaluation(judged.first, sets, tmp / "plots")
        (tmp / cfg.paths.report.name).write_text(report_html(result, pictures))
    eval_json = cfg.paths.eval_metrics
    storage.write_json(eval_json, _json_safe(result))
    storage.write_json(cfg.paths.headline, _json_safe({k: result[k] for k in HEADLINE}))
    files = [eval_json, cfg.paths.headline, cfg.paths.report,
             *sorted((out / "plots").glob("*.png"))]  # fmt: skip
    log_to_mlflow(cfg, inputs, result, files)
    log.info(
        "Evaluated %s version %s on %d test windows: pitch NLL %.3f (bigram %.3f, ratio %.2f; "
        "full context %.3f, bigram %.3f). Sets of %d pieces of %d notes over %d draws: overlap "
        "with real %.3f +- %.3f; real vs real %.3f +- %.3f; shuffled %.3f +- %.3f; ratio %.2f, "
        "%s the shuffled control. Longest copied run %d notes (real excerpts %d). Wrote %s, %s, "
        "%s and tagged the registered version.",
        result["model_name"], result["model_version"], scores.windows, result["pitch_nll"],
        result["bigram_pitch_nll"], result["pitch_nll_ratio_to_bigram"],
        result["pitch_nll_full_context"], result["bigram_pitch_nll_full_context"],
        result["set_size"], result["eval_notes"], result["draws"],
        result["overlap"], result["overlap_std"], result["overlap_real"],
        result["overlap_real_std"], result["overlap_shuffled"], result["overlap_shuffled_std"],
        result["overlap_ratio"], "beats" if result["beats_shuffled"] else "does NOT beat",
        result["max_copied_run"], result["max_copied_run_real"],
        eval_json, cfg.paths.headline, cfg.paths.report,
    )  # fmt: skip
    return {k: v for k, v in result.items() if not isinstance(v, dict)}


def _json_safe(value: Any) -> Any:
    """nan and inf become null, so eval.json stays valid JSON for DVC."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float | np.floating):
        return _finite(float(value))
    if isinstance(value, np.integer):
        return int(value)
    return value
