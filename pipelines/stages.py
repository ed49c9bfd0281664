"""The stages in pipeline order, and `run_stage`: the one way the CLI, DVC and Prefect run one.

A stage is the module `pipelines.<name>` with `run(cfg) -> dict` of metrics. Here it runs under
its stage lock (one run at a time per stage and project), after temporaries that killed runs
left in data/ are cleared.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from pipelines import config, storage

STAGES = ("download", "parse", "sequences", "train", "generate", "evaluate", "promote")


def run_stage(stage: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Load and validate params, then run one stage's `run(cfg)`; returns its metrics."""
    return run_loaded(stage, config.load(overrides=overrides))


def run_loaded(stage: str, cfg: config.Config) -> dict[str, Any]:
    """Run one stage's `run(cfg)` with params already loaded and validated."""
    module = importlib.import_module(f"pipelines.{stage}")
    runner: Callable[[config.Config], dict[str, Any]] = module.run
    # Generate writing elsewhere than data/generated/ (a scheduled batch) has a lock of its own,
    # so batches run beside the pipeline's generate stage.
    elsewhere = stage == "generate" and cfg.generate.output is not None
    with storage.stage_lock(cfg.paths.work, stage, "output" if elsewhere else None):
        for folder in (cfg.paths.root / "data", cfg.paths.metrics):
            storage.remove_stale_temporaries(folder)
        return runner(cfg)
