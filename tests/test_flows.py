"""The Prefect flows and deployments against a real (temporary) Prefect server.

One tiny project is shared by the module: the pipeline flow builds it once through DVC, and
the batch, serve and deploy tests use the champion it registers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from conftest import REPO, make_project, tool_env

from pipelines import archive

pytestmark = pytest.mark.slow
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

TINY: dict[str, dict[str, Any]] = {
    "download": {"source": "bach", "limit": 8},
    "sequences": {
        "seq_length": 8,
        "chunk_notes": 64,
        "min_notes": 16,
        "split_by": "file",
        "split": {"train": 0.5, "val": 0.25, "test": 0.25},
        "bins": 6,
        "velocity_bins": 4,
    },
    "train": {"units": 8, "embedding_dim": 4, "epochs": 1, "batch_size": 16, "steps_per_epoch": 4},
    "generate": {"count": 2, "notes": 16, "wav": False},
    "evaluate": {"kde_points": 16, "max_test_windows": 200},
    "flows": {"stage_timeout_s": 600, "download_retries": 0},
}
STAGES = ["download", "parse", "sequences", "train", "generate", "evaluate", "promote"]


@dataclass(frozen=True)
class Tiny:
    root: Path
    mlflow_uri: str
    api_url: str

    def env(self, **extra: str) -> dict[str, str]:
        return tool_env(
            PREFECT_API_URL=self.api_url,
            MLFLOW_TRACKING_URI=self.mlflow_uri,
            LAKHFLOW_ROOT=str(self.root),
            **extra,
        )


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """One temporary Prefect server for the session; its API URL (for subprocesses too)."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield str(PREFECT_API_URL.value())


@pytest.fixture(scope="module")
def tiny(
    tmp_path_factory: pytest.TempPathFactory, mlflow_template: Path, prefect_api: str
) -> Iterator[Tiny]:
    import mlflow

    root = make_project(tmp_path_factory.mktemp("flows") / "project", TINY)
    shutil.copy2(mlflow_template, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("LAKHFLOW_ROOT", str(root))
        mlflow.set_tracking_uri(uri)
        yield Tiny(root, uri, prefect_api)


@pytest.fixture(scope="module")
def pipeline_state(tiny: Tiny) -> Any:
    """The tiny project built once by the pipeline flow (its final state)."""
    from flows.pipeline import lakhflow_pipeline

    return lakhflow_pipeline(return_state=True)


def _task_runs(flow_run_id: Any) -> list[Any]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            limit=100,
        )


def _artifact(key: str) -> Any:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    assert found, f"no artifact {key!r}"
    return found[0]


