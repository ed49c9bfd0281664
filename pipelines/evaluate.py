"""Evaluate stage: reads data/model, the test and train splits (data/shards, data/notes) and
the generated MIDI (data/generated); scores the model and count baselines on the test windows,
judges the generated music against real excerpts and two controls (controls.py), parts against
their real registers in the train split, looks for runs copied from the training files, and for
a style-conditioned model tells whether its pieces sound like the style they were asked for (a
classifier fitted on real train excerpts, style.py, its accuracy on real test excerpts the
ceiling); writes data/metrics/eval.json (every figure),
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
from pipelines import controls, registry, storage, style, tracking
from pipelines import music_metrics as mm
from pipelines.config import MODEL_FILE, Config
from pipelines.controls import Track
from pipelines.errors import LakhflowError
from pipelines.instruments import part_name
from pipelines.midi import read_midi_parts
from pipelines.report import plot_evaluation, report_html
from pipelines.schema import BINNED_HEADS, HEADS, OTHER_STYLE, PITCHES, classes_of, n_classes

log = logging.getLogger(__name__)

BATCH = 256
# Above this many training notes the copy detector filters the corpus by k-grams first.
EXACT_COPY_NOTES = 5_000_000
# Real excerpts of each style the style classifier is fitted on, and scored on, at most (drawn
# at random): enough for a classifier of a few dozen features, and a bounded cost on Lakh.
STYLE_EXCERPTS = 1000


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
    """Batches of test windows (T+1 notes), at most `evaluate.max_test_windows` in all; for a
    style-conditioned model each with its style, as the model was trained."""
    from pipelines.dataset import windows
    from pipelines.generator import style_names

    stride = test_stride(manifest, cfg.evaluate.max_test_windows)
    dataset = windows(cfg.paths.shards, "test", dict(manifest), batch_size=BATCH, stride=stride,
                      groups=style_names(manifest) or None)  # fmt: skip
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
    """Unigram and bigram counts of each head over the train split's tracks; add-k from val
    (at most evaluate.max_train_chunks chunks of each, a fixed random sample)."""
    from pipelines.dataset import chunks

    fitted = {}
    train = {h: bl.TokenCounts(n_classes(manifest, h)) for h in HEADS}
    val = {h: bl.TokenCounts(n_classes(manifest, h)) for h in HEADS}
    overlap = chunk_overlap(manifest)
    for split, counts in (("train", train), ("val", val)):
        for chunk in chunks(cfg.paths.shards, split, cfg.evaluate.max_train_chunks):
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


def part_indices(manifest: Mapping[str, Any]) -> dict[str, int]:
    """Each part's track name ("piano-1", as the generate stage names the tracks) -> its index
    in the model's part vocabulary; {} for a model from before parts."""
    parts = manifest.get("parts")
    if not parts:
        return {}
    max_rank = int(parts["max_rank"])
    return {part_name(index, max_rank): index for index in range(int(parts["size"]))}


def generated_continuations(cfg: Config, inputs: Inputs) -> dict[str, mm.Piece]:
    """Each generated piece's notes after its primer, timed in beats, with their parts (from
    the tracks' names; -1 for a track no part of the model's is named; None for a model from
    before parts), in the order of the training streams."""
    primers = primer_lengths(inputs.generated)
    files = sorted(cfg.paths.generated.glob("*.mid"))
    if not files:
        raise LakhflowError(f"no MIDI files in {cfg.paths.generated}; run `lakhflow generate`")
    manifest = inputs.manifest
    unit = manifest.get("time_unit", "beats")
    spb = seconds_per_beat(manifest)
    names = part_indices(manifest)
    score = manifest.get("mode", "track") == "score"
    out = {}
    for path in files:
        if path.name not in primers:
            raise LakhflowError(
                f"{cfg.paths.generated / 'manifest.json'} gives no primer length for {path.name}"
            )
        pitch, start, end, part = read_midi_parts(path, unit, names, score=score)
        keep = slice(primers[path.name], None)
        if len(pitch[keep]) >= 2:
            piece = beats(pitch[keep], start[keep], end[keep], spb)
            out[path.stem] = mm.Piece(piece.pitch, piece.start, piece.end,
                                      part[keep] if names else None)  # fmt: skip
    if not out:
        raise LakhflowError("no generated piece has two or more notes after its primer")
    return out


