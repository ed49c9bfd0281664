"""What the pipeline has built so far, in a few lines: `lakhflow summary` (the end of `make demo`).

Reads the metrics files the stages write; a stage that has not run yet is left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines import storage
from pipelines.config import Paths


def _read(path: Path) -> dict[str, Any] | None:
    return storage.read_json(path) if path.exists() else None


def summarize(paths: Paths) -> str:
    lines: list[str] = []
    if stats := _read(paths.notes_stats):
        files = stats["files"]
        lines.append(
            f"parse     {files.get('inputs', 0)} files: {files.get('ok', 0)} ok, "
            f"{files.get('empty', 0)} empty, {files.get('duplicate', 0)} duplicate, "
            f"{files.get('quarantined', 0)} quarantined; {stats['notes']:,} notes, "
            f"{stats['hours']:.1f} hours"
        )
    if manifest := _read(paths.shards_manifest):
        splits = manifest["splits"]
        counts = ", ".join(f"{name} {splits[name]['windows']:,}" for name in splits)
        lines.append(f"sequences windows of {manifest['seq_length'] + 1} notes: {counts}")
    if train := _read(paths.train_metrics):
        best = train["best"]
        monitored = best.get("val_monitor", best["val_loss"])  # train.json before train.monitor
        lines.append(
            f"train     {train['epochs']} epochs on {train['device']}, {train['seconds']:.0f} s; "
            f"best {train.get('monitor', 'val_loss')} {monitored:.3f}"
            f" in epoch {train.get('best_epoch', '?')} (val loss {best['val_loss']:.3f})"
        )
    if generated := _read(paths.generated_manifest):
        pieces = generated.get("pieces", [])
        lines.append(f"generate  {len(pieces)} pieces in {paths.generated}")
    if evaluation := _read(paths.eval_metrics):
        lines.append(
            f"evaluate  pitch NLL {evaluation['pitch_nll']:.3f} = "
            f"{evaluation['pitch_nll_ratio_to_bigram']:.2f} x the bigram's; "
            f"overlap with real {evaluation['overlap']:.2f} = {evaluation['overlap_ratio']:.2f} "
            f"x real vs real's, {'above' if evaluation['beats_shuffled'] else 'NOT above'} "
            f"shuffled notes' {evaluation['overlap_shuffled']:.2f}; "
            f"longest copied run {evaluation['max_copied_run']} notes "
            f"(report: {paths.root / 'data/evaluation/report.html'})"
        )
    if promotion := _read(paths.promotion):
        lines.append(
            f"promote   {promotion['model_name']}@champion is version "
            f"{promotion['champion_version']} ({promotion['reason']})"
        )
    if not lines:
        return "Nothing built yet: run `dvc repro` (or `make demo`)."
    lines.append("Browse runs and the registry with `lakhflow ui`.")
    return "\n".join(lines)
