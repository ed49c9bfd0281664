"""MLflow tracking through a real `mlflow server`: an unreachable server fails every stage that
uses it within seconds and in one line, and a server that goes away during training costs
no training: the model stays on disk and the next `lakhflow train` only logs and registers it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import requests
from conftest import TINY, run_cli, tool_env, train_project

from pipelines import config, tracking
from pipelines.errors import LakhflowError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_check_names_an_unreachable_server(tmp_path: Path) -> None:
    paths = config.Paths(tmp_path)
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        with pytest.raises(LakhflowError, match=f"MLflow tracking server at {uri} does not answer"):
            tracking.check(paths)
        mp.delenv("MLFLOW_TRACKING_URI")
        assert tracking.check(paths) == f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["train", "generate", "evaluate", "promote"])
def test_every_tracking_stage_fails_fast_on_an_unreachable_server(
    stage: str, shards: Path, tmp_path: Path
) -> None:
    """Before the check, train and promote spent about 4.5 minutes in MLflow's retries and
    ended in a traceback; the subprocess limit below is well under that."""
    root = train_project(tmp_path / "project", shards)
    uri = f"http://127.0.0.1:{free_port()}"
    done = run_cli(["lakhflow", stage], root, timeout=120, MLFLOW_TRACKING_URI=uri)
    assert done.returncode == 1, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert errors == [errors[-1]] and errors[0].startswith(f"lakhflow {stage}: error: ")
    assert f"the MLflow tracking server at {uri} does not answer" in errors[0]
    assert "unset MLFLOW_TRACKING_URI" in errors[0] and "Traceback" not in done.stderr
    assert not (root / "data" / "model").exists() and not (root / ".lakhflow" / "work").exists()


class Server:
    """`mlflow server` on a free loopback port over one SQLite store, started and killed."""

    def __init__(self, store: Path, port: int) -> None:
        self.uri = f"http://127.0.0.1:{port}"
        self.store, self.port = store, port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
             f"sqlite:///{self.store}", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1"],
            env=tool_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.uri}/health", timeout=2).ok:
                    return
            except requests.RequestException:
                time.sleep(0.5)
        raise AssertionError("mlflow server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.mark.slow
def test_a_server_lost_during_training_costs_no_training(
    shards: Path, mlflow_template: Path, tmp_path: Path
) -> None:
    store = tmp_path / "server.db"
    shutil.copy2(mlflow_template, store)
    server = Server(store, free_port())
    root = train_project(tmp_path / "project", shards)
    env = tool_env(MLFLOW_TRACKING_URI=server.uri)
    server.start()
    try:
        first = subprocess.Popen(
            ["lakhflow", "train"], cwd=root, env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and first.poll() is None:
            if list((root / ".lakhflow" / "work" / "train").glob("*/state.json")):
                server.kill()  # the run has started in MLflow; no epoch is done yet
                break
            time.sleep(0.05)
        _, err = first.communicate(timeout=600)
        assert first.returncode == 1, err[-3000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith("lakhflow train: error: trained and wrote "), err[-3000:]
        assert f"MLflow at {server.uri} did not answer" in last
        assert "run `lakhflow train` (or `dvc repro`) again" in last
        assert "Traceback" not in err and "training goes on" in err
        model = root / "data" / "model"
        assert (model / "model.keras").exists() and not (model / "run.json").exists()
        trained = json.loads((root / "data" / "metrics" / "train.json").read_text())
        assert trained["epochs"] == TINY["epochs"]

        server.start()
        second = run_cli(["lakhflow", "train"], root, timeout=600, MLFLOW_TRACKING_URI=server.uri)
        assert second.returncode == 0, second.stderr[-3000:]
        assert f"resuming training after epoch {TINY['epochs']}" in second.stderr
        assert "epoch 1:" not in second.stderr  # nothing was trained again
        info = json.loads((model / "run.json").read_text())
        client = mlflow.MlflowClient(tracking_uri=server.uri)
        run = client.get_run(info["run_id"])
        assert run.info.status == "FINISHED" and run.data.params["train.units"] == "16"
        steps = [m.step for m in client.get_metric_history(info["run_id"], "val_loss")]
        assert sorted(steps) == list(range(1, TINY["epochs"] + 1))  # each epoch logged once
        version = client.get_model_version_by_alias("lakhflow-lstm", "candidate")
        assert version.run_id == info["run_id"]
        assert not list((root / ".lakhflow" / "work" / "train").glob("*/state.json"))
    finally:
        server.kill()