def split_tracks(cfg: Config, split: str) -> list[Track]:
    """The split's tracks, each joined from its chunks (read in shuffled shard order), with
    their notes' parts and their file's group."""
    from pipelines.dataset import chunks

    found: dict[tuple[str, int], list[tuple[int, dict[str, np.ndarray]]]] = {}
    groups: dict[str, str] = {}
    for chunk in chunks(cfg.paths.shards, split):
        notes = {name: np.asarray(chunk[name]) for name in ("pitch", "step", "duration", "part")}
        found.setdefault((chunk["file_id"], chunk["track"]), []).append((chunk["offset"], notes))
        groups[chunk["file_id"]] = chunk["group"]
    return [Track(f, t, join_chunks(parts), groups[f]) for (f, t), parts in sorted(found.items())]


def train_part_ranges(cfg: Config, manifest: Mapping[str, Any]) -> mm.PartRanges:
    """Each part's real register (mm.part_ranges) over the train split's notes (at most
    evaluate.max_train_chunks chunks, a fixed random sample), each counted once. The notes are
    tallied chunk by chunk as (part, pitch) counts, so the split is never held whole; each
    part's notes are rebuilt from its counts (the same multiset, so the same quantiles) one
    part at a time."""
    from pipelines.dataset import chunks

    counts = np.zeros((0, PITCHES), dtype=np.int64)
    overlap = chunk_overlap(manifest)
    for chunk in chunks(cfg.paths.shards, "train", cfg.evaluate.max_train_chunks):
        seen = overlap if chunk["offset"] > 0 else 0  # counted with the chunk before
        pitch = np.asarray(chunk["pitch"][seen:], dtype=np.int64)
        part = np.asarray(chunk["part"][seen:], dtype=np.int64)
        if not len(part):
            continue
        rows = max(len(counts), int(part.max()) + 1)
        tally = np.bincount(part * PITCHES + pitch, minlength=rows * PITCHES)
        counts = np.pad(counts, ((0, rows - len(counts)), (0, 0))) + tally.reshape(rows, PITCHES)
    ranges: mm.PartRanges = {}
    for index in np.flatnonzero(counts.sum(axis=1)).tolist():
        pitch = np.repeat(np.arange(PITCHES), counts[index])
        ranges |= mm.part_ranges([(pitch, np.full(len(pitch), index))])
    return ranges


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


# --------------------------------------------------------------------------- style


def style_vocabulary(manifest: Mapping[str, Any]) -> list[str]:
    """The model's styles (its manifest's style groups, `other` first) where style accuracy
    means something: a group-conditioned model with at least two styles that had train files.
    [] otherwise (an unconditioned model, a model from before styles)."""
    found = manifest.get("style") or {}
    groups = found.get("groups") or []
    with_files = [g for g in groups if int(g.get("train_files", 0)) > 0]
    if found.get("condition") != "group" or len(with_files) < 2:
        return []
    return [str(g["name"]) for g in groups]


def style_of(group: str, styles: Sequence[str]) -> str:
    """A file's group as one of the model's styles: the groups it pooled are `other`."""
    return group if group in styles else OTHER_STYLE


def requested_styles(generated: Mapping[str, Any]) -> dict[str, str | None]:
    """MIDI file stem -> the style its piece was generated for (None: none was asked for), from
    data/generated/manifest.json."""
    return {
        Path(str(piece["midi"])).stem: piece.get("style")
        for piece in generated.get("pieces", [])
        if piece.get("midi")
    }


def style_excerpts(
    tracks: Sequence[Track],
    styles: Sequence[str],
    length: int,
    seconds_per_beat: float,
    rng: np.random.Generator,
    cap: int = STYLE_EXCERPTS,
) -> tuple[list[mm.Piece], list[str]]:
    """Every track's non-overlapping excerpts of `length` notes (from its first note), each
    labelled with its file's style; at most `cap` of each style, drawn at random."""
    by_style: dict[str, list[tuple[int, int]]] = {}
    for i, track in enumerate(tracks):
        label = style_of(track.group, styles)
        by_style.setdefault(label, []).extend(
            (i, first) for first in range(0, len(track) - length + 1, length)
        )
    pieces, labels = [], []
    for label in sorted(by_style):
        found = by_style[label]
        chosen = sorted(rng.choice(len(found), min(cap, len(found)), replace=False).tolist())
        for i, first in (found[k] for k in chosen):
            pieces.append(controls.excerpt_piece(tracks[i], first, length, seconds_per_beat))
            labels.append(label)
    return pieces, labels


def _style_piece(piece: mm.Piece, n_parts: int) -> mm.Piece:
    """A piece whose unknown parts (-1: a track no part of the model's is named) count as one
    more part, `n_parts`: real pieces never play it, so the classifier learns nothing of it."""
    if piece.part is None:
        return piece
    return mm.Piece(
        piece.pitch, piece.start, piece.end, np.where(piece.part < 0, n_parts, piece.part)
    )


