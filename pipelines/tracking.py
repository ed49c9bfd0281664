"""Where MLflow lives: `MLFLOW_TRACKING_URI`, else the project's SQLite store and mlartifacts/."""

from __future__ import annotations

import os

from pipelines.config import Paths

EXPERIMENT = "lakhflow"


def tracking_uri(paths: Paths) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{paths.mlflow_db}"


def setup(paths: Paths, experiment: str = EXPERIMENT) -> str:
    """Point MLflow at the project's store and make sure the experiment exists; returns its id."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(paths))
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        mlflow.set_experiment(experiment_id=found.experiment_id)
        return str(found.experiment_id)
    exp_id = mlflow.create_experiment(experiment, artifact_location=paths.mlartifacts.as_uri())
    mlflow.set_experiment(experiment_id=exp_id)
    return str(exp_id)
