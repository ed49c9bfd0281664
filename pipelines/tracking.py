"""Where MLflow lives: `MLFLOW_TRACKING_URI`, else the project's SQLite store and mlartifacts/.

A tracking server is checked before a stage does any work, so an unreachable one costs seconds,
not the minutes MLflow's client spends in retries; its errors become one line naming the URI.
"""

from __future__ import annotations

import os
import re

import requests

from pipelines.config import Paths
from pipelines.errors import LakhflowError

EXPERIMENT = "lakhflow"
CHECK_TIMEOUT_S = 5.0
# MLflow's client retries a failed request 7 times with doubling waits (about 4.5 minutes);
# after the check at the start, a few seconds of retries cover a blip in a long run.
CLIENT_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def tracking_uri(paths: Paths) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{paths.mlflow_db}"


def errors(*more: type[BaseException]) -> tuple[type[BaseException], ...]:
    """What MLflow's client raises when its store does not answer (and `more`)."""
    from mlflow.exceptions import MlflowException

    return (MlflowException, requests.RequestException, OSError, *more)


def reason(exc: BaseException) -> str:
    """Why a request failed, in a few words: the socket's own error where the client's message
    wraps one ("[Errno 111] Connection refused"), else the message's first line, cut at a word."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if socket_error := re.search(r"\[Errno -?\d+\] [^'\")\]]+", text):
        return socket_error.group(0).strip()
    if not text:
        return type(exc).__name__
    said = f"{type(exc).__name__}: {text}"
    return said if len(said) <= 200 else said[:200].rsplit(" ", 1)[0] + " ..."


def unreachable(uri: str, why: str) -> LakhflowError:
    return LakhflowError(
        f"the MLflow tracking server at {uri} does not answer ({why}); start it, or unset "
        "MLFLOW_TRACKING_URI to use this project's mlflow.db"
    )


def check(paths: Paths) -> str:
    """The tracking URI, once a tracking server there has answered (within seconds)."""
    uri = tracking_uri(paths)
    if not uri.startswith(("http://", "https://")):
        return uri
    for key, value in CLIENT_RETRIES.items():
        os.environ.setdefault(key, value)
    try:
        # MLflow's server answers /health; any other HTTP server that answers at all is up.
        answer = requests.get(f"{uri.rstrip('/')}/health", timeout=CHECK_TIMEOUT_S)
    except requests.RequestException as exc:
        raise unreachable(uri, reason(exc)) from None
    if answer.status_code >= 500:
        raise unreachable(uri, f"HTTP {answer.status_code}")
    return uri


def setup(paths: Paths, experiment: str = EXPERIMENT) -> str:
    """Point MLflow at the project's store and make sure the experiment exists; returns its id."""
    import mlflow

    uri = check(paths)
    mlflow.set_tracking_uri(uri)
    try:
        found = mlflow.get_experiment_by_name(experiment)
        if found is not None:
            mlflow.set_experiment(experiment_id=found.experiment_id)
            return str(found.experiment_id)
        exp_id = mlflow.create_experiment(experiment, artifact_location=paths.mlartifacts.as_uri())
    except errors() as exc:
        raise unreachable(uri, reason(exc)) from None
    mlflow.set_experiment(experiment_id=exp_id)
    return str(exp_id)