def style_accuracy(
    train: tuple[Sequence[mm.Piece], Sequence[str]],
    test: tuple[Sequence[mm.Piece], Sequence[str]],
    generated: tuple[Sequence[mm.Piece], Sequence[str]],
    n_parts: int,
    seed: int = 0,
) -> dict[str, Any]:
    """How often the generated pieces sound like the style they were generated for, against
    how often held-out real pieces sound like their own (the ceiling).

    A style classifier (style.StyleClassifier) is fitted on the real `train` (pieces, styles),
    on the styles that have pieces; the ceiling is its accuracy on the real `test` pieces, the
    model's on the `generated` (pieces, requested styles). Pieces of a style it was not fitted
    on cannot be right and are left out (counted). Raises ValueError with fewer than two styles
    to fit on."""
    width = n_parts + 1  # the last: parts no part of the model's is named (see _style_piece)

    def features(pieces: Sequence[mm.Piece]) -> np.ndarray:
        return style.feature_matrix([_style_piece(p, n_parts) for p in pieces], width)

    classifier = style.StyleClassifier().fit(features(train[0]), list(train[1]), seed)
    classes = classifier.classes
    out: dict[str, Any] = {
        "styles": classes,
        "train_excerpts": {c: list(train[1]).count(c) for c in classes},
    }
    for name, (pieces, labels) in (("ceiling", test), ("model", generated)):
        kept = [i for i, label in enumerate(labels) if label in classes]
        wanted = [labels[i] for i in kept]
        predicted = classifier.predict(features([pieces[i] for i in kept])) if kept else []
        out[name] = {
            "accuracy": style.accuracy(predicted, wanted),
            "by_style": style.accuracy_by_group(predicted, wanted),
            "pieces": {c: wanted.count(c) for c in classes if c in wanted},
            "left_out": len(labels) - len(kept),
            "chance": style.chance_levels(wanted, classes),
        }
    ceiling, model = out["ceiling"]["accuracy"], out["model"]["accuracy"]
    out["ratio"] = model / ceiling if ceiling > 0 else math.nan
    return out


def evaluate_style(
    cfg: Config,
    inputs: Inputs,
    generated: Mapping[str, mm.Piece],
    test: Sequence[Track],
    length: int,
) -> dict[str, Any] | None:
    """The style figures of a style-conditioned model's pieces (style_accuracy), on excerpts
    of the evaluation length; None where they do not apply: an unconditioned model, fewer than
    two styles with train files, or pieces generated for no style."""
    manifest = inputs.manifest
    styles = style_vocabulary(manifest)
    requested = requested_styles(inputs.generated)
    names = [n for n in generated if requested.get(n) is not None]
    if not styles or not names:
        return None
    if len(names) < len(generated):
        log.warning("%d generated pieces name no style: left out of the style figures",
                    len(generated) - len(names))  # fmt: skip
    spb = seconds_per_beat(manifest)
    rng = np.random.default_rng(cfg.evaluate.seed)
    log.info("fitting the style classifier on the train split's excerpts ...")
    train = style_excerpts(split_tracks(cfg, "train"), styles, length, spb, rng)
    if len(set(train[1])) < 2:
        log.warning("the train split holds excerpts of %d notes of fewer than two styles: "
                    "no style figures", length)  # fmt: skip
        return None
    real = style_excerpts(test, styles, length, spb, rng)
    pieces = [controls.cut(generated[n], length) for n in names]
    wanted = [str(requested[n]) for n in names]
    n_parts = int((manifest.get("parts") or {}).get("size", 0))
    result = style_accuracy(train, real, (pieces, wanted), n_parts, cfg.evaluate.seed)
    return result | {"eval_notes": length}


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


# The figures of each set compared (model, real, shuffled) that eval.json carries flat (and
# MLflow as metrics): flat name -> the sets' key.
FLAT_FIGURES = {
    **{name: name for name in ("overlap", "kl", "longest_repeat", "pitch_range",
                               "n_pitches_used", "scale_consistency")},
    "polyphony": "muspy_polyphony",
    "polyphony_rate": "muspy_polyphony_rate",
    **{name: name for name in ("outside_range", "part_pitch_range", "parts_used")},
}  # fmt: skip
# What `dvc metrics show/diff` reads (data/metrics/headline.json): the targets, 12
# figures; eval.json holds the rest (the NLL at full context, real's longest repeat, ...).
HEADLINE = (
    "pitch_nll",
    "pitch_nll_ratio_to_bigram",
    "overlap",
    "overlap_real",
    "overlap_shuffled",
    "overlap_ratio",
    "beats_shuffled",
    "longest_repeat",
    "polyphony",
    "polyphony_real",
    "outside_range",
    "max_copied_run",
)
# ... and of a style-conditioned model, three more (absent for any other).
STYLE_HEADLINE = ("style_accuracy", "style_ceiling", "style_ratio")


