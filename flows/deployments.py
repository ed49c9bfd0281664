"""The scheduled deployments: `lakhflow-pipeline/nightly` and `batch-generate/hourly`.

`serve()` (what `lakhflow serve` runs) serves both from one process, as Prefect's `serve`
does; `prefect.yaml` declares the same two for `prefect deploy --all` to a work pool, reading
its schedules from `deploy_settings()`. Schedules come from params.yaml (`flows.pipeline_cron`,
`flows.generate_cron`); each deployment runs one flow run at a time. The deployments carry no
parameters: each run reads params.yaml as it is then, and a parameter given at run time wins.
"""

from __future__ import annotations

from typing import Any, cast

from pipelines import config

PIPELINE_DEPLOYMENT = "nightly"
GENERATE_DEPLOYMENT = "hourly"
TAGS = ["lakhflow"]


def deploy_settings() -> dict[str, Any]:
    """A `prefect.yaml` build step: the schedules from params.yaml, and the project root."""
    cfg = config.load()
    return {
        "root": str(cfg.paths.root),
        "pipeline_cron": cfg.flows.pipeline_cron,
        "generate_cron": cfg.flows.generate_cron,
    }


def serve() -> None:
    """Serve both deployments with their cron schedules until interrupted."""
    from prefect import serve as prefect_serve
    from prefect.deployments.runner import RunnerDeployment
    from prefect.types.entrypoint import EntrypointType

    from flows.generate import batch_generate
    from flows.pipeline import lakhflow_pipeline

    cfg = config.load()
    # module entrypoints: a flow run imports `flows.pipeline`, wherever the project root is
    pipeline = lakhflow_pipeline.to_deployment(
        name=PIPELINE_DEPLOYMENT,
        cron=cfg.flows.pipeline_cron,
        concurrency_limit=1,
        tags=TAGS,
        description="Every DVC stage, download to promote, through `dvc repro`.",
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    batches = batch_generate.to_deployment(
        name=GENERATE_DEPLOYMENT,
        cron=cfg.flows.generate_cron,
        concurrency_limit=1,
        tags=TAGS,
        description="A batch of pieces from the champion model into batches/<date-time>/.",
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    # outside an event loop `to_deployment` returns the deployment itself, not a coroutine
    prefect_serve(cast(RunnerDeployment, pipeline), cast(RunnerDeployment, batches))
