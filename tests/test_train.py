"""The train stage end to end on small real shards (made by the sequences stage): outputs,
the MLflow run and registered version, reproducibility, a SIGKILLed run that resumes, and
both head settings."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
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
import pytest
from conftest import tool_env, train_project

from pipelines import config, storage, train
from pipelines.errors import LakhflowError


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
    # the shards' manifest, and the model's style: none for an unconditioned model
    model_manifest = json.loads((model_dir / "manifest.json").read_text())
    assert model_manifest.pop("style") == {"condition": "none", "min_group_files": 8, "groups": []}
    assert model_manifest == json.loads((root / "data" / "shards" / "manifest.json").read_text())
    history = read_history(root)
    assert list(history[0])[:3] == ["epoch", "loss", "val_loss"]
    assert [int(r["epoch"]) for r in history] == [1, 2, 3]
    for head in ("pitch", "step", "duration", "velocity", "part"):
        assert {f"{head}_loss", f"val_{head}_loss", f"val_{head}_accuracy"} <= set(history[0])
    saved = json.loads((root / "data" / "metrics" / "train.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert saved["epochs"] == 3 and saved["device"].startswith("CPU")
    assert saved["final"]["val_loss"] == pytest.approx(float(history[-1]["val_loss"]))
    assert set(saved["best"]) == {"val_loss", "val_monitor"} | {
        f"val_{h}_loss" for h in ("pitch", "step", "duration", "velocity", "part")
    }
    # the pitch loss alone chose the best epoch, and Keras' val_loss is the loss weights' sum
    assert saved["monitor"] == "val_pitch_loss"
    assert list(history[0])[3] == "val_monitor"
    pitch = [float(r["val_pitch_loss"]) for r in history]
    assert [float(r["val_monitor"]) for r in history] == pytest.approx(pitch)
    assert saved["best_epoch"] == 1 + pitch.index(min(pitch))
    assert saved["best"]["val_monitor"] == pytest.approx(min(pitch))
    weights = config.load(root).train.loss_weights
    for row in history:
        summed = train.monitored_loss({k: float(v) for k, v in row.items()}, weights)
        assert summed == pytest.approx(float(row["val_loss"]), rel=1e-5)
    assert saved["windows_per_s"] * saved["seconds"] == pytest.approx(3 * 40 * 16, rel=0.015)
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
    for key in ("val_pitch_loss", "val_monitor", "pitch_accuracy", "val_velocity_accuracy"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert steps == [1, 2, 3], key
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"loss_curves.png", "summary.txt", "manifest.json", "history.csv"} <= artifacts
    saved = json.loads((root / "data" / "metrics" / "train.json").read_text())
    assert run.data.metrics["best_val_monitor"] == pytest.approx(saved["best"]["val_monitor"])
    assert run.data.metrics["best_epoch"] == saved["best_epoch"]

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

    root = train_project(
        tmp_path / "regression", shards, heads="regression", epochs=1,
        monitor={"pitch": 0.05, "duration": 1.0},
    )  # fmt: skip
    metrics = train.run(config.load(root))
    assert set(metrics["best"]) == {
        "val_loss",
        "val_monitor",
        "val_pitch_loss",
        "val_step_loss",
        "val_duration_loss",
    }
    assert metrics["monitor"] == "0.05*val_pitch_loss + val_duration_loss"
    best = metrics["best"]
    assert best["val_monitor"] == pytest.approx(
        0.05 * best["val_pitch_loss"] + best["val_duration_loss"]
    )
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
def test_a_run_killed_inside_an_epoch_ends_with_the_unbroken_runs_weights(
    trained: tuple[Path, dict, str], shards: Path, tmp_path: Path, mlflow_uri: str
) -> None:
    """Checkpoints every 15 steps in epochs of 40: SIGKILL `lakhflow train` after one inside
    epoch 2 or 3 and run it again: it goes on at the next batch in the same MLflow run, and ends
    with exactly the weights and history of the unbroken run (the `trained` fixture, same params
    but checkpoints at epoch ends only, another process; op determinism is on on a CPU): neither
    the resume nor the checkpoints' validations change what is trained."""
    root = train_project(tmp_path / "killed", shards, checkpoint_steps=15)
    env = tool_env(MLFLOW_TRACKING_URI=mlflow_uri)
    state = _kill_after(root, env, epochs_done=1, inside_epoch=True)  # what the kill left
    done, batches = state["epochs_done"], state["epoch_steps"]
    assert 1 <= done < 3 and batches > 0 and state["run_id"]
    assert state["steps"] == 40 * done + batches and state["steps"] % 15 == 0
    assert not (root / "data" / "model").exists()

    second = subprocess.run(
        ["lakhflow", "train"], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"resuming training in epoch {done + 1} after batch {batches}" in second.stderr
    assert "average only the batches after the resume" not in second.stderr
    assert "checkpoint at step" in second.stderr
    history = read_history(root)
    assert [int(r["epoch"]) for r in history] == [1, 2, 3]
    # the epochs before the kill were not trained again: their rows are the checkpoint's
    for row, before in zip(history[:done], state["history"], strict=True):
        assert float(row["val_loss"]) == before["val_loss"]
    info = json.loads((root / "data" / "model" / "run.json").read_text())
    assert info["run_id"] == state["run_id"]  # the same MLflow run, continued
    client = mlflow.MlflowClient()
    assert client.get_run(info["run_id"]).info.status == "FINISHED"
    steps = {m.step for m in client.get_metric_history(info["run_id"], "val_loss")}
    assert steps == {1, 2, 3}
    # the val figures at every checkpoint, by global step; at epoch ends the epoch's own
    # (a kill between logging a checkpoint's figures and saving it logs them twice, as epochs)
    points = client.get_metric_history(info["run_id"], "checkpoint_val_monitor")
    curve = {m.step: m.value for m in points}
    assert sorted(curve) == [15, 30, 40, 45, 60, 75, 80, 90, 105, 120]
    ends = {step: value for step, value in curve.items() if step % 40 == 0}
    assert ends == {40 * int(r["epoch"]): float(r["val_monitor"]) for r in history}

    unbroken, _, _ = trained
    assert history == read_history(unbroken)  # the train rows too, resumed epoch or not
    from pipelines.model import load_model

    ours, theirs = (load_model(r / "data" / "model" / "model.keras") for r in (root, unbroken))
    assert len(ours.weights) == len(theirs.weights)
    for mine, other in zip(ours.get_weights(), theirs.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, other)


def test_missing_or_stale_shards_are_one_line_errors(project: Path, shards: Path) -> None:
    from pipelines.errors import LakhflowError

    with pytest.raises(LakhflowError, match="run `lakhflow sequences` first"):
        train.run(config.load(project))
    shutil.copytree(shards, project / "data" / "shards")
    with pytest.raises(LakhflowError, match=r"windows of 8 notes but sequences\.seq_length is 32"):
        train.run(config.load(project))  # the repo's params: seq_length 32


def _kill_after(
    root: Path, env: dict[str, str], epochs_done: int, inside_epoch: bool = False
) -> dict[str, Any]:
    """Run `lakhflow train` and SIGKILL it once `epochs_done` epochs are checkpointed (and,
    with `inside_epoch`, a checkpoint inside the next one)."""
    proc = subprocess.Popen(
        ["lakhflow", "train"], cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            found = _state_files(root)
            if found:
                with contextlib.suppress(ValueError):  # caught mid-write: look again
                    seen = json.loads(found[0].read_text())
                    if seen["epochs_done"] >= epochs_done and (
                        seen.get("epoch_steps") or not inside_epoch
                    ):
                        os.kill(proc.pid, signal.SIGKILL)
                        break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    state: dict[str, Any] = json.loads(_state_files(root)[0].read_text())
    assert state["epochs_done"] >= epochs_done
    return state


@pytest.mark.slow
def test_damaged_checkpoints_fall_back_and_a_diverging_run_registers_nothing(
    trained: tuple[Path, dict, str], shards: Path, tmp_path: Path, mlflow_uri: str
) -> None:
    """Killed after epoch 2 of 3. (a) state.json and the newest checkpoint cut short: the next
    run names them, goes on from epoch 1 and ends as the unbroken run does. (b) The newest
    checkpoint's weights set to NaN: the next run stops in one line and registers nothing."""
    root = train_project(tmp_path / "damaged", shards)
    state = _kill_after(root, tool_env(MLFLOW_TRACKING_URI=mlflow_uri), epochs_done=2)
    work = _state_files(root)[0].parent
    assert sorted(p.name for p in work.glob("epoch-*")) == [
        "epoch-0001.json", "epoch-0001.keras", "epoch-0002.json", "epoch-0002.keras",
    ]  # fmt: skip
    poisoned = tmp_path / "poisoned"
    shutil.copytree(root, poisoned, symlinks=True)

    for name in ("state.json", "epoch-0002.keras"):
        data = (work / name).read_bytes()
        (work / name).write_bytes(data[: len(data) // 2])
    again = subprocess.run(
        ["lakhflow", "train"], cwd=root, env=tool_env(MLFLOW_TRACKING_URI=mlflow_uri),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{work / 'state.json'} is damaged" in again.stderr
    assert f"checkpoint {work / 'epoch-0002.keras'} is damaged" in again.stderr
    assert "resuming training after epoch 1" in again.stderr
    assert [int(r["epoch"]) for r in read_history(root)] == [1, 2, 3]
    info = json.loads((root / "data" / "model" / "run.json").read_text())
    assert info["run_id"] == state["run_id"]  # the run id came from epoch 1's own state
    _, unbroken, _ = trained
    resumed = json.loads((root / "data" / "metrics" / "train.json").read_text())
    for key, value in unbroken["final"].items():
        assert round(resumed["final"][key], 4) == round(value, 4), key

    from pipelines.model import load_model

    checkpoint = next(poisoned.glob(".lakhflow/work/train/*/epoch-0002.keras"))
    model = load_model(checkpoint)
    model.set_weights([np.full_like(w, np.nan) for w in model.get_weights()])
    model.save(checkpoint)
    versions = len(mlflow.MlflowClient().search_model_versions("name='lakhflow-lstm'"))
    with pytest.raises(LakhflowError, match=r"training diverged in epoch 3: \S+ is nan; nothing"):
        train.run(config.load(poisoned))
    assert len(mlflow.MlflowClient().search_model_versions("name='lakhflow-lstm'")) == versions
    assert not (poisoned / "data" / "model").exists()
    after = json.loads(next(poisoned.glob(".lakhflow/work/train/*/state.json")).read_text())
    assert after["epochs_done"] == 2  # the diverged epoch was not checkpointed
    assert mlflow.MlflowClient().get_run(state["run_id"]).info.status == "FAILED"


def test_resume_takes_the_newest_state_whose_checkpoint_loads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def load(path: Path) -> str:
        if path.read_text() != "good":
            raise ValueError("File is not a zip file")
        return path.name

    def state(epoch: int) -> train.Progress:
        row = {"epoch": float(epoch), "loss": 1.0, "val_loss": 2.0 - epoch / 10}
        return train.Progress(
            epochs_done=epoch, run_id="run-1", history=[row], checkpoint=f"epoch-{epoch:04d}.keras"
        )

    for epoch, content in ((1, "good"), (2, "good"), (3, "cut")):
        (tmp_path / f"epoch-{epoch:04d}.keras").write_text(content)
        storage.write_json(tmp_path / f"epoch-{epoch:04d}.json", state(epoch).to_json())
    state(3).save(tmp_path)
    progress, model = train.resume(tmp_path, load)
    assert (progress.epochs_done, model) == (2, "epoch-0002.keras")
    assert "epoch-0003.keras is damaged" in caplog.text

    for path in tmp_path.glob("epoch-*.keras"):
        path.write_text("cut")
    progress, model = train.resume(tmp_path, load)
    assert model is None and progress.epochs_done == 0 and progress.run_id == "run-1"
    assert "no usable checkpoint" in caplog.text


def test_checkpoint_names_sort_in_training_order() -> None:
    """`resume` walks the states newest first by name: one inside epoch 2 comes between the
    ends of epochs 1 and 2."""
    names = [
        train.checkpoint_name(train.Progress(epochs_done=done, epoch_steps=batches, steps=steps))
        for done, batches, steps in ((1, 0, 40), (1, 5, 45), (1, 20, 60), (2, 0, 80), (9, 1, 361))
    ]
    assert names[1:3] == ["epoch-0002-step-00000045", "epoch-0002-step-00000060"]
    assert sorted(f"{n}.json" for n in names) == [f"{n}.json" for n in names]


def test_the_val_subset_is_fixed_and_spread_over_the_split(project: Path, shards: Path) -> None:
    """train.validation_steps takes its windows at a wider stride, from more of the split's
    (hash-shuffled) chunks, and there are enough of them for every batch; the whole split is
    read at the manifest's stride."""
    from pipelines.dataset import windows

    manifest = json.loads((shards / "manifest.json").read_text())
    total = manifest["splits"]["val"]["windows"]
    cfg = config.load(project, ["train.batch_size=16", "train.validation_steps=2"])
    assert train.val_stride(cfg, manifest) == manifest["stride"] * (total // 32) > 1
    whole = config.load(project, ["train.batch_size=16"])
    assert train.val_stride(whole, manifest) == manifest["stride"]
    subset = windows(shards, "val", manifest, stride=train.val_stride(cfg, manifest))
    assert sum(1 for _ in subset) >= 32
    shutil.copytree(shards, project / "data" / "shards")
    first, again = (
        [b[0]["pitch"].numpy() for b in train.val_windows(cfg, manifest)] for _ in range(2)
    )
    assert len(first) == 2 and all(len(batch) == 16 for batch in first)
    for batch, same in zip(first, again, strict=True):
        np.testing.assert_array_equal(batch, same)


def test_a_loss_that_is_not_finite_stops_training_in_one_line(project: Path) -> None:
    cfg = config.load(project)
    train.check_finite(cfg, 2, {"loss": 2.5, "val_loss": 2.7})
    with pytest.raises(LakhflowError, match=r"diverged in epoch 4: val_loss is inf; nothing was"):
        train.check_finite(cfg, 4, {"loss": 2.5, "val_loss": math.inf})


# --------------------------------------------------------------------------- the monitored loss


def _epochs_until_stopped(
    history: list[dict[str, float]], monitor: dict[str, float], patience: int
) -> tuple[int, int]:
    """(best epoch, last epoch trained) as `run` walks the history."""
    progress = train.Progress()
    for row in history:
        epoch = int(row["epoch"])
        progress.update_early_stopping(epoch, train.monitored_loss(row, monitor), patience)
        if progress.stopped:
            break
    return progress.best_epoch, epoch


def _made_up_history() -> list[dict[str, float]]:
    """Pitch keeps improving to epoch 4 while the duration loss rises, so the summed val_loss
    is best at epoch 2 (the longer demo run's story)."""
    pitch = [3.0, 2.8, 2.6, 2.5, 2.52, 2.55, 2.4]
    duration = [1.0, 1.0, 1.3, 1.6, 1.9, 2.2, 2.5]
    rows = []
    for epoch, (p, d) in enumerate(zip(pitch, duration, strict=True), start=1):
        heads = {"val_pitch_loss": p, "val_step_loss": 1.0, "val_duration_loss": d}
        heads["val_velocity_loss"] = 0.2
        heads["val_part_loss"] = 0.1
        val_loss = p + 1.0 + d + 0.5 * 0.2 + 0.1  # Keras' sum under the default loss weights
        rows.append({"epoch": float(epoch), "val_loss": val_loss, **heads})
    return rows


def test_early_stopping_and_the_best_epoch_follow_the_pitch_loss() -> None:
    history = _made_up_history()
    summed = [row["val_loss"] for row in history]
    assert summed.index(min(summed)) + 1 == 2 and summed[3] > summed[1]

    default = config.Train().monitor
    assert default == {"pitch": 1.0}
    # pitch: best at epoch 4; epochs 5 and 6 are no better, so patience 2 stops after epoch 6
    assert _epochs_until_stopped(history, default, patience=2) == (4, 6)
    # the old rule, Keras' val_loss, is the loss weights as monitor: best at 2, stopped after 4
    keras_sum = config.Train().loss_weights
    assert [train.monitored_loss(r, keras_sum) for r in history] == pytest.approx(summed)
    assert _epochs_until_stopped(history, keras_sum, patience=2) == (2, 4)
    # a weighted sum the params name: duration at half weight, best at epoch 3
    assert _epochs_until_stopped(history, {"pitch": 1.0, "duration": 0.5}, patience=2) == (3, 5)


@pytest.mark.parametrize(
    ("monitor", "formula"),
    [
        ({"pitch": 1.0}, "val_pitch_loss"),
        ({"pitch": 1.0, "step": 0.0, "duration": 0.5}, "val_pitch_loss + 0.5*val_duration_loss"),
    ],
)
def test_train_json_names_the_monitored_figure(monitor: dict[str, float], formula: str) -> None:
    assert train.monitor_formula(monitor) == formula


def test_a_monitored_head_the_model_lacks_is_a_params_error(project: Path) -> None:
    from pipelines.errors import ParamsError

    cfg = config.load(project, ["train.heads=regression", "train.monitor={pitch: 1, velocity: 1}"])
    with pytest.raises(ParamsError) as info:
        train.run(cfg)  # before anything else: no shards are needed to say so
    assert str(info.value) == (
        "train.monitor: velocity has no head when train.heads is regression; "
        "its heads are pitch, step, duration"
    )


def test_a_state_saved_before_the_monitor_still_loads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The old code's state: `best_val_loss` and rows without val_monitor. It loads, its best
    figure is the summed val_loss that chose it; with its best weights damaged, the checkpoint's
    epoch becomes the best by that row's val_loss. (`run` itself starts such a run over: the old
    params lack train.monitor, so they hash to another work folder.)"""
    rows = [
        {"epoch": 1.0, "loss": 5.0, "val_loss": 4.5},
        {"epoch": 2.0, "loss": 4.0, "val_loss": 4.2},
    ]
    old = {
        "epochs_done": 2, "run_id": "run-1", "history": rows, "seconds": [1.0, 1.0],
        "windows": [640, 640], "best_val_loss": 4.2, "best_epoch": 2, "wait": 0,
        "stopped": False, "checkpoint": "epoch-0002.keras", "best_weights": "best-0002.weights.h5",
        "logged_epochs": 2, "params_logged": True,
    }  # fmt: skip
    progress = train.Progress.from_json(old)
    assert (progress.best_monitor, progress.best_epoch, progress.epochs_done) == (4.2, 2, 2)
    assert "best_val_loss" not in progress.to_json()
    assert train.Progress.from_json(progress.to_json()) == progress
    fresh = train.Progress.from_json({**old, "best_val_loss": None})
    assert fresh.best_monitor == math.inf

    storage.write_json(tmp_path / "state.json", {**old, "best_epoch": 1, "wait": 1})
    (tmp_path / "epoch-0002.keras").write_text("good")
    (tmp_path / "best-0002.weights.h5").write_text("cut")
    resumed, model = train.resume(tmp_path, lambda path: path.name)
    assert model == "epoch-0002.keras"
    assert "best weights" in caplog.text and "damaged" in caplog.text
    assert (resumed.best_epoch, resumed.best_monitor, resumed.wait) == (2, 4.2, 0)
    # today's rows: the damaged best falls back to the checkpoint epoch's val_monitor
    rows = [{**row, "val_monitor": row["val_loss"] - 2} for row in rows]
    storage.write_json(tmp_path / "state.json", {**old, "history": rows, "best_epoch": 1})
    resumed, _ = train.resume(tmp_path, lambda path: path.name)
    assert (resumed.best_epoch, resumed.best_monitor) == (2, pytest.approx(2.2))
