"""The registry module against a real MLflow store: versions found by alias and by URI, one-line
errors for what is not there, and the tags the evaluate stage puts on a version."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipelines import registry
from pipelines.errors import LakhflowError

NAME = "lakhflow-lstm"


@pytest.fixture
def client(mlflow_uri: str) -> MlflowClient:
    client = MlflowClient(tracking_uri=mlflow_uri)
    client.create_registered_model(NAME)
    return client


def add_version(client: MlflowClient, tmp_path: Path, run_id: str | None = None) -> str:
    existing = client.search_model_versions(f"name='{NAME}'")
    folder = tmp_path / f"model-{len(existing)}"
    folder.mkdir()
    return str(client.create_model_version(NAME, source=folder.as_uri(), run_id=run_id).version)


def test_a_version_is_found_by_alias_and_none_without_one(
    client: MlflowClient, tmp_path: Path
) -> None:
    first = add_version(client, tmp_path)
    second = add_version(client, tmp_path)
    assert registry.version_by_alias(client, NAME, registry.CHAMPION) is None
    assert registry.version_by_alias(client, "no-such-model", registry.CHAMPION) is None
    client.set_registered_model_alias(NAME, registry.CANDIDATE, second)
    client.set_registered_model_alias(NAME, registry.CHAMPION, first)
    candidate = registry.version_by_alias(client, NAME, registry.CANDIDATE)
    champion = registry.version_by_alias(client, NAME, registry.CHAMPION)
    assert candidate is not None and str(candidate.version) == second
    assert champion is not None and str(champion.version) == first


def test_a_uri_names_its_version_and_run(client: MlflowClient, tmp_path: Path) -> None:
    run_id = client.create_run(client.create_experiment("registry")).info.run_id
    version = add_version(client, tmp_path, run_id=run_id)
    client.set_registered_model_alias(NAME, registry.CHAMPION, version)
    assert registry.version_of_uri(f"models:/{NAME}@champion") == (version, run_id)
    assert registry.version_of_uri(f"models:/{NAME}/{version}") == (version, run_id)
    # A URI without an alias or a version names no one version.
    assert registry.version_of_uri(f"models:/{NAME}") == (None, None)


@pytest.mark.parametrize("tail", ["@candidate", "/7"])
def test_a_uri_to_nothing_is_one_line(client: MlflowClient, tmp_path: Path, tail: str) -> None:
    add_version(client, tmp_path)
    uri = f"models:/{NAME}{tail}"
    with pytest.raises(
        LakhflowError, match=rf"^model '{uri}' does not exist in the registry: "
    ) as e:
        registry.version_of_uri(uri)
    assert "\n" not in str(e.value)


def test_evaluation_tags_carry_the_headline_and_the_test_data() -> None:
    result = {
        "pitch_nll": 2.25,
        "overlap_ratio": 0.5,
        "beats_shuffled": True,
        "max_copied_run": 7,
        "test_windows": 300,  # a figure promote does not read: not a tag
        "splits_sha256": "a" * 64,
        "source": "bach",
    }
    tags = registry.evaluation_tags(result)
    assert tags == {
        "eval.pitch_nll": "2.25",
        "eval.overlap_ratio": "0.5",
        "eval.beats_shuffled": "True",
        "eval.max_copied_run": "7",
        "splits_sha256": "a" * 64,
        "source": "bach",
    }
    assert math.isclose(float(tags[registry.TAG_PREFIX + "pitch_nll"]), 2.25)


def test_tags_set_on_a_version_read_back(client: MlflowClient, tmp_path: Path) -> None:
    version = add_version(client, tmp_path)
    registry.set_tags(client, NAME, version, {"eval.pitch_nll": "2.5", "source": "bach"})
    tags = client.get_model_version(NAME, version).tags
    assert tags["eval.pitch_nll"] == "2.5" and tags["source"] == "bach"


def test_a_folder_without_a_model_is_not_logged(tmp_path: Path) -> None:
    with pytest.raises(LakhflowError, match=r"^no model.keras in "):
        registry.log_generator(tmp_path, registered_model_name=None)


def test_a_uri_that_does_not_load_is_one_line(mlflow_uri: str) -> None:
    with pytest.raises(LakhflowError, match=r"^cannot load model 'runs:/0123/model': ") as e:
        registry.load_generator("runs:/0123/model")
    assert "\n" not in str(e.value)
