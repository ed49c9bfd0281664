"""The evaluate stage: its parts on hand-made inputs, and the whole stage after a tiny real
train and generate on the sequences helper's shards, against a real MLflow store."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import another_hash_seed, folder_digests, mlflow_store, notes_project, run_cli

from pipelines import config, evaluate, promote, schema
from pipelines import music_metrics as mm
from pipelines.errors import LakhflowError

TINY_TRAIN = [
    "train.epochs=1",
    "train.units=8",
    "train.embedding_dim=4",
    "train.batch_size=16",
    "train.steps_per_epoch=3",
]
TINY_GENERATE = [
    "generate.count=3",
    "generate.notes=24",
    "generate.primer_notes=8",
    "generate.wav=false",
]
TINY_EVALUATE = ["evaluate.max_test_windows=300", "evaluate.copy_threshold=12", "evaluate.draws=3"]
COPIED = 20  # notes of a training track planted in one generated piece


# --------------------------------------------------------------------------- parts


def test_primer_lengths_from_the_generate_manifest() -> None:
    manifest = {
        "pieces": [
            {"midi": "piece-000.mid", "notes": 40, "generated_notes": 32, "primer": {"notes": 8}},
            {"midi": "piece-001.mid", "primer": {"source": "pitches", "notes": 5}},
        ]
    }
    assert evaluate.primer_lengths(manifest) == {"piece-000.mid": 8, "piece-001.mid": 5}


def test_a_track_several_chunks_long_is_joined_with_each_note_once() -> None:
    """The sequences stage's chunks overlap by seq_length notes, and come in shuffled order."""
    from pipelines.sequences import chunk_starts

    n, chunk_notes, seq_length = 1000, 64, 8
    pitch = np.arange(n) % 128
    step = np.arange(n, dtype=np.float64)
    parts = []
    for lo in chunk_starts(n, chunk_notes, seq_length):
        hi = min(n, lo + chunk_notes)
        parts.append((lo, {"pitch": pitch[lo:hi], "step": step[lo:hi]}))
    assert len(parts) > 10
    shuffled = [parts[i] for i in np.random.default_rng(0).permutation(len(parts))]
    joined = evaluate.join_chunks(shuffled)
    assert np.array_equal(joined["pitch"], pitch) and np.array_equal(joined["step"], step)
    with pytest.raises(LakhflowError, match=r"leave notes 64\.\.119 out"):
        evaluate.join_chunks([(0, {"pitch": pitch[:64]}), (120, {"pitch": pitch[120:180]})])


def test_the_baselines_count_each_training_note_once() -> None:
    """Counted chunk by chunk, skipping each chunk's overlap, equals counting the whole track."""
    from pipelines.baselines import TokenCounts
    from pipelines.sequences import chunk_starts

    tokens = np.random.default_rng(3).integers(0, 12, 700)
    whole = TokenCounts.of([tokens], 12)
    chunked = TokenCounts(12)
    manifest = {"seq_length": 16}
    for lo in chunk_starts(len(tokens), 100, 16):
        seen = evaluate.chunk_overlap(manifest) if lo else 0
        chunked.add(tokens[lo : lo + 100], seen=seen)
    assert np.array_equal(chunked.unigram, whole.unigram)
    assert np.array_equal(chunked.bigram, whole.bigram)
    assert chunked.unigram.sum() == 700 and chunked.bigram.sum() == 699


def test_test_stride_spreads_the_cap_over_the_split() -> None:
    manifest = {"stride": 1, "splits": {"test": {"windows": 10_000}}}
    assert evaluate.test_stride(manifest, 20_000) == 1
    assert evaluate.test_stride(manifest, 3_000) == 4


def note_part(path: Path, rows: list[tuple[str, int, bool, int]]) -> None:
    cols: dict[str, list] = {name: [] for name in schema.NOTES.names}
    for i, (file_id, track, drum, pitch) in enumerate(rows):
        values = (file_id, track, 0, drum, pitch, 80, i * 0.5, i * 0.5 + 0.5, i * 1.0, i + 1.0)
        for name, value in zip(schema.NOTES.names, values, strict=True):
            cols[name].append(value)
    pq.write_table(pa.table(cols, schema=schema.NOTES), path)