def music_figures(sets: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, Any]:
    """The flat figures of the model and both controls, the ratio to real and beats_shuffled
    (nan for a figure the sets lack, as outside_range without the real ranges)."""
    missing = {"mean": math.nan, "std": math.nan}
    out: dict[str, Any] = {}
    for figure, key in FLAT_FIGURES.items():
        for name in controls.SETS:
            suffix = "" if name == "model" else f"_{name}"
            stat = sets[name].get(key, missing)
            out[f"{figure}{suffix}"] = stat["mean"]
            if figure == "overlap":
                out[f"overlap{suffix}_std"] = stat["std"]
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
    test = split_tracks(cfg, "test")
    ranges = train_part_ranges(cfg, manifest)
    try:
        judged = controls.judge(
            continuations, test,
            set_size=e.set_size, draws=e.draws, seed=e.seed,
            seconds_per_beat=seconds_per_beat(manifest), kde_points=e.kde_points, ngrams=e.ngrams,
            part_ranges=ranges,
        )  # fmt: skip
    except ValueError as exc:
        raise LakhflowError(str(exc)) from None
    music: dict[str, Any] = dict(judged.summary)
    max_rank = int((manifest.get("parts") or {}).get("max_rank", 0))
    music["part_ranges"] = {
        (part_name(i, max_rank) if max_rank else str(i)): list(r) for i, r in ranges.items()
    }
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
    styled = evaluate_style(cfg, inputs, generated, test, int(music["eval_notes"]))

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
    if styled is not None:
        result |= {
            "style_accuracy": styled["model"]["accuracy"],
            "style_ceiling": styled["ceiling"]["accuracy"],
            "style_ratio": styled["ratio"],
            "style_chance": styled["ceiling"]["chance"]["uniform"],
        }
        result["style"] = styled
    result["baselines"] = base
    result["music"] = music

    out = cfg.paths.evaluation
    with storage.atomic_dir(out, "evaluate") as tmp:
        pictures = plot_evaluation(judged.first, sets, tmp / "plots")
        (tmp / cfg.paths.report.name).write_text(report_html(result, pictures))
    eval_json = cfg.paths.eval_metrics
    storage.write_json(eval_json, _json_safe(result))
    headline = {k: result[k] for k in (*HEADLINE, *STYLE_HEADLINE) if k in result}
    storage.write_json(cfg.paths.headline, _json_safe(headline))
    files = [eval_json, cfg.paths.headline, cfg.paths.report,
             *sorted((out / "plots").glob("*.png"))]  # fmt: skip
    log_to_mlflow(cfg, inputs, result, files)
    log.info(
        "Evaluated %s version %s on %d test windows: pitch NLL %.3f (bigram %.3f, ratio %.2f; "
        "full context %.3f, bigram %.3f). Sets of %d pieces of %d notes over %d draws: overlap "
        "with real %.3f +- %.3f; real vs real %.3f +- %.3f; shuffled %.3f +- %.3f; ratio %.2f, "
        "%s the shuffled control. Polyphony %.2f (real %.2f); %.1f%% of notes outside their "
        "part's real range. Longest copied run %d notes (real excerpts %d).%s Wrote %s, %s, "
        "%s and tagged the registered version.",
        result["model_name"], result["model_version"], scores.windows, result["pitch_nll"],
        result["bigram_pitch_nll"], result["pitch_nll_ratio_to_bigram"],
        result["pitch_nll_full_context"], result["bigram_pitch_nll_full_context"],
        result["set_size"], result["eval_notes"], result["draws"],
        result["overlap"], result["overlap_std"], result["overlap_real"],
        result["overlap_real_std"], result["overlap_shuffled"], result["overlap_shuffled_std"],
        result["overlap_ratio"], "beats" if result["beats_shuffled"] else "does NOT beat",
        result["polyphony"], result["polyphony_real"], 100 * result["outside_range"],
        result["max_copied_run"], result["max_copied_run_real"],
        "" if styled is None else (
            f" Style: {result['style_accuracy']:.2f} of the pieces sound like the style asked "
            f"for; real test excerpts {result['style_ceiling']:.2f} (ratio "
            f"{result['style_ratio']:.2f}; chance {result['style_chance']:.2f})."
        ),
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