def test_pipeline_flow_builds_every_stage(tiny: Tiny, pipeline_state: Any) -> None:
    from mlflow import MlflowClient

    assert pipeline_state.is_completed(), pipeline_state.message
    runs = {
        t.name.removeprefix("dvc repro "): t
        for t in _task_runs(pipeline_state.state_details.flow_run_id)
    }
    assert sorted(runs) == sorted(STAGES)
    assert all(t.state.is_completed() for t in runs.values())
    starts = [runs[s].start_time for s in STAGES]
    assert starts == sorted(starts), "stages ran out of order"

    data = tiny.root / "data"
    assert len(list(archive.iter_members(data / "raw" / "bach.tar.gz", 10**8))) == 8
    assert list((data / "notes").glob("notes-*.parquet"))
    assert (data / "notes" / "files.parquet").exists()
    assert list((data / "shards").glob("train-*.tfrecord.gz"))
    assert (data / "model" / "model.keras").exists()
    assert list((data / "generated").glob("*.mid"))
    assert (data / "metrics" / "eval.json").exists()
    assert (data / "metrics" / "promotion.json").exists()
    lock = yaml.safe_load((tiny.root / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)

    run = json.loads((data / "model" / "run.json").read_text())
    client = MlflowClient(tracking_uri=tiny.mlflow_uri)
    assert client.get_run(run["run_id"]).info.status == "FINISHED"
    champion = client.get_model_version_by_alias(run["model_name"], "champion")
    assert str(champion.version) == str(run["model_version"])

    result = pipeline_state.result()
    assert result["champion"] == str(champion.version)
    markdown = _artifact("lakhflow-pipeline").data
    assert run["run_id"] in markdown
    for stage in STAGES:
        assert f"| {stage} | ran |" in markdown
    # dvc metrics reads the evaluation's headline, not all of eval.json
    assert "### data/metrics/headline.json" in markdown and "| overlap_ratio |" in markdown
    assert "data/metrics/headline.json:overlap_ratio" in result["metrics"]
    assert "data/metrics/eval.json" not in markdown


def test_failed_stage_fails_the_flow_naming_it(
    tiny: Tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.pipeline import lakhflow_pipeline

    missing = tmp_path / "no-such-folder"
    root = make_project(
        tmp_path / "broken",
        {
            "download": {"source": "path", "path": str(missing)},
            "flows": {"download_retries": 1, "retry_delay_s": 0},
        },
    )
    monkeypatch.setenv("LAKHFLOW_ROOT", str(root))
    state = lakhflow_pipeline(return_state=True)

    assert state.is_failed()
    assert "stage 'download' failed" in state.message
    assert str(missing.name) in state.message  # the stage's own error line, from its log
    runs = _task_runs(state.state_details.flow_run_id)
    assert [t.name for t in runs] == ["dvc repro download"], "a stage ran after a failure"
    assert runs[0].run_count == 2, "the download was not retried once"
    assert not (root / "data" / "notes").exists()


def test_a_stage_past_its_time_limit_is_stopped(
    tiny: Tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.pipeline import lakhflow_pipeline

    root = make_project(tmp_path / "slow", {"flows": {"stage_timeout_s": 1, "download_retries": 0}})
    monkeypatch.setenv("LAKHFLOW_ROOT", str(root))
    state = lakhflow_pipeline(return_state=True)

    assert state.is_failed()
    assert "`dvc repro --single-item download` ran past flows.stage_timeout_s" in state.message
    (download,) = _task_runs(state.state_details.flow_run_id)
    assert download.state.name == "TimedOut"
    # the stage's whole process group was stopped: nothing of it still runs in the project
    left = [
        p.info for p in psutil.process_iter(["pid", "cwd", "cmdline"]) if p.info["cwd"] == str(root)
    ]
    assert not left
    assert not (root / "data" / "raw" / "bach.tar.gz").exists()


def test_batch_generate_writes_a_batch_from_the_champion(tiny: Tiny, pipeline_state: Any) -> None:
    from flows.generate import batch_generate

    result = batch_generate(count=2, notes=16, seed=7)

    out = tiny.root / result["output"]
    assert out.parent == tiny.root / "batches"
    pieces = sorted(out.glob("*.mid"))
    assert len(pieces) == 2
    assert result["seed"] == 7
    markdown = _artifact("batch-generate").data
    for piece in pieces:
        assert piece.relative_to(tiny.root).as_posix() in markdown


def _wait_for_deployment(name: str, proc: subprocess.Popen[str], limit_s: float = 90) -> Any:
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + limit_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            assert proc.poll() is None, "lakhflow serve exited"
            try:
                return client.read_deployment_by_name(name)
            except ObjectNotFound:
                time.sleep(1)
    pytest.fail(f"deployment {name} did not appear")


def _concurrency_limit(deployment: Any) -> int | None:
    gcl = getattr(deployment, "global_concurrency_limit", None)
    return gcl.limit if gcl is not None else deployment.concurrency_limit


def _check_deployments(tiny: Tiny) -> dict[str, Any]:
    from prefect import get_client

    from pipelines import config

    cfg = config.load(tiny.root)
    expected = {
        "lakhflow-pipeline/nightly": (cfg.flows.pipeline_cron, {}),
        # no parameters: each run reads params.yaml as it is then
        "batch-generate/hourly": (cfg.flows.generate_cron, {}),
    }
    found = {}
    with get_client(sync_client=True) as client:
        for name, (cron, parameters) in expected.items():
            d = client.read_deployment_by_name(name)
            assert [s.schedule.cron for s in d.schedules] == [cron]
            assert d.parameters == parameters
            assert _concurrency_limit(d) == 1
            found[name] = d
    return found


def test_serve_registers_deployments_and_runs_one(tiny: Tiny, pipeline_state: Any) -> None:
    from prefect.deployments import run_deployment

    assert pipeline_state.is_completed()
    batches_before = set((tiny.root / "batches").glob("*"))
    proc = subprocess.Popen(
        ["lakhflow", "serve"],
        cwd=tiny.root,
        env=tiny.env(PREFECT_RUNNER_POLL_FREQUENCY="2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        _wait_for_deployment("lakhflow-pipeline/nightly", proc)
        _wait_for_deployment("batch-generate/hourly", proc)
        deployments = _check_deployments(tiny)
        assert deployments["batch-generate/hourly"].tags == ["lakhflow"]

        flow_run = run_deployment(
            "batch-generate/hourly", parameters={"count": 1, "notes": 16}, timeout=240
        )
        assert flow_run.state is not None
        assert flow_run.state.is_completed(), flow_run.state.message
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
    new = set((tiny.root / "batches").glob("*")) - batches_before
    assert len(new) == 1, out[-3000:]
    assert len(list(new.pop().glob("*.mid"))) == 1


def test_prefect_deploy_all(tiny: Tiny) -> None:
    shutil.copy2(REPO / "prefect.yaml", tiny.root / "prefect.yaml")
    pool = subprocess.run(
        ["prefect", "work-pool", "create", "lakhflow", "--type", "process", "--overwrite"],
        cwd=tiny.root,
        env=tiny.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pool.returncode == 0, pool.stdout + pool.stderr
    deploy = subprocess.run(
        ["prefect", "--no-prompt", "deploy", "--all"],
        cwd=tiny.root,
        env=tiny.env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    deployments = _check_deployments(tiny)
    for d in deployments.values():
        assert d.work_pool_name == "lakhflow"
        assert str(tiny.root) in json.dumps(d.pull_steps)