def test_copies_are_found_across_note_table_parts_in_train_files_only(tmp_path: Path) -> None:
    project = tmp_path / "project"
    notes = project / "data" / "notes"
    shards = project / "data" / "shards"
    notes.mkdir(parents=True)
    shards.mkdir(parents=True)
    rng = np.random.default_rng(5)
    melody = rng.integers(40, 90, 60).tolist()
    drums = rng.integers(35, 50, 60).tolist()
    held_out = rng.integers(40, 90, 60).tolist()
    # File "a" (train): a drum track, then the melody's track cut across two parts.
    part0 = [("a", 0, True, p) for p in drums] + [("a", 1, False, p) for p in melody[:30]]
    part1 = [("a", 1, False, p) for p in melody[30:]] + [("b", 0, False, p) for p in held_out]
    note_part(notes / "notes-00000.parquet", part0)
    note_part(notes / "notes-00001.parquet", part1)
    splits = pa.table({"file_id": ["a", "b"], "split_key": ["a", "b"], "split": ["train", "test"]})
    pq.write_table(splits, shards / "splits.parquet")
    shutil.copy2(Path(__file__).parents[1] / "params.yaml", project / "params.yaml")
    cfg = config.load(project)

    tracks = list(evaluate.train_tracks(cfg))
    assert [(f, t, len(p)) for f, t, p in tracks] == [("a", 1, 60)]

    planted = np.array([1, 2, 3, *melody[20:45], 4, 5])  # 25 notes across the parts' seam
    from_drums = np.array(drums[:20])  # drums are no pitched training notes
    from_test = np.array(held_out[:20])  # file "b" is not a training file
    anchor = evaluate.copy_anchor(evaluate.training_notes(cfg), cfg.evaluate.copy_threshold)
    copies = evaluate.find_copies(
        [planted, from_drums, from_test], evaluate.train_tracks(cfg), anchor=anchor
    )
    assert copies.exact[0].length == 25
    assert copies.sources[copies.exact[0].source] == ("a", 1)
    assert copies.exact[1].length < 5 and copies.exact[2].length < 5
    assert copies.training_notes == 60
    # Transposed up a fourth: the same 25 notes, up to transposition.
    shifted = evaluate.find_copies([planted + 5], evaluate.train_tracks(cfg), anchor=anchor)
    assert evaluate.notes_of_intervals(shifted.transposed[0].length) >= 25


def test_the_copy_detector_filters_by_k_grams_only_past_a_few_million_notes() -> None:
    assert evaluate.copy_anchor(evaluate.EXACT_COPY_NOTES, 16) is None
    assert evaluate.copy_anchor(evaluate.EXACT_COPY_NOTES + 1, 16) == 8
    assert evaluate.copy_anchor(evaluate.EXACT_COPY_NOTES + 1, 5) == 5
    assert evaluate.copy_anchor(evaluate.EXACT_COPY_NOTES + 1, 1) == 2


def melodies(seed: int, count: int, length: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(48, 84, length) for _ in range(count)]


def pieces_of(pitches: list[np.ndarray], step: float = 0.5) -> list[mm.Piece]:
    return [mm.Piece.from_steps(p, np.full(len(p), step), np.full(len(p), step)) for p in pitches]


def test_copies_are_found_in_tracks_given_as_arrays() -> None:
    tracks = [("a", 0, m) for m in melodies(1, 2, 40)]
    planted = np.concatenate([[1, 2], tracks[1][2][5:30], [3]])
    for anchor in (None, 8):  # the k-gram filter finds the same runs past the threshold
        copies = evaluate.find_copies([planted, planted + 2], iter(tracks), anchor=anchor)
        assert copies.exact[0].length == 25 and copies.sources[copies.exact[0].source] == ("a", 0)
        assert copies.exact[1].length < 25
        assert evaluate.notes_of_intervals(copies.transposed[1].length) >= 25
        assert copies.training_notes == 80


