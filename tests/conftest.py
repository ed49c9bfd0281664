"""Shared fixtures: a temporary lakhflow project (a real git + DVC repo), the CLI, MLflow stores."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# What a project needs for `dvc repro`: params, stages, DVC's config, and the stages' code deps.
PROJECT_FILES = [
    "params.yaml",
    "dvc.yaml",
    ".dvcignore",
    ".gitignore",
    "presets",
    ".dvc/config",
    ".dvc/.gitignore",
    "pipelines",
]

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


def tool_env(**extra: str) -> dict[str, str]:
    """The environment for subprocesses: this venv's tools first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def make_project(dest: Path, params: dict | None = None) -> Path:
    """A copy of the project's DVC/params files in `dest`, as a git repo with one commit."""
    import yaml

    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            ignore = shutil.ignore_patterns("__pycache__")
            shutil.copytree(src, dest / name, dirs_exist_ok=True, ignore=ignore)
        elif src.exists():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    if params:
        tree = yaml.safe_load((dest / "params.yaml").read_text())
        for section, values in params.items():
            tree.setdefault(section, {}).update(values)
        (dest / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=dest, check=True)
    return dest


def run_cli(args: list[str], cwd: Path, timeout: float = 600, **env: str):
    """Run a command (`lakhflow ...`, `dvc ...`) in `cwd`; returns CompletedProcess with text."""
    return subprocess.run(
        args, cwd=cwd, env=tool_env(**env), capture_output=True, text=True, timeout=timeout
    )


def another_hash_seed() -> str:
    """A PYTHONHASHSEED other than this process's, for the second build of a determinism test:
    set and dict-of-str orders differ between the two builds even where the suite's runner fixed
    the seed (a proto map's order differs whatever the seed: it follows addresses)."""
    return "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"


