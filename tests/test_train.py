"""The train stage end to end on small real shards (made by the sequences stage): outputs,
the MLflow run and registered version, reproducibility, a SIGKILLed run that resumes, and
both head settings."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_project, tool_env

from pipelines import config, schema, sequences, train

SEQUENCES = {
    "seq_length": 8,
    "chunk_notes": 64,
    "min_notes": 16,
    "split_by": "file",
    "split": {"train": 0.6, "val": 0.2, "test": 0.2},
    "transpose": 2,
    "bins": 6,
    "velocity_bins": 4,
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


def note_rows(n_files: int = 30, notes_per_track: int = 80, seed: int = 0) -> pa.Table:
    """Melodies and bass lines in C major, two tracks per file, at 120 bpm."""
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


def files_table(notes: pa.Table) -> pa.Table:
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


def read_history(root: Path) -> list[dict[str, str]]:
    with open(root / "data" / "model" / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(
    shards: Path, mlflow_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, dict[str, Any], str]]:
    """One tiny categorical run in its own MLflow store: (project root, metrics, store URI)."""
    base = tmp_path_factory.mktemp("trained")
    db = base / "mlflow.db"
    shutil.copy2(mlflow_template, db)
    uri = f"sqlite:///{db}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        root = train_project(base / "project", shards)
        metrics = train.run(config.load(root))
        yield root, metrics, uri


@pytest.mark.slow
def test_train_writes_the_model_history_and_metrics(trained: tuple[Path, dict, str]) -> None:
    root, metrics, _ = trained
    model_dir = root / "data" / "model"
    for name in ("model.keras", "manifest.json", "history.csv", "run.json", "summary.txt"):
        assert (model_dir / name).is_file(), name
    assert (model_dir / "manifest.json").read_bytes() == (
        root / "data" / "shards" / "manifest.json"
    ).read_bytes()
    history = read_history(root)
    assert list(history[0])[:3] == ["epoch", "loss", "val_loss"]
    assert [int(r["epoch"]) for r in history] == [1, 2, 3]
    for head in ("pitch", "step", "duration", "velocity"):
        assert {f"{head}_loss", f"val_{head}_loss", f"val_{head}_accuracy"} <= set(history[0])
    saved = json.loads((root / "data" / "metrics" / "train.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert saved["epochs"] == 3 and saved["device"].startswith("CPU")
    assert saved["final"]["val_loss"] == pytest.approx(float(history[-1]["val_loss"]))
    assert set(saved["best"]) == {"val_loss"} | {
        f"val_{h}_loss" for h in ("pitch", "step", "duration", "velocity")
    }
    assert saved["windows_per_s"] > 0
    # training is over: no checkpoints are left behind
    assert not any((root / ".lakhflow" / "work" / "train").glob("*/state.json"))


@pytest.mark.slow
def test_train_run_is_tracked_and_registered_as_candidate(trained: tuple[Path, dict, str]) -> None:
    root, _, uri = trained
    client = mlflow.MlflowClient(tracking_uri=uri)
    info = json.loads((root / "data" / "model" / "run.json").read_text())
    run = client.get_run(info["run_id"])
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "lakhflow"
    cfg = config.load(root)
    assert set(run.data.params) == set(cfg.flat())
    assert run.data.params["train.units"] == "16"
    manifest_sha = hashlib.sha256((root / "data" / "shards" / "manifest.json").read_bytes())
    tags = run.data.tags
    assert tags["manifest_sha256"] == manifest_sha.hexdigest()
    assert tags["device"].startswith("CPU") and tags["source"] == "bach"
    assert len(tags["git_commit"]) == 40 and tags["splits_sha256"]
    for key in ("val_pitch_loss", "pitch_accuracy", "val_velocity_accuracy", "step_loss"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert steps == [1, 2, 3], key
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"loss_curves.png", "summary.txt", "manifest.json", "history.csv"} <= artifacts

    version = client.get_model_version_by_alias("lakhflow-lstm", "candidate")
    assert str(version.version) == info["model_version"] and version.run_id == run.info.run_id
    assert version.tags["run_id"] == run.info.run_id
    assert version.tags["manifest_sha256"] == manifest_sha.hexdigest()
    assert version.tags["heads"] == "categorical"
    assert {"source", "splits_sha256"} <= set(version.tags)

    mlflow.set_tracking_uri(uri)
    # The registered model is the generate stage's pyfunc: it writes notes, Keras inside.
    loaded = mlflow.pyfunc.load_model("models:/lakhflow-lstm@candidate")
    request = loaded.input_example
    notes = loaded.predict(request)
    assert len(notes) == int(request["notes"].sum()) and notes["pitch"].between(0, 127).all()
    keras_model = loaded.unwrap_python_model().keras_model
    assert keras_model.get_layer("lstm_0").units == 16


@pytest.mark.slow
def test_regression_heads_train_with_the_tutorials_outputs(
    shards: Path, tmp_path: Path, mlflow_uri: str
) -> None:
    from pipelines.model import example_inputs, load_model

    root = train_project(tmp_path / "regression", shards, heads="regression", epochs=1)
    metrics = train.run(config.load(root))
    assert set(metrics["best"]) == {
        "val_loss",
        "val_pitch_loss",
        "val_step_loss",
        "val_duration_loss",
    }
    assert np.isfinite(metrics["final"]["val_loss"])
    model = load_model(root / "data" / "model" / "model.keras")
    out = model(example_inputs(batch=3, length=8))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "pitch": (3, 128),
        "step": (3, 1),
        "duration": (3, 1),
    }
    version = mlflow.MlflowClient().get_model_version_by_alias("lakhflow-lstm", "candidate")
    assert version.tags["heads"] == "regression"


def _state_files(root: Path) -> list[Path]:
    return list((root / ".lakhflow" / "work" / "train").glob("*/state.json"))


@pytest.mark.slow
def test_a_killed_run_resumes_and_ends_as_an_unbroken_run_does(
    trained: tuple[Path, dict, str], shards: Path, tmp_path: Path, mlflow_uri: str
) -> None:
    """SIGKILL `lakhflow train` after its first checkpoint; run it again: it goes on from the
    next epoch in the same MLflow run, and ends with the val losses of the unbroken run (the
    `trained` fixture, same params, another process), so runs are also reproducible."""
    root = train_project(tmp_path / "killed", shards)
    env = tool_env(MLFLOW_TRACKING_URI=mlflow_uri)
    first = subprocess.Popen(
        ["lakhflow", "train"], cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    state: dict[str, Any] = {}
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and first.poll() is None:
            found = _state_files(root)
            if found:
                state = json.loads(found[0].read_text())
                if state["epochs_done"] >= 1:
                    os.kill(first.pid, signal.SIGKILL)
                    break
            time.sleep(0.05)
    finally:
        if first.poll() is None:
            first.kill()
        _, err = first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL, err.decode()[-2000:]
    state = json.loads(_state_files(root)[0].read_text())  # what the kill left
    done = state["epochs_done"]
    assert 1 <= done < 3 and state["run_id"]
    assert not (root / "data" / "model").exists()

    second = subprocess.run(
        ["lakhflow", "train"], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"resuming training after epoch {done}" in second.stderr
    history = read_history(root)
    assert [int(r["epoch"]) for r in history] == [1, 2, 3]
    # the epochs before the kill were not trained again: their rows are the checkpoint's
    for row, before in zip(history[:done], state["history"], strict=True):
        assert float(row["val_loss"]) == pytest.approx(before["val_loss"])
    info = json.loads((root / "data" / "model" / "run.json").read_text())
    assert info["run_id"] == state["run_id"]  # the same MLflow run, continued
    client = mlflow.MlflowClient()
    assert client.get_run(info["run_id"]).info.status == "FINISHED"
    steps = {m.step for m in client.get_metric_history(info["run_id"], "val_loss")}
    assert steps == {1, 2, 3}
    _, unbroken, _ = trained
    resumed = json.loads((root / "data" / "metrics" / "train.json").read_text())
    for key, value in unbroken["final"].items():
        assert round(resumed["final"][key], 4) == round(value, 4), key


def test_missing_or_stale_shards_are_one_line_errors(project: Path, shards: Path) -> None:
    from pipelines.errors import LakhflowError

    with pytest.raises(LakhflowError, match="run `lakhflow sequences` first"):
        train.run(config.load(project))
    shutil.copytree(shards, project / "data" / "shards")
    with pytest.raises(LakhflowError, match=r"windows of 8 notes but sequences\.seq_length is 32"):
        train.run(config.load(project))  # the repo's params: seq_length 32