def test_copies_are_summarised_per_piece_with_their_source() -> None:
    gen = pieces_of(melodies(2, 3, 24))
    real = pieces_of(melodies(3, 2, 24))
    # A training track copied into the last piece, and where it comes from.
    train = [("f", 1, np.concatenate([[0, 1], gen[2].pitch[4:20], [2]]))]
    copies = evaluate.find_copies([p.pitch for p in (*gen, *real)], train, anchor=None)
    copying = evaluate.copying_summary(["g0", "g1", "g2"], gen, copies, {"f": "f.mid"}, 12)
    assert [c["piece"] for c in copying["generated"]] == ["g0", "g1", "g2"]
    assert copying["generated"][2]["longest_copied_run"] == 16
    assert copying["generated"][2]["source_path"] == "f.mid"
    assert copying["max_generated"] == 16 and copying["pieces_copying"] == 1
    assert len(copying["real"]) == 2 and copying["training_notes"] == 19


# --------------------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def evaluated(
    note_corpus: dict, mlflow_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, dict]]:
    """Shards of the shared note corpus with a test split, a tiny model trained and sampled
    on them, then evaluated."""

    from pipelines import generate, sequences, train

    # The sequences tests' split leaves the test split empty; this one holds a chorale out.
    split = {"train": 0.6, "val": 0.2, "test": 0.2}
    project = notes_project(
        tmp_path_factory.mktemp("evaluate") / "project", note_corpus, split=split
    )
    sequences.run(config.load(project))
    with mlflow_store(project, mlflow_template):
        train.run(config.load(project, TINY_TRAIN))
        generate.run(config.load(project, TINY_GENERATE))
        plant_copy(project)
        result = evaluate.run(config.load(project, TINY_EVALUATE))
        yield project, result


