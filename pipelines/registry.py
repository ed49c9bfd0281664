"""The MLflow model registry as lakhflow uses it: the `candidate` and `champion` aliases, the tags
on each registered version, looking a version up by alias or URI, and logging and loading the
`MusicGenerator` pyfunc that every registered version is.

The train stage registers a version and points `candidate` at it; the evaluate stage tags it with
its figures (under `eval.`); the promote stage moves `champion`; generate and the flows load or
name versions by alias.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.config import MANIFEST_FILE, MODEL_FILE
from pipelines.errors import LakhflowError

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.models.model import ModelInfo

    from pipelines.generator import MusicGenerator

# The alias train points at each new version, and the one promote moves to the better model.
CANDIDATE = "candidate"
CHAMPION = "champion"
# Version tags promote reads: the headline figures, under this prefix.
TAG_PREFIX = "eval."
TAGGED = (
    "pitch_nll",
    "pitch_accuracy",
    "bigram_pitch_nll",
    "pitch_nll_ratio_to_bigram",
    "pitch_nll_full_context",
    "overlap",
    "overlap_real",
    "overlap_shuffled",
    "overlap_ratio",
    "beats_shuffled",
    "max_copied_run",
    "pieces_copying",
)


# --------------------------------------------------------------------------- versions


def find_version(
    client: MlflowClient, name: str, *, alias: str | None = None, version: str | None = None
) -> ModelVersion:
    """The version of `name` an alias points at, or a numbered version; raises MlflowException
    when there is none (the registry's own words say why)."""
    if alias is not None:
        return client.get_model_version_by_alias(name, alias)
    return client.get_model_version(name, str(version))


def version_by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version `alias` points at, or None when no version has it (or there is no model)."""
    from mlflow.exceptions import MlflowException

    try:
        return find_version(client, name, alias=alias)
    except MlflowException:
        return None


def version_of_uri(uri: str) -> tuple[str | None, str | None]:
    """(version, run_id) of a `models:/NAME@ALIAS` or `models:/NAME/VERSION` URI."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    body = uri.removeprefix("models:/").strip("/")
    try:
        if "@" in body:
            name, alias = body.split("@", 1)
            found = find_version(client, name, alias=alias)
        elif "/" in body:
            name, version = body.split("/", 1)
            found = find_version(client, name, version=version)
        else:
            return None, None
    except MlflowException as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "not found"
        raise LakhflowError(f"model {uri!r} does not exist in the registry: {first}") from None
    return str(found.version), found.run_id


def set_tags(client: MlflowClient, name: str, version: str, tags: Mapping[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def evaluation_tags(result: Mapping[str, Any]) -> dict[str, str]:
    """The evaluate stage's headline figures as version tags, and the test data they were
    measured on (promote compares versions only on the same splits)."""
    tags = {f"{TAG_PREFIX}{k}": str(result[k]) for k in TAGGED if k in result}
    return tags | {"splits_sha256": result["splits_sha256"], "source": result["source"]}


# --------------------------------------------------------------------------- the pyfunc


def signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    inputs = Schema(
        [
            ColSpec("long", "notes"),
            ColSpec("double", "temperature"),
            ColSpec("long", "seed"),
            ColSpec("string", "primer_pitches", required=False),
            ColSpec("string", "group", required=False),
        ]
    )
    outputs = Schema(
        [
            ColSpec("long", "piece"),
            ColSpec("long", "pitch"),
            ColSpec("double", "step"),
            ColSpec("double", "duration"),
            ColSpec("long", "velocity"),
            ColSpec("string", "part"),
            ColSpec("double", "start"),
            ColSpec("double", "end"),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example() -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(
        {"notes": [16], "temperature": [1.0], "seed": [0], "primer_pitches": ["60 62 64 65 67"]}
    )


def requirements() -> list[str]:
    """Pinned from this environment: inferring them would load TensorFlow in a subprocess."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for name in ("mlflow", "tensorflow", "keras", "numpy", "pandas", "pretty_midi"):
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pins.append(name)
    return pins


def log_generator(model_dir: Path, *, registered_model_name: str | None) -> ModelInfo:
    """Log model_dir's model.keras + manifest.json as a `MusicGenerator` into the active run."""
    import mlflow.pyfunc

    # Here, not at the top: the generator imports TensorFlow, and promote and the flows, which
    # only look versions up, should not.
    from pipelines.generator import MusicGenerator

    model_dir = Path(model_dir)
    for name in (MODEL_FILE, MANIFEST_FILE):
        if not (model_dir / name).exists():
            raise LakhflowError(f"no {name} in {model_dir}")
    info: ModelInfo = mlflow.pyfunc.log_model(
        name="model",
        python_model=MusicGenerator(),
        artifacts={
            "model": str(model_dir / MODEL_FILE),
            "manifest": str(model_dir / MANIFEST_FILE),
        },
        # No code_paths: `pipelines` is installed wherever the model is served, and MLflow
        # would re-import the package from the copy, splitting its classes in two.
        signature=signature(),
        input_example=input_example(),
        pip_requirements=requirements(),
        registered_model_name=registered_model_name,
    )
    return info


def load_generator(uri: str) -> MusicGenerator:
    """A `MusicGenerator` from an MLflow model URI; one-line error when it is not there."""
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    from pipelines.generator import MusicGenerator

    try:
        loaded = mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LakhflowError(f"cannot load model {uri!r}: {first}") from None
    model = loaded.unwrap_python_model()
    if not isinstance(model, MusicGenerator):
        raise LakhflowError(f"{uri!r} is not a lakhflow generator (logged before generate?)")
    return model


def register_candidate(model_dir: Path, name: str, tags: Mapping[str, str]) -> str:
    """Log model_dir's generator into the active run as a new version of `name`, point
    `candidate` at it and tag it; returns the version."""
    from mlflow import MlflowClient

    # The generate stage's pyfunc: the registered model writes music, the Keras model inside.
    info = log_generator(model_dir, registered_model_name=name)
    version = str(info.registered_model_version)
    client = MlflowClient()
    client.set_registered_model_alias(name, CANDIDATE, version)
    set_tags(client, name, version, tags)
    return version
