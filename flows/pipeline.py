"""The `lakhflow-pipeline` flow: every DVC stage, one after another, each a Prefect task.

Each task runs `dvc repro --single-item <stage>` in the project root, so `dvc.lock` stays the
record of what was built and a stage whose inputs did not change is skipped, as DVC skips it.
At the end a markdown artifact shows the stages, the metrics and the registered model.
"""

from __future__ import annotations

import collections
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from pipelines import config, registry, tracking
from pipelines.errors import LakhflowError, ParamsError
from pipelines.stages import STAGES

LOG_TAIL_LINES = 20
STAGE_EXIT = re.compile(r"failed to run: .*, exited with (-?\d+)")
MAX_METRIC_ROWS = 300
TIMEOUT_GRACE_S = 30.0
BIN = Path(sys.executable).parent


class StageFailed(LakhflowError):
    """A DVC stage exited non-zero: the message names it and carries its last log lines."""

    def __init__(self, stage: str, returncode: int, tail: list[str]) -> None:
        self.stage = stage
        self.returncode = returncode
        lines = "\n".join(f"  | {line}" for line in tail) or "  | (no output)"
        super().__init__(f"stage {stage!r} failed (exit {returncode}); its last lines:\n{lines}")


class StageTimedOut(LakhflowError, TimeoutError):
    """A DVC stage ran past `flows.stage_timeout_s`; Prefect marks its task run TimedOut."""


def _tool_env() -> dict[str, str]:
    """The environment of `dvc repro`: this interpreter's tools (dvc, lakhflow) first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("GIT_PYTHON_REFRESH", "quiet")
    # progress bars redraw at most every 10 s, or a long parse floods the run's log
    env.setdefault("TQDM_MININTERVAL", "10")
    return env


def _dvc() -> str:
    local = BIN / "dvc"
    return str(local) if local.exists() else "dvc"


def _stream(
    cmd: list[str], cwd: Path, limit_s: float, run_env: dict[str, str]
) -> tuple[int, list[str]]:
    """Run `cmd`, sending each output line to the run's log; returns (exit code, last lines).

    The command runs in its own process group so that a time limit (or a cancelled run) ends
    the whole tree, dvc and the stage under it, and never leaves DVC's lock held.
    """
    logger = get_run_logger()
    tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=_tool_env() | run_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            # tqdm redraws with \r: keep what the bar last showed
            line = raw.rstrip("\n").rsplit("\r", 1)[-1].rstrip()
            if line:
                tail.append(line)
                logger.info(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        reader.join(timeout=5)
        msg = f"`dvc {' '.join(cmd[1:])}` ran past flows.stage_timeout_s ({limit_s:g} s)"
        raise StageTimedOut(msg) from None
    finally:
        if proc.poll() is None:
            _kill_group(proc)
    reader.join(timeout=5)
    return code, list(tail)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


@task(cache_policy=NO_CACHE)
def repro(
    stage: str,
    root: str,
    limit_s: float,
    force: bool = False,
    run_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run one DVC stage (`dvc repro --single-item <stage>`) in the project root; `run_env`
    says how stages run (LAKHFLOW_SCHEDULER), outside what DVC hashes."""
    cmd = [_dvc(), "repro", "--single-item", stage, *(["--force"] if force else [])]
    started = time.perf_counter()
    code, tail = _stream(cmd, Path(root), limit_s, run_env or {})
    if code != 0:
        # dvc exits 255 whatever happened; the stage's own exit code is in its last words
        said = STAGE_EXIT.search("\n".join(tail))
        raise StageFailed(stage, int(said.group(1)) if said else code, tail)
    skipped = any(f"'{stage}' didn't change" in line for line in tail)
    return {
        "stage": stage,
        "result": "unchanged, skipped" if skipped else "ran",
        "seconds": round(time.perf_counter() - started, 1),
    }


