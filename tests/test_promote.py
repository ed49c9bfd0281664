"""Promotion against a real MLflow registry: versions carry the tags the evaluate stage sets."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipelines import config, promote
from pipelines.config import Promote
from pipelines.errors import LakhflowError
from pipelines.registry import TAG_PREFIX

NAME = "lakhflow-lstm"
SPLITS = "a" * 64


@pytest.fixture
def registry(mlflow_uri: str, tmp_path: Path) -> MlflowClient:
    client = MlflowClient(tracking_uri=mlflow_uri)
    client.create_registered_model(NAME)
    return client


def add_version(
    client: MlflowClient,
    tmp_path: Path,
    *,
    pitch_nll: float | None,
    overlap: float = 0.7,
    splits: str = SPLITS,
    source: str = "bach",
    alias: str | None = "candidate",
) -> str:
    """A registered version (an empty model folder) tagged as the evaluate stage tags it."""
    existing = client.search_model_versions(f"name='{NAME}'")
    folder = tmp_path / f"model-{len(existing)}"
    folder.mkdir()
    version = str(client.create_model_version(NAME, source=folder.as_uri()).version)
    tags = {"splits_sha256": splits, "source": source}
    if pitch_nll is not None:
        tags |= {f"{TAG_PREFIX}pitch_nll": str(pitch_nll),
                 f"{TAG_PREFIX}overlap_ratio": str(overlap)}  # fmt: skip
    for key, value in tags.items():
        client.set_model_version_tag(NAME, version, key, value)
    if alias:
        client.set_registered_model_alias(NAME, alias, version)
    return version


def champion(client: MlflowClient) -> str:
    return str(client.get_model_version_by_alias(NAME, "champion").version)


def run(project: Path, **params: object) -> dict:
    overrides = [f"promote.{k}={json.dumps(v)}" for k, v in params.items()]
    result = promote.run(config.load(project, overrides))
    written = json.loads((project / "data" / "metrics" / "promotion.json").read_text())
    assert written["outcome"] == result["outcome"]
    return result


def test_first_candidate_becomes_champion(
    registry: MlflowClient, project: Path, tmp_path: Path
) -> None:
    v1 = add_version(registry, tmp_path, pitch_nll=2.5)
    result = run(project)
    assert result["promoted"] and result["outcome"] == "promoted"
    assert "no champion" in result["reason"]
    assert champion(registry) == v1
    tags = registry.get_model_version(NAME, v1).tags
    assert tags["promote.outcome"] == "promoted"
    # Running again changes nothing: it is already the champion.
    again = run(project)
    assert again["outcome"] == "unchanged" and champion(registry) == v1


def test_better_candidate_takes_over_and_both_record_why(
    registry: MlflowClient, project: Path, tmp_path: Path
) -> None:
    v1 = add_version(registry, tmp_path, pitch_nll=2.5, alias="champion")
    v2 = add_version(registry, tmp_path, pitch_nll=2.3)
    result = run(project, min_improvement=0.1)
    assert result["promoted"] and champion(registry) == v2
    assert result["champion_before"] == v1 and result["champion_version"] == v2
    for version, other in ((v1, v2), (v2, v1)):
        tags = registry.get_model_version(NAME, version).tags
        assert tags["promote.outcome"] == "promoted"
        assert tags["promote.compared_with"] == other
        assert "2.3000 vs 2.5000" in tags["promote.reason"]


def test_worse_candidate_leaves_the_champion(
    registry: MlflowClient, project: Path, tmp_path: Path
) -> None:
    v1 = add_version(registry, tmp_path, pitch_nll=2.5, alias="champion")
    v2 = add_version(registry, tmp_path, pitch_nll=2.7, overlap=0.99)
    result = run(project)
    assert not result["promoted"] and result["outcome"] == "kept"
    assert champion(registry) == v1
    assert registry.get_model_version(NAME, v2).tags["promote.reason"].startswith("worse")


def test_the_overlap_ratio_breaks_a_tie_within_the_margin(
    registry: MlflowClient, project: Path, tmp_path: Path
) -> None:
    add_version(registry, tmp_path, pitch_nll=2.50, overlap=0.60, alias="champion")
    v2 = add_version(registry, tmp_path, pitch_nll=2.52, overlap=0.80)
    result = run(project, min_improvement=0.05)
    assert result["promoted"] and champion(registry) == v2
    assert "overlap ratio 0.800 vs 0.600" in result["reason"]
    # Better pitch NLL, but not by more than the margin, and a worse overlap: kept.
    v3 = add_version(registry, tmp_path, pitch_nll=2.49, overlap=0.70)
    result = run(project, min_improvement=0.05)
    assert result["outcome"] == "kept" and champion(registry) == v2
    assert registry.get_model_version(NAME, v3).tags["promote.outcome"] == "kept"


def test_mismatched_split_is_refused_unless_allowed(
    registry: MlflowClient, project: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    v1 = add_version(registry, tmp_path, pitch_nll=2.5, alias="champion")
    v2 = add_version(registry, tmp_path, pitch_nll=1.0, splits="b" * 64)
    result = run(project)
    assert not result["promoted"] and result["outcome"] == "refused"
    assert "splits_sha256 bbbbbbbbbbbb vs aaaaaaaaaaaa" in result["reason"]
    assert champion(registry) == v1
    for version in (v1, v2):
        assert registry.get_model_version(NAME, version).tags["promote.outcome"] == "refused"
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1 and "\n" not in refusals[0]
    # Another source is refused the same way; allowing the mismatch compares the figures.
    add_version(registry, tmp_path, pitch_nll=1.0, source="lmd_full")
    assert run(project)["outcome"] == "refused"
    result = run(project, allow_split_mismatch=True)
    assert result["promoted"] and champion(registry) != v1


def test_unevaluated_candidate_is_an_error(
    registry: MlflowClient, project: Path, tmp_path: Path
) -> None:
    add_version(registry, tmp_path, pitch_nll=None)
    with pytest.raises(LakhflowError, match="lakhflow evaluate"):
        promote.run(config.load(project))


def test_no_candidate_is_an_error(registry: MlflowClient, project: Path) -> None:
    with pytest.raises(LakhflowError, match="no version with alias 'candidate'"):
        promote.run(config.load(project))


def test_decide_compares_pitch_nll_then_overlap() -> None:
    def standing(version: str, nll: float, overlap: float) -> promote.Standing:
        return promote.Standing(version, nll, overlap, SPLITS, "bach")

    params = Promote(min_improvement=0.1)
    assert promote.decide(standing("2", 2.0, 0.1), standing("1", 2.2, 0.9), params).promote
    assert not promote.decide(standing("2", 2.15, 0.1), standing("1", 2.2, 0.9), params).promote
    assert promote.decide(standing("2", 2.15, 0.95), standing("1", 2.2, 0.9), params).promote
    # A champion evaluated before the overlap ratio existed loses a tie to one that has it.
    old = standing("1", 2.2, math.nan)
    assert promote.decide(standing("2", 2.15, 0.5), old, params).promote
    assert not promote.decide(
        standing("2", 2.15, math.nan), standing("1", 2.2, 0.5), params
    ).promote
    unevaluated = standing("1", math.nan, math.nan)
    assert promote.decide(standing("2", 3.0, 0.1), unevaluated, params).promote