def folder_digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by its path inside it: what DVC compares."""
    import hashlib

    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh project folder with the repo's params.yaml and dvc.yaml, as a git repo."""
    return make_project(tmp_path / "project")


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated MLflow SQLite store per session (migrations take seconds); copied per test."""
    import mlflow

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_uri(tmp_path: Path, mlflow_template: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh MLflow store for one test, set as MLFLOW_TRACKING_URI."""
    import mlflow

    db = tmp_path / "mlflow.db"
    shutil.copy2(mlflow_template, db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    return uri


# ---- MIDI files written event by event (midi, parse, note histograms)


def make_midi(tracks: list[list[tuple[int, Any]]], tpb: int = 480) -> bytes:
    """A type-1 MIDI file from (absolute tick, message) lists, one per track, kept in order."""
    import io

    import mido

    file = mido.MidiFile(ticks_per_beat=tpb)
    for events in tracks:
        track = mido.MidiTrack()
        last = 0
        for tick, message in sorted(events, key=lambda e: e[0]):  # stable: same-tick order kept
            track.append(message.copy(time=tick - last))
            last = tick
        file.tracks.append(track)
    buffer = io.BytesIO()
    file.save(file=buffer)
    return buffer.getvalue()


# ---- note tables made from MIDI, for the sequences stage and its readers (sequences helper)


def midi_note_rows(path: Path) -> dict[str, list]:
    """A MIDI file's notes as NOTES-schema columns (pretty_midi), sorted as parse sorts them."""
    import hashlib

    import pretty_midi

    file_id = hashlib.md5(path.read_bytes()).hexdigest()
    midi = pretty_midi.PrettyMIDI(str(path))
    rows = []
    for track, inst in enumerate(midi.instruments):
        for n in inst.notes:
            beats = [midi.time_to_tick(t) / midi.resolution for t in (n.start, n.end)]
            rows.append((file_id, track, inst.program, inst.is_drum, n.pitch, n.velocity,
                         n.start, n.end, *beats))  # fmt: skip
    rows.sort(key=lambda r: (r[1], r[6], r[4]))
    names = ["file_id", "track", "program", "is_drum", "pitch", "velocity", "start", "end",
             "start_beat", "end_beat"]  # fmt: skip
    return {name: [r[i] for r in rows] for i, name in enumerate(names)}


def write_note_tables(
    notes_dir: Path,
    midis: list[tuple[Path, str]],
    extra_files: list[dict] | None = None,
    part_rows: int = 3000,
) -> dict[str, str]:
    """data/notes/ for MIDI files (path, group): notes-*.parquet parts (a file may span two parts,
    as a streaming writer leaves them) and files.parquet; returns {path name: file_id}."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines import schema

    notes_dir.mkdir(parents=True, exist_ok=True)
    tables, files, ids = [], [], {}
    for path, group in midis:
        cols = midi_note_rows(path)
        file_id = hashlib.md5(path.read_bytes()).hexdigest()
        ids[path.name] = file_id
        if file_id in {f["file_id"] for f in files}:
            status = "duplicate"
        else:
            status = "ok"
            tables.append(pa.table(cols, schema=schema.NOTES))
        files.append({"file_id": file_id, "path": f"{group}/{path.name}",
                      "size": path.stat().st_size, "status": status, "error_type": None,
                      "error": None, "n_notes": len(cols["pitch"]),
                      "n_tracks": len(set(cols["track"])),
                      "duration_s": max(cols["end"], default=0.0), "group": group})  # fmt: skip
    files.extend(extra_files or [])
    notes = pa.concat_tables(tables).sort_by([(c, "ascending") for c in schema.NOTES_SORT])
    for i, lo in enumerate(range(0, notes.num_rows, part_rows)):
        pq.write_table(notes.slice(lo, part_rows), notes_dir / f"notes-{i:05d}.parquet")
    pq.write_table(pa.Table.from_pylist(files, schema=schema.FILES), notes_dir / "files.parquet")
    return ids


def bach_midi(dest: Path, works: list[str]) -> list[Path]:
    """music21 corpus works written as MIDI files."""
    from music21 import corpus

    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for work in works:
        path = dest / f"{work.replace('/', '_')}.mid"
        if not path.exists():
            corpus.parse(work).write("midi", fp=str(path))
        out.append(path)
    return out


CHORALES = ["bach/bwv66.6", "bach/bwv1.6", "bach/bwv10.7", "bach/bwv101.7", "bach/bwv102.7",
            "bach/bwv103.6", "bach/bwv104.6", "bach/bwv108.6", "bach/bwv11.6", "bach/bwv110.7",
            "bach/bwv111.6", "bach/bwv112.5"]  # fmt: skip


def _edited(src: Path, dest: Path, edit) -> Path:
    import pretty_midi

    midi = pretty_midi.PrettyMIDI(str(src))
    edit(midi)
    midi.write(str(dest))
    return dest


def _reharmonised(midi) -> None:
    """Another version of the tune: other lower voices, in another key."""
    for voice, inst in enumerate(midi.instruments):
        for i, note in enumerate(inst.notes):
            note.pitch += 3 - (0 if voice == 0 else 1 + (i + voice) % 3)


def _multi_program(path: Path) -> Path:
    """Piano with the extreme pitches 0 and 127, strings, drums, and a too-short flute."""
    import numpy as np
    import pretty_midi

    rng = np.random.default_rng(7)
    midi = pretty_midi.PrettyMIDI(initial_tempo=100)
    tracks = [(0, False, 300, (0, 128)), (48, False, 120, (48, 72)),
              (0, True, 100, (35, 50)), (73, False, 10, (70, 80))]  # fmt: skip
    for program, drum, count, pitches in tracks:
        inst = pretty_midi.Instrument(program=program, is_drum=drum)
        t = 0.0
        for k in range(count):
            pitch = int(rng.integers(*pitches)) if k % 50 else (0 if k % 100 else 127)
            t += float(rng.choice([0.0, 0.15, 0.3, 0.6])) if k else 0.0
            inst.notes.append(pretty_midi.Note(int(rng.integers(30, 120)), pitch, t, t + 0.25))
        midi.instruments.append(inst)
    midi.write(str(path))
    return path


@pytest.fixture(scope="session")
def note_corpus(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """MIDI for the sequences tests: music21 chorales, one re-saved (same notes, other bytes),
    one re-harmonised in another key (same tune), a byte duplicate, and a multi-program file."""
    root = tmp_path_factory.mktemp("midi")
    chorales = bach_midi(root / "bach", CHORALES)
    resaved = _edited(chorales[0], root / "resaved.mid", lambda m: None)
    reharmonised = _edited(chorales[0], root / "reharmonised.mid", _reharmonised)
    duplicate = root / "duplicate.mid"
    duplicate.write_bytes(chorales[1].read_bytes())
    multi = _multi_program(root / "multi.mid")
    midis = [(p, "bach") for p in chorales]
    midis += [(resaved, "bach"), (reharmonised, "other"), (duplicate, "bach"), (multi, "synth")]
    return {"midis": midis, "chorales": chorales, "resaved": resaved,
            "reharmonised": reharmonised, "multi": multi}  # fmt: skip


# The part vocabulary of a manifest for unit tests: a chorale's four voices, piano-1 to piano-4.
FOUR_VOICES = {
    "max_rank": 4,
    "size": 68,
    "vocabulary": [
        {"index": i, "name": f"piano-{i + 1}", "family": "piano", "rank": i + 1, "program": 0,
         "notes": 100 - i}
        for i in range(4)
    ],
}  # fmt: skip

# Track mode: the reader's and the stage's tests compare each stream with one track of the notes
# (score mode has its own project, score_project).
SEQUENCES_TEST_PARAMS = {"seq_length": 16, "chunk_notes": 40, "min_notes": 20, "shard_mb": 0.004,
                         "seed": 23, "mode": "track"}  # fmt: skip


def notes_project(dest: Path, note_corpus: dict, **sequences) -> Path:
    """A project with data/notes/ made from the corpus, and sequences params for small tests."""
    project = make_project(dest, {"sequences": {**SEQUENCES_TEST_PARAMS, **sequences}})
    extra = [{"file_id": "0" * 32, "path": "bach/empty.mid", "size": 14, "status": "empty",
              "error_type": None, "error": None, "n_notes": 0, "n_tracks": 0, "duration_s": 0.0,
              "group": "bach"},
             {"file_id": "f" * 32, "path": "bach/broken.mid", "size": 9, "status": "quarantined",
              "error_type": "OSError", "error": "MThd not found", "n_notes": 0, "n_tracks": 0,
              "duration_s": 0.0, "group": "bach"}]  # fmt: skip
    write_note_tables(project / "data" / "notes", note_corpus["midis"], extra)
    return project


@pytest.fixture(scope="session")
def shards_project(tmp_path_factory: pytest.TempPathFactory, note_corpus: dict) -> Path:
    """A project whose sequences stage has run once (small windows, several chunks and shards)."""
    from pipelines import config, sequences

    project = notes_project(tmp_path_factory.mktemp("shards") / "project", note_corpus)
    sequences.run(config.load(project))
    return project


# ---- synthetic note tables, small real shards and tiny training runs (train, tracking)

SEQUENCES = {
    "seq_length": 8,
    "chunk_notes": 64,
    "min_notes": 16,
    "split_by": "file",
    "split": {"train": 0.6, "val": 0.2, "test": 0.2},
    "transpose": 2,
    "bins": 6,
    "velocity_bins": 4,
    # track mode: on these shards Keras' val_loss is the weighted sum of the heads' val losses
    # to 1e-5 (tests/test_train.py checks it; a short last val batch would skew the heads' mean);
    # score mode is trained in tests/test_evaluate_style.py
    "mode": "track",
}
# Epochs long enough (40 steps) that a kill after epoch 1 lands before the run ends.
TINY = {
    "units": 16,
    "embedding_dim": 8,
    "epochs": 3,
    "batch_size": 16,
    "steps_per_epoch": 40,
}
SCALE = np.array([0, 2, 4, 5, 7, 9, 11])


def note_rows(n_files: int = 30, notes_per_track: int = 80, seed: int = 0) -> Any:
    """Melodies and bass lines in C major, two tracks per file, at 120 bpm."""
    import hashlib

    import pyarrow as pa

    from pipelines import schema

    rng = np.random.default_rng(seed)
    columns: dict[str, list[Any]] = {f.name: [] for f in schema.NOTES}
    ids = sorted(hashlib.md5(f"piece {i}".encode()).hexdigest() for i in range(n_files))
    for file_id in ids:
        for track, (program, base) in enumerate([(0, 60), (32, 36)]):
            degrees = np.clip(np.cumsum(rng.integers(-2, 3, notes_per_track)), -7, 10)
            pitch = base + 12 * (degrees // 7) + SCALE[degrees % 7]
            beats = rng.choice([0.5, 1.0, 1.0, 2.0], notes_per_track)
            start = np.concatenate([[0.0], np.cumsum(beats)[:-1]])
            end = start + beats * rng.choice([0.5, 1.0], notes_per_track)
            columns["file_id"] += [file_id] * notes_per_track
            columns["track"] += [track] * notes_per_track
            columns["program"] += [program] * notes_per_track
            columns["is_drum"] += [False] * notes_per_track
            columns["pitch"] += pitch.tolist()
            columns["velocity"] += rng.integers(50, 110, notes_per_track).tolist()
            columns["start"] += (start / 2).tolist()
            columns["end"] += (end / 2).tolist()
            columns["start_beat"] += start.tolist()
            columns["end_beat"] += end.tolist()
    return pa.table(columns, schema=schema.NOTES)


def files_table(notes: Any) -> Any:
    import pyarrow as pa

    from pipelines import schema

    ids = sorted(set(notes.column("file_id").to_pylist()))
    n = len(ids)
    return pa.table(
        {
            "file_id": ids,
            "path": [f"synthetic/{i}.mid" for i in ids],
            "size": [1000] * n,
            "status": ["ok"] * n,
            "error_type": [None] * n,
            "error": [None] * n,
            "n_notes": [notes.num_rows // n] * n,
            "n_tracks": [2] * n,
            "duration_s": [60.0] * n,
            "group": ["synthetic"] * n,
        },
        schema=schema.FILES,
    )


@pytest.fixture(scope="session")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small real shards: synthetic note tables through the sequences stage."""
    import json

    import pyarrow.parquet as pq

    from pipelines import config, sequences

    root = make_project(tmp_path_factory.mktemp("train-shards"), {"sequences": SEQUENCES})
    notes_dir = root / "data" / "notes"
    notes_dir.mkdir(parents=True)
    notes = note_rows()
    pq.write_table(notes, notes_dir / "notes-00000.parquet")
    pq.write_table(files_table(notes), notes_dir / "files.parquet")
    sequences.run(config.load(root))
    manifest = json.loads((root / "data" / "shards" / "manifest.json").read_text())
    assert all(manifest["splits"][s]["windows"] > 0 for s in ("train", "val"))
    return root / "data" / "shards"


def train_project(dest: Path, shards: Path, **train_params: Any) -> Path:
    root = make_project(dest, {"sequences": SEQUENCES, "train": TINY | train_params})
    shutil.copytree(shards, root / "data" / "shards")
    return root


@contextlib.contextmanager
def mlflow_store(project: Path, template: Path) -> Iterator[str]:
    """A copy of the template MLflow store in the project, the tracking URI while it is open
    (MLFLOW_TRACKING_URI as it was afterwards); yields the URI."""
    import mlflow

    db = project / "test-mlflow.db"
    shutil.copy2(template, db)
    uri = f"sqlite:///{db}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    try:
        yield uri
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
