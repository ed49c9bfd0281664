"""Promote stage: reads the registry's `candidate` and `champion` versions of `train.model_name`
and the evaluation figures the evaluate stage tagged on them; moves `champion` to the candidate
when it is better or there is none, records why on both, writes data/metrics/promotion.json.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pipelines import storage, tracking
from pipelines.config import Config, Promote
from pipelines.errors import LakhflowError
from pipelines.registry import CANDIDATE, CHAMPION, TAG_PREFIX, version_by_alias

log = logging.getLogger(__name__)

SAME_SPLIT = ("splits_sha256", "source")  # tags that must agree for the figures to compare


@dataclass(frozen=True)
class Standing:
    """What promotion needs of one registered version, read from its tags."""

    version: str
    pitch_nll: float
    overlap_ratio: float
    splits_sha256: str
    source: str

    @classmethod
    def from_tags(cls, version: str, tags: dict[str, str]) -> Standing:
        def number(key: str) -> float:
            try:
                return float(tags[TAG_PREFIX + key])
            except (KeyError, ValueError):
                return math.nan

        return cls(
            version=version,
            pitch_nll=number("pitch_nll"),
            overlap_ratio=number("overlap_ratio"),
            splits_sha256=tags.get("splits_sha256", ""),
            source=tags.get("source", ""),
        )

    @property
    def evaluated(self) -> bool:
        return math.isfinite(self.pitch_nll)


@dataclass(frozen=True)
class Decision:
    promote: bool
    outcome: str  # promoted | kept | refused | unchanged
    reason: str


def decide(candidate: Standing, champion: Standing | None, params: Promote) -> Decision:
    """Pitch NLL first (lower by more than `min_improvement`); the overlap ratio (the model's
    overlap with real music over real vs real's) breaks a tie."""
    if champion is None:
        return Decision(True, "promoted", "there is no champion yet")
    if champion.version == candidate.version:
        return Decision(False, "unchanged", f"version {candidate.version} is already the champion")
    mismatched = [key for key in SAME_SPLIT if getattr(candidate, key) != getattr(champion, key)]
    if mismatched and not params.allow_split_mismatch:
        what = " and ".join(
            f"{key} {getattr(candidate, key)[:12] or '?'} vs {getattr(champion, key)[:12] or '?'}"
            for key in mismatched
        )
        return Decision(
            False,
            "refused",
            f"not comparable: candidate {candidate.version} and champion {champion.version} were "
            f"evaluated on different test data ({what}); set promote.allow_split_mismatch=true "
            "to compare anyway",
        )
    if not champion.evaluated:
        return Decision(True, "promoted", f"champion {champion.version} has no evaluation figures")
    margin = params.min_improvement
    gain = champion.pitch_nll - candidate.pitch_nll
    nll = f"pitch NLL {candidate.pitch_nll:.4f} vs {champion.pitch_nll:.4f}"
    if gain > margin:
        return Decision(True, "promoted", f"better {nll} (by {gain:.4f} > {margin:g})")
    if gain < -margin:
        return Decision(False, "kept", f"worse {nll}")
    ratio = f"overlap ratio {candidate.overlap_ratio:.3f} vs {champion.overlap_ratio:.3f}"
    if candidate.overlap_ratio > champion.overlap_ratio or (
        math.isfinite(candidate.overlap_ratio) and not math.isfinite(champion.overlap_ratio)
    ):
        return Decision(True, "promoted", f"{nll} within {margin:g}; better {ratio}")
    return Decision(False, "kept", f"{nll} within {margin:g}; not better {ratio}")


def run(cfg: Config) -> dict[str, Any]:
    from mlflow import MlflowClient

    tracking.setup(cfg.paths)
    client = MlflowClient()
    name = cfg.train.model_name
    candidate_mv = version_by_alias(client, name, CANDIDATE)
    if candidate_mv is None:
        raise LakhflowError(f"{name} has no version with alias {CANDIDATE!r}; run `lakhflow train`")
    candidate = Standing.from_tags(str(candidate_mv.version), dict(candidate_mv.tags))
    if not candidate.evaluated:
        raise LakhflowError(
            f"{name} version {candidate.version} ({CANDIDATE}) has no evaluation tags; "
            "run `lakhflow evaluate` first"
        )
    champion_mv = version_by_alias(client, name, CHAMPION)
    champion = (
        Standing.from_tags(str(champion_mv.version), dict(champion_mv.tags))
        if champion_mv is not None
        else None
    )
    decision = decide(candidate, champion, cfg.promote)
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, candidate.version)

    now = datetime.now(UTC).isoformat(timespec="seconds")
    tags = {
        "promote.outcome": decision.outcome,
        "promote.reason": decision.reason,
        "promote.time": now,
    }
    if champion is not None and champion.version != candidate.version:
        for version, other in ((candidate.version, champion.version),
                               (champion.version, candidate.version)):  # fmt: skip
            for key, value in (tags | {"promote.compared_with": other}).items():
                client.set_model_version_tag(name, version, key, value)
    else:
        for key, value in tags.items():
            client.set_model_version_tag(name, candidate.version, key, value)

    result: dict[str, Any] = {
        "model_name": name,
        "candidate_version": candidate.version,
        "champion_before": champion.version if champion else None,
        "champion_version": candidate.version
        if decision.promote
        else (champion.version if champion else None),
        "promoted": decision.promote,
        "outcome": decision.outcome,
        "reason": decision.reason,
        "candidate": _figures(candidate),
        "champion": _figures(champion) if champion else None,
        "min_improvement": cfg.promote.min_improvement,
        "time": now,
    }
    storage.write_json(cfg.paths.promotion, result)
    if decision.outcome == "refused":
        log.warning("promotion refused: %s", decision.reason)
    else:
        log.info(
            "%s version %s: %s (%s); %s is version %s. Wrote %s.",
            name, candidate.version, decision.outcome, decision.reason, CHAMPION,
            result["champion_version"], cfg.paths.promotion,
        )  # fmt: skip
    return result


def _figures(standing: Standing) -> dict[str, Any]:
    return {
        "version": standing.version,
        "pitch_nll": standing.pitch_nll if standing.evaluated else None,
        "overlap_ratio": standing.overlap_ratio if math.isfinite(standing.overlap_ratio) else None,
        "splits_sha256": standing.splits_sha256,
        "source": standing.source,
    }
