"""The `batch-generate` flow: a batch of new pieces from the registry's champion model.

It runs the generate stage's own code in-process with the model `models:/<name>@champion`
and writes into `batches/<date-time>/`, outside every DVC output, so `dvc repro` never deletes
it; the stage logs the batch to MLflow, and the flow leaves an artifact listing the files.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from pipelines import config, registry
from pipelines.stages import run_stage


@task(cache_policy=NO_CACHE)
def generate_batch(overrides: list[str]) -> dict[str, Any]:
    """Run the generate stage (`pipelines.generate.run`) with the batch's overrides."""
    return run_stage("generate", overrides)


def _batch_dir(batches: Path) -> Path:
    """A new, empty `batches/<YYYYmmdd-HHMMSS>`, with a suffix if a batch of the same second
    exists. Created here, atomically, so two batches never share a folder and no batch
    replaces another."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    batches.mkdir(parents=True, exist_ok=True)
    candidate = batches / stamp
    n = 1
    while True:
        try:
            candidate.mkdir()
        except FileExistsError:
            n += 1
            candidate = batches / f"{stamp}-{n}"
            continue
        return candidate


@flow(name="batch-generate")
def batch_generate(
    count: int | None = None,
    notes: int | None = None,
    temperature: float | dict[str, float] | None = None,
    program: int | str | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Write `count` pieces of `notes` notes with the champion model into batches/<date-time>/.

    Parameters left as None take params.yaml's `generate.*` values, except `seed`: None gives
    each batch a new seed (from its time), so hourly batches differ; the artifact records it.
    """
    cfg = config.load()
    out_dir = _batch_dir(cfg.paths.batches)
    if seed is None:
        seed = int(time.time()) % 2**31
    output = out_dir.relative_to(cfg.paths.root).as_posix()
    overrides = [
        f"generate.model_uri=models:/{cfg.train.model_name}@{registry.CHAMPION}",
        f"generate.output={output}",
        f"generate.seed={seed}",
    ]
    chosen = {"count": count, "notes": notes, "temperature": temperature, "program": program}
    overrides += [
        f"generate.{key}={config.to_yaml_scalar(value)}"
        for key, value in chosen.items()
        if value is not None
    ]
    metrics = generate_batch(overrides)
    files = sorted(p for p in out_dir.rglob("*") if p.is_file()) if out_dir.exists() else []
    settings = [f"seed {seed}"] + [f"{k} {v}" for k, v in chosen.items() if v is not None]
    lines = [
        f"# Batch {out_dir.name}",
        "",
        f"Model `models:/{cfg.train.model_name}@{registry.CHAMPION}`; {', '.join(settings)}.",
        "",
        "| file | bytes |",
        "|---|---:|",
    ]
    lines += [f"| {p.relative_to(cfg.paths.root).as_posix()} | {p.stat().st_size} |" for p in files]
    create_markdown_artifact(
        markdown="\n".join(lines) + "\n",
        key="batch-generate",
        description=f"The files of batch {out_dir.name}",
    )
    get_run_logger().info("batch-generate: %d files in %s", len(files), output)
    return {
        "output": output,
        "seed": seed,
        "files": [p.relative_to(cfg.paths.root).as_posix() for p in files],
        "metrics": metrics,
    }