def plant_copy(project: Path) -> None:
    """Overwrite the last generated piece: its primer, then COPIED notes of a training track."""
    import pretty_midi

    cfg = config.load(project)
    melody = next(p for _, _, p in evaluate.train_tracks(cfg) if len(p) >= COPIED + 5)
    generated = project / "data" / "generated"
    manifest = json.loads((generated / "manifest.json").read_text())
    piece = manifest["pieces"][-1]
    primer = piece["notes"] - piece["generated_notes"]
    midi = pretty_midi.PrettyMIDI(initial_tempo=manifest["tempo_bpm"])
    inst = pretty_midi.Instrument(program=0)
    beat = 60.0 / manifest["tempo_bpm"]
    pitches = [30 + i for i in range(primer)] + melody[5 : 5 + COPIED].tolist()
    for i, pitch in enumerate(pitches):
        inst.notes.append(pretty_midi.Note(80, int(pitch), i * beat, (i + 1) * beat))
    midi.instruments.append(inst)
    midi.write(str(generated / piece["midi"]))
    piece["generated_notes"] = COPIED
    piece["notes"] = primer + COPIED
    (generated / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.slow
def test_eval_json_headline_and_detail(evaluated: tuple[Path, dict]) -> None:
    project, result = evaluated
    data = json.loads((project / "data" / "metrics" / "eval.json").read_text())
    for key in ("pitch_nll", "bigram_pitch_nll", "unigram_pitch_nll", "pitch_nll_ratio_to_bigram",
                "pitch_nll_full_context", "bigram_pitch_nll_full_context", "overlap",
                "overlap_real", "overlap_shuffled", "overlap_ratio", "longest_repeat",
                "longest_repeat_shuffled", "max_copied_run", "pitch_accuracy", "step_nll",
                "velocity_accuracy"):  # fmt: skip
        assert isinstance(data[key], float | int) and math.isfinite(data[key]), key
    assert data["pitch_nll_ratio_to_bigram"] == pytest.approx(
        data["pitch_nll"] / data["bigram_pitch_nll"]
    )
    assert data["overlap_ratio"] == pytest.approx(data["overlap"] / data["overlap_real"])
    assert isinstance(data["beats_shuffled"], bool)
    # Counts beat a uniform guess over 128 pitches; context beats counts alone.
    assert data["bigram_pitch_nll"] < data["unigram_pitch_nll"] < math.log(128)
    for figure in ("overlap", "overlap_real", "overlap_shuffled"):
        assert 0 <= data[figure] <= 1
    # What dvc metrics reads: the headline, 12 figures, equal to eval.json's; an unconditioned
    # model has no style figures at all.
    headline = json.loads((project / "data" / "metrics" / "headline.json").read_text())
    assert set(headline) == set(evaluate.HEADLINE) and len(headline) <= 12
    assert all(headline[k] == data[k] for k in headline)
    assert "style" not in data and not any(k.startswith("style_") for k in data)
    assert data["test_windows"] <= 300
    assert data["heads"] == "categorical"
    manifest = json.loads((project / "data" / "shards" / "manifest.json").read_text())
    assert data["splits_sha256"] == manifest["splits_sha256"]
    # Every head of the model was scored on every position of every test window.
    heads = data["model"]["heads"]
    assert set(heads) == {"pitch", "step", "duration", "velocity", "part"}
    assert set(data["baselines"]) == set(heads)
    assert math.isfinite(data["part_nll"]) and 0 <= data["part_accuracy"] <= 1
    assert heads["pitch"]["count"] == data["test_windows"] * manifest["seq_length"]
    assert data["baselines"]["pitch"]["bigram"]["count"] == heads["pitch"]["count"]
    # The full-context score and its bigram are on one target per window: its last note.
    full = data["model"]["pitch_full_context"]
    assert full["count"] == data["test_windows"]
    assert data["baselines"]["pitch"]["bigram_full_context"]["count"] == data["test_windows"]
    music = data["music"]
    assert music["generated_pieces"] == 3 and music["set_size"] == 3 and music["draws"] == 3
    assert music["eval_notes"] <= music["continuation_notes"] == COPIED  # the planted piece
    for name in ("model", "real", "shuffled", "reference"):
        figures = music["sets"][name]
        assert set(mm.PIECE_FIGURES) <= set(figures)
        assert {f"muspy_{m}" for m in mm.MUSPY_METRICS} <= set(figures)
        assert {"distinct_2grams", "distinct_4grams", "distinct_8grams"} <= set(figures)
        if name != "reference":
            assert {f"overlap_{f}" for f in mm.FEATURES} <= set(figures)
        # Track mode: every track is one part; the figures are defined and in their bounds.
        assert 0 <= figures["outside_range"]["mean"] <= 1, name
        assert figures["parts_used"]["mean"] >= 1, name
        assert figures["part_pitch_range"]["mean"] >= 0, name
    for suffix in ("", "_real", "_shuffled"):
        assert 0 <= data[f"outside_range{suffix}"] <= 1
        assert data[f"polyphony{suffix}"] >= 1 and data[f"parts_used{suffix}"] >= 1
    assert music["part_ranges"] and all(lo <= hi for lo, hi in music["part_ranges"].values())
    assert result["pitch_nll"] == data["pitch_nll"]


@pytest.mark.slow
def test_the_planted_copy_is_reported(evaluated: tuple[Path, dict]) -> None:
    project, _ = evaluated
    data = json.loads((project / "data" / "metrics" / "eval.json").read_text())
    copying = data["music"]["copying"]
    planted = copying["generated"][-1]
    assert planted["longest_copied_run"] == COPIED
    assert planted["source_path"].endswith(".mid")
    assert data["max_copied_run"] == COPIED
    assert data["pieces_copying"] >= 1
    assert all(c["longest_copied_run"] < COPIED for c in copying["generated"][:-1])


@pytest.mark.slow
def test_plots_and_report(evaluated: tuple[Path, dict]) -> None:
    project, _ = evaluated
    out = project / "data" / "evaluation"
    plots = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert plots == ["muspy_metrics.png", "overlap_by_feature.png", "piano_rolls.png",
                     "piece_figures.png", "yang_lerch.png"]  # fmt: skip
    for name in plots:
        assert (out / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    assert page.count('<img src="data:image/png;base64,') == len(plots)
    assert "pitch_class_histogram" in page and "scale_consistency" in page
    assert "real vs real" in page and "shuffled" in page and "what it measures" in page


@pytest.mark.slow
def test_real_tracks_carry_parts_and_groups_and_the_ranges_count_each_train_note_once(
    evaluated: tuple[Path, dict],
) -> None:
    project, _ = evaluated
    cfg = config.load(project)
    manifest = json.loads((project / "data" / "shards" / "manifest.json").read_text())
    vocabulary = {v["index"] for v in manifest["parts"]["vocabulary"]}
    train = evaluate.split_tracks(cfg, "train")
    for track in (*train, *evaluate.split_tracks(cfg, "test")):
        assert len(track.notes["part"]) == len(track)
        assert set(track.notes["part"].tolist()) <= vocabulary
        assert len(set(track.notes["part"].tolist())) == 1  # track mode: a track is one part
        assert track.group in {"bach", "other", "synth"}
    # Counted chunk by chunk (each note once), the ranges equal those of the joined tracks.
    joined = mm.part_ranges((t.notes["pitch"], t.notes["part"]) for t in train)
    assert evaluate.train_part_ranges(cfg, manifest) == joined
    assert sum(len(t) for t in train) == manifest["splits"]["train"]["notes"]


def test_a_written_piece_in_parts_reads_back_with_its_parts(tmp_path: Path) -> None:
    """The generate stage's tracks ("piano-1", ...) map back to the model's part indices; a
    track of another name is part -1; drum tracks are read too; a score comes back in the order
    of the sequences stage's merge (onset, part, pitch from high to low)."""
    from pipelines.instruments import PART_CLASSES, part_name
    from pipelines.midi import PartTrack, parts_to_midi, read_midi_notes, read_midi_parts

    max_rank = 4
    manifest = {"parts": {"max_rank": max_rank, "size": len(PART_CLASSES) * max_rank}}
    names = evaluate.part_indices(manifest)
    assert names["piano-1"] == 0 and names["piano-4"] == 3 and names["strings-2"] == 5 * 4 + 1
    assert names["drums-1"] == (len(PART_CLASSES) - 1) * max_rank
    assert all(part_name(i, max_rank) == n for n, i in names.items())
    drums = names["drums-1"]
    tracks = {0: PartTrack("piano-1", 0), 1: PartTrack("piano-2", 0),
              drums: PartTrack("drums-1", 0, is_drum=True),
              99: PartTrack("mystery", 40)}  # fmt: skip
    pitch = np.array([72, 60, 76, 36, 48, 64])
    part = np.array([0, 1, 0, drums, 99, 1])
    start = np.array([0.0, 0.0, 0.0, 0.5, 1.0, 1.0])  # seconds, at 120 bpm: beats 0, 1, 2
    midi = parts_to_midi(pitch, start, start + 0.5, np.full(6, 80), part, tracks, 120.0)
    path = tmp_path / "piece.mid"
    midi.write(str(path))

    got_pitch, got_start, got_end, got_part = read_midi_parts(path, "beats", names, score=True)
    assert got_pitch.tolist() == [76, 72, 60, 36, 48, 64]  # part 0 high to low, then part 1
    assert got_part.tolist() == [0, 0, 1, drums, -1, 1]  # "mystery" is no part of the model's
    assert got_start.tolist() == pytest.approx([0, 0, 0, 1, 2, 2])
    assert got_end.tolist() == pytest.approx([1, 1, 1, 2, 3, 3])
    _, _, _, as_track = read_midi_parts(path, "beats", names, score=False)
    assert as_track.tolist() == [1, 0, 0, drums, -1, 1]  # by onset, then pitch low to high
    # The plain reader leaves the drums out, and knows nothing of parts.
    assert read_midi_notes(path, "beats")[0].tolist() == [60, 72, 76, 48, 64]
    assert evaluate.part_indices({}) == {}


@pytest.mark.slow
def test_another_process_writes_the_same_eval_json_report_and_plots(
    evaluated: tuple[Path, dict], tmp_path: Path
) -> None:
    """`lakhflow evaluate` in another process (another hash seed), on a copy of the project and
    of its MLflow store, writes eval.json, report.html and every plot byte for byte: nothing in
    them is run-specific (the model's name and version are the same in the copy)."""
    import sqlite3

    project, _ = evaluated
    copy = tmp_path / "project"
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns("mlartifacts"))
    eval_json = Path("data", "metrics", "eval.json")
    (copy / eval_json).unlink()
    shutil.rmtree(copy / "data" / "evaluation")
    db = copy / "test-mlflow.db"
    # The store names the fixture's artifact folder: the copy's run logs into a folder of its own.
    with sqlite3.connect(db) as store:
        for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri")):
            store.execute(
                f"UPDATE {table} SET {column} = replace({column}, ?, ?)",
                (project.as_uri(), copy.as_uri()),
            )
    store.close()
    overrides = [arg for override in TINY_EVALUATE for arg in ("-S", override)]
    done = run_cli(["lakhflow", "evaluate", *overrides], copy, MLFLOW_TRACKING_URI=f"sqlite:///{db}",
                   PYTHONHASHSEED=another_hash_seed())  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert list(copy.glob("mlartifacts/*/artifacts/evaluation/eval.json"))
    first = folder_digests(project / "data" / "evaluation")
    assert {"report.html", "plots/yang_lerch.png"} <= first.keys()
    assert folder_digests(copy / "data" / "evaluation") == first
    assert (copy / eval_json).read_bytes() == (project / eval_json).read_bytes()


@pytest.mark.slow
def test_logged_to_the_run_and_tagged_on_the_version_then_promoted(
    evaluated: tuple[Path, dict],
) -> None:
    from mlflow import MlflowClient

    project, result = evaluated
    info = json.loads((project / "data" / "model" / "run.json").read_text())
    client = MlflowClient()
    run = client.get_run(info["run_id"])
    assert run.data.metrics["eval.pitch_nll"] == pytest.approx(result["pitch_nll"])
    assert run.data.metrics["eval.beats_shuffled"] == float(result["beats_shuffled"])
    artifacts = {a.path for a in client.list_artifacts(info["run_id"], "evaluation")}
    assert {
        "evaluation/eval.json",
        "evaluation/report.html",
        "evaluation/yang_lerch.png",
    } <= artifacts
    tags = client.get_model_version(info["model_name"], info["model_version"]).tags
    assert float(tags["eval.pitch_nll"]) == pytest.approx(result["pitch_nll"])
    assert float(tags["eval.overlap_ratio"]) == pytest.approx(result["overlap_ratio"])
    assert tags["eval.beats_shuffled"] in ("True", "False")
    assert tags["splits_sha256"] == result["splits_sha256"] and tags["source"] == "bach"
    # The promote stage reads those tags: the first evaluated candidate becomes the champion.
    promoted = promote.run(config.load(project))
    assert promoted["promoted"]
    champion = client.get_model_version_by_alias(info["model_name"], "champion")
    assert str(champion.version) == str(info["model_version"])


@pytest.mark.slow
def test_the_tutorials_regression_model_is_scored_on_the_last_note(
    evaluated: tuple[Path, dict], tmp_path: Path
) -> None:
    from pipelines.model import build_model

    project, _ = evaluated
    copy = tmp_path / "project"
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns("*.db", "mlartifacts"))
    cfg = config.load(copy, ["train.heads=regression", "train.units=4", *TINY_EVALUATE])
    inputs = evaluate.read_inputs(cfg)
    build_model(cfg.train, inputs.manifest).save(copy / "data" / "model" / "model.keras")
    scores = evaluate.score_model(cfg, inputs)
    assert scores.heads == "regression"
    assert set(scores.model) == {"pitch", "step", "duration"}
    assert scores.model["pitch"]["count"] == scores.windows
    assert {"mse", "count"} == set(scores.model["step"])
    # An untrained softmax over 128 pitches is close to uniform.
    assert scores.model["pitch"]["nll"] == pytest.approx(math.log(128), abs=0.5)
    # The baselines are scored on the same targets: one last note per window.
    assert len(scores.targets["pitch"]) == len(scores.previous["pitch"]) == scores.windows
