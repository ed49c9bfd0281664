"""summary: the lines `lakhflow summary` prints for a real data/ folder holding some or all of
the stages' metrics files; a stage that has not run is left out, never an error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipelines.config import Paths
from pipelines.summary import summarize

STATS = {
    "files": {"inputs": 12, "ok": 8, "empty": 1, "duplicate": 2, "quarantined": 1},
    "notes": 123456,
    "hours": 3.26,
    "parts": 2,
}
SHARDS = {
    "seq_length": 24,
    "splits": {
        "train": {"windows": 10500, "files": 6},
        "val": {"windows": 900, "files": 1},
        "test": {"windows": 1200, "files": 1},
    },
}
TRAIN = {
    "epochs": 3,
    "device": "CPU:0",
    "seconds": 61.6,
    "best_epoch": 2,
    "monitor": "val_pitch_loss",
    "best": {"val_loss": 2.34567, "val_pitch_loss": 1.23449, "val_monitor": 1.23449},
}
GENERATED = {"pieces": [{"midi": "piece-000.mid"}, {"midi": "piece-001.mid"}]}
EVAL = {
    "pitch_nll": 1.8764,
    "pitch_nll_ratio_to_bigram": 0.8149,
    "overlap": 0.6666,
    "overlap_ratio": 0.8,
    "overlap_shuffled": 0.75,
    "beats_shuffled": False,
    "max_copied_run": 7,
}
PROMOTION = {"model_name": "lakhflow-lstm", "champion_version": "4", "reason": "first version"}
BROWSE = "Browse runs and the registry with `lakhflow ui`."


def write(path: Path, content: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))


def lines(root: Path) -> list[str]:
    return summarize(Paths(root)).split("\n")


def parse_line() -> str:
    return "parse     12 files: 8 ok, 1 empty, 2 duplicate, 1 quarantined; 123,456 notes, 3.3 hours"


def test_nothing_built_yet(tmp_path: Path) -> None:
    assert summarize(Paths(tmp_path)) == "Nothing built yet: run `dvc repro` (or `make demo`)."
    (tmp_path / "data" / "notes").mkdir(parents=True)  # a folder, but no stats in it
    (tmp_path / "data" / "metrics").mkdir()
    assert summarize(Paths(tmp_path)) == "Nothing built yet: run `dvc repro` (or `make demo`)."


def test_only_parse_has_run(tmp_path: Path) -> None:
    write(tmp_path / "data" / "notes" / "stats.json", STATS)
    assert lines(tmp_path) == [parse_line(), BROWSE]


def test_stats_missing_a_status_count_it_as_zero(tmp_path: Path) -> None:
    write(tmp_path / "data/notes/stats.json", STATS | {"files": {"inputs": 5, "ok": 5}})
    assert lines(tmp_path)[0] == (
        "parse     5 files: 5 ok, 0 empty, 0 duplicate, 0 quarantined; 123,456 notes, 3.3 hours"
    )


def test_every_stage_in_pipeline_order(tmp_path: Path) -> None:
    data = tmp_path / "data"
    # written in another order than the pipeline's: the summary keeps the pipeline's
    write(data / "metrics" / "promotion.json", PROMOTION)
    write(data / "metrics" / "eval.json", EVAL)
    write(data / "generated" / "manifest.json", GENERATED)
    write(data / "metrics" / "train.json", TRAIN)
    write(data / "shards" / "manifest.json", SHARDS)
    write(data / "notes" / "stats.json", STATS)
    assert lines(tmp_path) == [
        parse_line(),
        "sequences windows of 25 notes: train 10,500, val 900, test 1,200",
        "train     3 epochs on CPU:0, 62 s; best val_pitch_loss 1.234 in epoch 2 (val loss 2.346)",
        f"generate  2 pieces in {data / 'generated'}",
        "evaluate  pitch NLL 1.876 = 0.81 x the bigram's; overlap with real 0.67 = 0.80 x real "
        "vs real's, NOT above shuffled notes' 0.75; "
        f"longest copied run 7 notes (report: {data / 'evaluation' / 'report.html'})",
        "promote   lakhflow-lstm@champion is version 4 (first version)",
        BROWSE,
    ]


@pytest.mark.parametrize("missing", ["notes", "shards", "model", "generated", "metrics"])
def test_a_stage_not_run_is_left_out(tmp_path: Path, missing: str) -> None:
    data = tmp_path / "data"
    files = {
        "notes": [("notes/stats.json", STATS)],
        "shards": [("shards/manifest.json", SHARDS)],
        "model": [("metrics/train.json", TRAIN)],
        "generated": [("generated/manifest.json", GENERATED)],
        "metrics": [("metrics/eval.json", EVAL), ("metrics/promotion.json", PROMOTION)],
    }
    for folder, written in files.items():
        if folder != missing:
            for name, content in written:
                write(data / name, content)
    starts = [line.split(" ", 1)[0] for line in lines(tmp_path)]
    expected = {
        "notes": ["parse"],
        "shards": ["sequences"],
        "model": ["train"],
        "generated": ["generate"],
        "metrics": ["evaluate", "promote"],
    }
    everything = ["parse", "sequences", "train", "generate", "evaluate", "promote", "Browse"]
    assert starts == [s for s in everything if s not in expected[missing]]


def test_older_metrics_without_optional_keys(tmp_path: Path) -> None:
    """A train.json without the pitch loss and a generate manifest without pieces still read."""
    # train.json from before train.monitor: the summed val loss chose the best epoch
    old = {k: v for k, v in TRAIN.items() if k != "monitor"} | {"best": {"val_loss": 1.0}}
    write(tmp_path / "data/metrics/train.json", old)
    write(tmp_path / "data/generated/manifest.json", {"seed": 1})
    assert lines(tmp_path) == [
        "train     3 epochs on CPU:0, 62 s; best val_loss 1.000 in epoch 2 (val loss 1.000)",
        f"generate  0 pieces in {tmp_path / 'data' / 'generated'}",
        BROWSE,
    ]
