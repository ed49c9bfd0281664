"""Shared fixtures: a temporary lakhflow project (a real git + DVC repo), the CLI, MLflow stores."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROJECT_FILES = ["params.yaml", "dvc.yaml", ".dvcignore", ".gitignore", "presets", ".dvc/config"]

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
            shutil.copytree(src, dest / name, dirs_exist_ok=True)
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
