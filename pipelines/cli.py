"""The `lakhflow` command: one entry point for the stages, presets, the MLflow UI and the flows.

`lakhflow <stage> [-S key=value ...]` calls the same `run(cfg)` that DVC and Prefect call.
A problem the user can fix ends with one line on stderr and a non-zero exit, not a traceback:
bad params (checked before TensorFlow is imported, so in well under a second), and a disk that
is full, read-only or not ours to write.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

import yaml

from pipelines import config, storage
from pipelines.errors import WRITE_ERRNOS, LakhflowError, ParamsError, reason
from pipelines.stages import STAGES, run_loaded

log = logging.getLogger("lakhflow")


TF_STAGES = {"train", "generate", "evaluate", "flow", "serve"}


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


def _stage_command(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    run_loaded(args.command, args.cfg)
    log.info("lakhflow %s: done in %.1f s", args.command, time.perf_counter() - started)
    return 0


def _preset_command(args: argparse.Namespace) -> int:
    cfg: config.Config = args.cfg
    overrides = config.load_preset(cfg.paths, args.name)
    sets = " ".join(f"-S {shlex.quote(o)}" for o in overrides)
    if args.run:
        cmd = ["dvc", "exp", "run", *[x for o in overrides for x in ("-S", o)]]
        return subprocess.call(cmd, cwd=cfg.paths.root)
    if args.apply:
        config.apply_to_params(cfg.paths.params, overrides)
        print(f"applied preset {args.name} to {cfg.paths.params.name}: {len(overrides)} keys")
        return 0
    print(f"dvc exp run {sets}")
    return 0


UI_HOST = "127.0.0.1"
STOP_GRACE_S = 10.0


def _ui_command(args: argparse.Namespace) -> int:
    from pipelines import tracking

    cfg: config.Config = args.cfg
    port: int = args.port
    if not 1 <= port <= 65535:
        raise ParamsError(f"--port {port} is not a TCP port (1-65535)")
    _check_port_free(port)
    cmd = [
        sys.executable, "-m", "mlflow", "ui",
        "--backend-store-uri", tracking.tracking_uri(cfg.paths),
        "--default-artifact-root", cfg.paths.mlartifacts.as_uri(),
        "--host", UI_HOST, "--port", str(port),
    ]  # fmt: skip
    print(f"MLflow UI on http://{UI_HOST}:{port} (Ctrl-C to stop)", flush=True)
    # MLflow's server is a tree of processes (uvicorn, its job consumers): in a group of its own,
    # so that stopping `lakhflow ui` in any way ends all of it, not just the first process.
    with _signals_interrupt():
        server = subprocess.Popen(cmd, cwd=cfg.paths.root, start_new_session=True)
        try:
            return server.wait()
        finally:
            _end_group(server)


def _check_port_free(port: int) -> None:
    """Refuse a port something already listens on, before MLflow prints a page of traceback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # as the server binds it: a port left in TIME_WAIT by the last run is free to take
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((UI_HOST, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                msg = f"port {port} on {UI_HOST} is in use; choose another with --port"
                raise LakhflowError(msg) from None
            raise LakhflowError(f"cannot listen on {UI_HOST}:{port}: {reason(exc)}") from None


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP stop like Ctrl-C does (KeyboardInterrupt), so `finally` blocks run;
    by default they end Python at once and leave its children running."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _end_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group `proc` leads, SIGKILL to what is left after a grace (or at
    once, should a second Ctrl-C cut the grace short)."""
    try:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and _group_alive(proc.pid):
            proc.poll()  # reaps the leader, so its zombie does not count as alive
            time.sleep(0.1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _summary_command(args: argparse.Namespace) -> int:
    from pipelines import summary

    print(summary.summarize(args.cfg.paths))
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
    if getattr(args, "model_uri", None):
        args.set.append(f"generate.model_uri={args.model_uri}")
    try:
        # params before TensorFlow: a mistake in them is answered at once, not after its import
        args.cfg = config.load(overrides=getattr(args, "set", None))
        if args.command in TF_STAGES:
            _import_tensorflow_quietly()
        code: int = args.func(args)
    except LakhflowError as exc:
        print(f"lakhflow {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            raise
        print(f"lakhflow {args.command}: error: {_os_problem(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"lakhflow {args.command}: interrupted", file=sys.stderr)
        return 130
    return code


def _os_problem(exc: OSError) -> str:
    """A disk or permission error that no stage named: the path it names, as the user knows it.
    Only the errors of a full disk or a read-only mount are surely writes."""
    failed = storage.write_error(exc)
    if failed is None:  # no file name: nothing better to say than the reason
        return f"cannot write: {reason(exc)}"
    if exc.errno in (errno.EACCES, errno.EPERM):  # a read or a write
        return f"cannot access {failed.filename}: {reason(exc)}"
    return str(failed)


if __name__ == "__main__":
    sys.exit(main())
