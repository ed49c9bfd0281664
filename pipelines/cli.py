"""The `lakhflow` command: one entry point for the stages, presets, the MLflow UI and the flows.

`lakhflow <stage> [-S key=value ...]` calls the same `run(cfg)` that DVC and Prefect call.
A problem the user can fix ends with one line on stderr and a non-zero exit, not a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from pipelines import config, storage
from pipelines.errors import LakhflowError, ParamsError

STAGES = ("download", "parse", "sequences", "train", "generate", "evaluate", "promote")
log = logging.getLogger("lakhflow")


TF_STAGES = {"sequences", "train", "generate", "evaluate", "flow", "serve"}


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow and look for devices with stderr muted.

    TensorFlow 2.21's C++ libraries print oneDNN and "no CUDA driver" notices before its logging
    is configured, so TF_CPP_MIN_LOG_LEVEL cannot hide them; they are harmless. What they printed
    is shown after all if the import fails.
    """
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def run_stage(stage: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Load and validate params, then run one stage's `run(cfg)`; returns its metrics.

    One run at a time per stage and project (a second one is refused), and temporaries that
    killed runs left in data/ are cleared first.
    """
    cfg = config.load(overrides=overrides)
    module = importlib.import_module(f"pipelines.{stage}")
    runner: Callable[[config.Config], dict[str, Any]] = module.run
    # Generate writing elsewhere than data/generated/ (a scheduled batch) has a lock of its own,
    # so batches run beside the pipeline's generate stage.
    elsewhere = stage == "generate" and cfg.generate.output is not None
    with storage.stage_lock(cfg.paths.work, stage, "output" if elsewhere else None):
        for folder in (cfg.paths.root / "data", cfg.paths.metrics):
            storage.remove_stale_temporaries(folder)
        return runner(cfg)


def _stage_command(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    run_stage(args.command, args.set)
    log.info("lakhflow %s: done in %.1f s", args.command, time.perf_counter() - started)
    return 0


def _preset_command(args: argparse.Namespace) -> int:
    cfg = config.load()
    overrides = config.load_preset(cfg.paths, args.name)
    sets = " ".join(f"-S {shlex.quote(o)}" for o in overrides)
    if args.run:
        cmd = ["dvc", "exp", "run", *[x for o in overrides for x in ("-S", o)]]
        return subprocess.call(cmd, cwd=cfg.paths.root)
    if args.apply:
        apply_to_params(cfg.paths.params, overrides)
        print(f"applied preset {args.name} to {cfg.paths.params.name}: {len(overrides)} keys")
        return 0
    print(f"dvc exp run {sets}")
    return 0


def apply_to_params(path: Path, overrides: list[str]) -> None:
    """Write overrides into params.yaml, keeping its comments and order."""
    from ruamel.yaml import YAML

    yaml = YAML()
    tree = yaml.load(path.read_text())
    for text in overrides:
        parts, value = config.parse_override(text)
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    config.validate(_plain(tree))
    with open(path, "w") as f:
        yaml.dump(tree, f)


def _plain(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {str(k): _plain(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_plain(v) for v in tree]
    return tree


def _ui_command(args: argparse.Namespace) -> int:
    from pipelines import tracking

    cfg = config.load()
    cmd = [
        sys.executable, "-m", "mlflow", "ui",
        "--backend-store-uri", tracking.tracking_uri(cfg.paths),
        "--default-artifact-root", cfg.paths.mlartifacts.as_uri(),
        "--host", "127.0.0.1", "--port", str(args.port),
    ]  # fmt: skip
    print(f"MLflow UI on http://127.0.0.1:{args.port} (Ctrl-C to stop)")
    return subprocess.call(cmd, cwd=cfg.paths.root)


def _summary_command(args: argparse.Namespace) -> int:
    from pipelines import summary

    print(summary.summarize(config.load().paths))
    return 0


def _serve_command(args: argparse.Namespace) -> int:
    from flows import deployments

    deployments.serve()
    return 0


def _flow_command(args: argparse.Namespace) -> int:
    from flows import generate as generate_flow
    from flows import pipeline as pipeline_flow

    flow = (
        pipeline_flow.lakhflow_pipeline if args.flow == "pipeline" else generate_flow.batch_generate
    )
    parameters = dict(_flow_parameter(text) for text in args.param)
    unknown = set(parameters) - set(flow.parameters.properties)
    if unknown:
        known = ", ".join(flow.parameters.properties)
        raise ParamsError(f"{flow.name} has no parameter {sorted(unknown)[0]!r}; it takes {known}")
    flow(**parameters)
    return 0


def _flow_parameter(text: str) -> tuple[str, Any]:
    """`count=4` -> ("count", 4): a flow parameter, its value read as YAML."""
    name, sep, raw = text.partition("=")
    if not sep or not name.strip():
        raise ParamsError(f"flow parameter {text!r} is not name=value (for example count=4)")
    return name.strip(), yaml.safe_load(raw) if raw.strip() else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lakhflow",
        description="Symbolic music generation: DVC stages, MLflow tracking, Prefect schedules.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for stage in STAGES:
        p = sub.add_parser(stage, help=f"run the {stage} stage (what `dvc repro {stage}` runs)")
        p.add_argument(
            "-S", "--set", action="append", default=[], metavar="KEY=VALUE",
            help="override a params key, as `dvc exp run -S` does (repeatable)",
        )  # fmt: skip
        if stage == "generate":
            p.add_argument("--model-uri", help="a model URI such as models:/lakhflow-lstm@champion")
        p.set_defaults(func=_stage_command)
    p = sub.add_parser("preset", help="show, apply or run a preset from presets/")
    p.add_argument("name")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--apply", action="store_true", help="write its overrides into params.yaml")
    group.add_argument("--run", action="store_true", help="run it as `dvc exp run -S ...`")
    p.set_defaults(func=_preset_command)
    p = sub.add_parser("ui", help="the MLflow UI for this project's store, on 127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=_ui_command)
    p = sub.add_parser("summary", help="what the pipeline has built, in a few lines")
    p.set_defaults(func=_summary_command)
    p = sub.add_parser("serve", help="serve the Prefect deployments with their schedules")
    p.set_defaults(func=_serve_command)
    p = sub.add_parser("flow", help="run a Prefect flow once")
    p.add_argument("flow", choices=["pipeline", "generate"])
    p.add_argument(
        "-p", "--param", action="append", default=[], metavar="NAME=VALUE",
        help="a flow parameter, such as scheduler_address=tcp://127.0.0.1:8786 or count=4",
    )  # fmt: skip
    p.set_defaults(func=_flow_command)
    return parser


def _stop_on_sigterm() -> None:
    """SIGTERM (a cancelled flow run, `kill`) unwinds like Ctrl-C, so a stage's cleanup runs:
    no temporary output is left behind and worker processes are stopped."""

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)


def main(argv: list[str] | None = None) -> int:
    _quiet_tensorflow()
    _stop_on_sigterm()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    if args.command in TF_STAGES:
        _import_tensorflow_quietly()
    if getattr(args, "model_uri", None):
        args.set.append(f"generate.model_uri={args.model_uri}")
    try:
        code: int = args.func(args)
    except LakhflowError as exc:
        print(f"lakhflow {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"lakhflow {args.command}: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