def _retry_unless_params_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a failed download, except when its params are wrong (exit 2): that never heals."""
    exc = state.result(raise_on_failure=False)
    return not (isinstance(exc, StageFailed) and exc.returncode == ParamsError.exit_code)


@flow(name="lakhflow-pipeline")
def lakhflow_pipeline(scheduler_address: str | None = None, force: bool = False) -> dict[str, Any]:
    """Run the DVC stages download to promote in order, then report metrics and the model.

    `scheduler_address` (such as tcp://127.0.0.1:8786) runs the parse and sequences stages on
    that Dask cluster: the stages get it as LAKHFLOW_SCHEDULER (how a stage runs is not params:
    params.yaml is never rewritten). `force` reruns every stage even when DVC finds it unchanged.
    """
    cfg = config.load()
    root = cfg.paths.root
    limits = cfg.flows
    run_env = {config.SCHEDULER_ENV: scheduler_address} if scheduler_address else {}
    # a delay that doubles each retry: 1x, 2x, 4x ... retry_delay_s
    delays = [limits.retry_delay_s * 2**i for i in range(limits.download_retries)]
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    for stage in STAGES:
        options: dict[str, Any] = {
            "name": stage,
            "task_run_name": f"dvc repro {stage}",
            # the stage's own limit (in `_stream`) stops its processes and names it;
            # Prefect's, a little later, is the backstop
            "timeout_seconds": limits.stage_timeout_s + TIMEOUT_GRACE_S,
        }
        if stage == "download" and limits.download_retries:
            options |= {
                "retries": limits.download_retries,
                "retry_delay_seconds": delays,
                "retry_condition_fn": _retry_unless_params_error,
            }
        results.append(
            repro.with_options(**options)(stage, str(root), limits.stage_timeout_s, force, run_env)
        )
    seconds = time.perf_counter() - started
    summary = _summary(cfg, results, seconds)
    create_markdown_artifact(
        markdown=summary["markdown"],
        key="lakhflow-pipeline",
        description="The stages, metrics and registered model of this pipeline run",
    )
    get_run_logger().info(
        "lakhflow-pipeline: %d stages in %.1f s; model %s version %s, champion version %s",
        len(results),
        seconds,
        summary["model"].get("model_name"),
        summary["model"].get("model_version"),
        summary["champion"],
    )
    return {k: v for k, v in summary.items() if k != "markdown"}


def _summary(cfg: config.Config, results: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    model = _read_json(cfg.paths.model_run)
    champion = _champion_version(cfg, model.get("model_name") or cfg.train.model_name)
    metrics = _metrics(cfg.paths.root)
    lines = [f"# lakhflow pipeline ({seconds:.0f} s)", "", "| stage | result | seconds |"]
    lines.append("|---|---|---:|")
    lines += [f"| {r['stage']} | {r['result']} | {r['seconds']:.1f} |" for r in results]
    lines += ["", "## Model", "", "| | |", "|---|---|"]
    for key in ("run_id", "model_name", "model_version", "model_uri"):
        lines.append(f"| {key} | `{model.get(key, '-')}` |")
    lines.append(f"| champion version | `{champion}` |")
    lines += ["", "## Metrics (`dvc metrics show`)"]
    for path in dict.fromkeys(path for path, _, _ in metrics):
        lines += ["", f"### {path}", "", "| metric | value |", "|---|---:|"]
        lines += [f"| {name} | {_show(value)} |" for p, name, value in metrics if p == path]
    return {
        "stages": results,
        "seconds": round(seconds, 1),
        "model": model,
        "champion": champion,
        "metrics": {f"{path}:{name}": value for path, name, value in metrics},
        "markdown": "\n".join(lines) + "\n",
    }


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _metrics(root: Path) -> list[tuple[str, str, Any]]:
    """The scalar metrics DVC knows of (`dvc metrics show --json`), as (file, name, value)."""
    proc = subprocess.run(
        [_dvc(), "metrics", "show", "--json"],
        cwd=root,
        env=_tool_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        shown = json.loads(proc.stdout or "{}")
    except ValueError:
        return []
    # the workspace's entry: "workspace", or "" in a git repository
    workspace: dict[str, Any] = {}
    if isinstance(shown, dict):
        workspace = shown.get("workspace") or shown.get("") or {}
    files = workspace.get("data") or {}
    rows: list[tuple[str, str, Any]] = []
    for path, entry in sorted(files.items()):
        flat = config.flatten(entry.get("data") or {})
        rows += [(path, k, v) for k, v in flat.items() if _is_scalar_metric(v)]
    return rows[:MAX_METRIC_ROWS]


def _is_scalar_metric(value: Any) -> bool:
    return isinstance(value, bool | int | float) or (isinstance(value, str) and len(value) <= 64)


def _show(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value) and not value.is_integer():
        return f"{value:.4g}"
    return str(value)


def _champion_version(cfg: config.Config, model_name: str) -> str | None:
    """The registry's `champion` version of the model, or None when there is none yet."""
    from mlflow import MlflowClient

    tracking.setup(cfg.paths)
    found = registry.version_by_alias(MlflowClient(), model_name, registry.CHAMPION)
    return str(found.version) if found is not None else None
