"""Train stage: reads data/shards (manifest, train and val windows), trains the LSTM with a
checkpoint per epoch (and every `train.checkpoint_steps` steps inside one) in
.lakhflow/work/train/, and writes data/model/ and data/metrics/train.json; the run is tracked in
MLflow and registered as a new `train.model_name` version, alias `candidate`.

A run killed between checkpoints goes on from the last one, inside its epoch if it was saved
there: the epoch's batches already trained are skipped in the epoch's own (seeded) order, and the
dropout streams and the epoch's running train-metric sums are put back as they were, so the run
ends with the weights an unbroken run has (exactly on a CPU, where op determinism is on).

Early stopping and the best epoch follow `val_monitor`: the sum of the val_<head>_loss figures
weighted by `train.monitor` (the pitch loss alone by default), not Keras' summed val_loss.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import shutil
import subprocess
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines import registry, storage, tracking
from pipelines.config import MANIFEST_FILE, MODEL_FILE, Config
from pipelines.errors import LakhflowError, ParamsError
from pipelines.model import (
    Placement,
    build_model,
    choose_placement,
    dropout_states,
    head_names,
    load_model,
    reseed_dropout,
    restore_dropout_states,
    split_window,
    style_groups,
    summary_text,
)
from pipelines.schema import HEADS, OTHER_STYLE

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
KEEP_EPOCHS = 2  # checkpoints kept (epoch ends or not), so a damaged newest one has a fallback
# Validation windows at most kept in memory across epochs (about 0.5 KB each).
VAL_CACHE_WINDOWS = 200_000
MONITOR = "val_monitor"  # the history's column (and MLflow's metric) that early stopping watches


def monitored_loss(row: Mapping[str, float], monitor: Mapping[str, float]) -> float:
    """The figure early stopping watches in one epoch's row: `monitor`'s weights over the
    heads' val_<head>_loss (Keras reports those unweighted, and val_loss as their sum weighted
    by the loss weights, so monitor = loss weights gives val_loss back)."""
    return sum(w * row[f"val_{head}_loss"] for head, w in monitor.items() if w)


def monitor_formula(monitor: Mapping[str, float]) -> str:
    """`monitor` as train.json and the log say it: "val_pitch_loss", "0.5*val_step_loss + ..."."""
    terms = [(w, f"val_{head}_loss") for head, w in monitor.items() if w]
    return " + ".join(name if w == 1 else f"{w:g}*{name}" for w, name in terms)


def check_monitor(cfg: Config) -> None:
    """train.monitor may only weigh heads the model has: regression heads have no velocity."""
    heads = head_names(cfg.train.heads)
    missing = sorted(set(cfg.train.monitor) - set(heads))
    if missing:
        raise ParamsError(
            f"train.monitor: {', '.join(missing)} has no head when train.heads is "
            f"{cfg.train.heads}; its heads are {', '.join(heads)}"
        )


@dataclass
class Progress:
    """What a killed run needs to go on: epochs done, history, early stopping, the MLflow run."""

    epochs_done: int = 0
    run_id: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    windows: list[int] = field(default_factory=list)
    best_monitor: float = math.inf  # the best epoch's val_monitor
    best_epoch: int = 0
    wait: int = 0
    stopped: bool = False
    checkpoint: str | None = None  # the model after `epochs_done` epochs, with optimizer state
    best_weights: str | None = None  # weights of `best_epoch`
    logged_epochs: int = 0  # epochs whose metrics reached MLflow (the rest are logged later)
    params_logged: bool = False
    steps: int = 0  # optimizer steps (batches) trained in all epochs, the checkpoint's included
    # A checkpoint inside an epoch: the batches of epoch epochs_done + 1 it has trained (0: it
    # ends an epoch), their seconds, each dropout layer's seed state and the epoch's running
    # train-metric sums ([variable path, value]), all as they were after its last batch.
    epoch_steps: int = 0
    epoch_seconds: float = 0.0
    dropout_states: dict[str, list[int]] = field(default_factory=dict)
    metric_states: list[list[Any]] = field(default_factory=list)
    # The val figures at every checkpoint, by global step (MLflow's checkpoint_val_* metrics)
    validations: list[dict[str, float]] = field(default_factory=list)
    logged_validations: int = 0

    @classmethod
    def from_json(cls, data: Any) -> Progress:
        """A state as saved; raises ValueError/TypeError/KeyError when it is not one.

        A state saved before train.monitor has `best_val_loss`, the summed val_loss that chose
        its best epoch, and loads with that as its best figure. `run` never meets one: its params
        lack train.monitor, so they hash to another work folder, and training starts over.
        """
        known = set(cls.__dataclass_fields__)
        progress = cls(**{k: v for k, v in data.items() if k in known})
        best = data["best_monitor"] if "best_monitor" in data else data.get("best_val_loss")
        progress.best_monitor = math.inf if best is None else float(best)
        progress.epochs_done = int(progress.epochs_done)
        return progress

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["best_monitor"] = None if math.isinf(self.best_monitor) else self.best_monitor
        return data

    def save(self, work: Path) -> None:
        storage.write_json(work / STATE_FILE, self.to_json())

    def update_early_stopping(self, epoch: int, monitored: float, patience: int) -> bool:
        """Keras' EarlyStopping rule (stop after `patience` epochs without a lower monitored
        loss), kept in the checkpoint so it survives a resume; True if this epoch is the best
        so far."""
        if monitored < self.best_monitor:
            self.best_monitor, self.best_epoch, self.wait = monitored, epoch, 0
            return True
        self.wait += 1
        if self.wait >= patience and epoch > 1:
            self.stopped = True
        return False


# --------------------------------------------------------------------------- data


def read_shards_manifest(cfg: Config) -> tuple[dict[str, Any], str]:
    """The shards' manifest and its sha256; a one-line error if the shards are missing/stale."""
    from pipelines.dataset import read_manifest

    path = cfg.paths.shards_manifest
    if not path.exists():
        raise LakhflowError(f"no shards in {cfg.paths.shards}: run `lakhflow sequences` first")
    manifest = dict(read_manifest(cfg.paths.shards))
    if int(manifest["seq_length"]) != cfg.sequences.seq_length:
        raise LakhflowError(
            f"the shards hold windows of {manifest['seq_length']} notes but "
            f"sequences.seq_length is {cfg.sequences.seq_length}: run `lakhflow sequences` again"
        )
    for split in ("train", "val"):
        if int(manifest["splits"][split]["windows"]) < 1:
            raise LakhflowError(
                f"the {split} split has no windows of {manifest['seq_length'] + 1} notes: "
                "use more data, a shorter sequences.seq_length or larger split ratios"
            )
    return manifest, storage.file_digest(path, "sha256")


def train_windows(cfg: Config, manifest: Mapping[str, Any], epoch: int, skip: int = 0) -> Any:
    """The train windows of one epoch: shuffled by a seed per epoch, so a resumed run sees
    the same order an unbroken one would; repeated when steps_per_epoch caps the epoch. `skip`
    drops the epoch's first batches (a checkpoint inside the epoch trained them): they are
    still read and framed, but never reach the model."""
    import tensorflow as tf

    from pipelines.dataset import windows

    ds = windows(
        cfg.paths.shards,
        "train",
        dict(manifest),
        batch_size=cfg.train.batch_size,
        shuffle=True,
        transpose=cfg.sequences.transpose,
        seed=cfg.train.seed + epoch,
        repeat=cfg.train.steps_per_epoch > 0,
        groups=style_groups(cfg.train, manifest) or None,
    )
    if skip:
        ds = ds.skip(skip)
    heads = cfg.train.heads
    return ds.map(lambda b: split_window(b, manifest, heads)).prefetch(tf.data.AUTOTUNE)


def val_stride(cfg: Config, manifest: Mapping[str, Any]) -> int:
    """The stride the val windows are cut at: the manifest's, or with train.validation_steps a
    multiple of it that still leaves at least the subset's windows in the split.

    The sequences stage writes a split's chunks in a hash-shuffled order, so any prefix of the
    val split is already a fair, fixed sample of its tracks; the wider stride spreads the subset
    over about total/subset times as many chunks (fewer windows from each) than taking the first
    windows at the manifest's stride would (a chunk with m+1 windows keeps floor(m/k)+1 >=
    (m+1)/k of them, so the split keeps at least total/k >= subset windows).
    """
    stride = int(manifest["stride"])
    total = int(manifest["splits"]["val"]["windows"])
    subset = cfg.train.validation_steps * cfg.train.batch_size
    if cfg.train.validation_steps and subset < total:
        stride *= total // subset
    return stride


def val_windows(cfg: Config, manifest: Mapping[str, Any]) -> Any:
    """The val windows every evaluation reads: the whole split, or with train.validation_steps
    the same spread subset of it (val_stride) in every epoch, checkpoint and process."""
    import tensorflow as tf

    from pipelines.dataset import windows

    heads = cfg.train.heads
    ds = windows(
        cfg.paths.shards,
        "val",
        dict(manifest),
        batch_size=cfg.train.batch_size,
        stride=val_stride(cfg, manifest),
        groups=style_groups(cfg.train, manifest) or None,
    )
    ds = ds.map(lambda b: split_window(b, manifest, heads))
    n = int(manifest["splits"]["val"]["windows"])
    if cfg.train.validation_steps:
        ds = ds.take(cfg.train.validation_steps)
        n = min(n, cfg.train.validation_steps * cfg.train.batch_size)
    if n <= VAL_CACHE_WINDOWS:
        ds = ds.cache()
    return ds.prefetch(tf.data.AUTOTUNE)


def val_steps(cfg: Config, manifest: Mapping[str, Any]) -> int:
    """The val split's batches, told to Keras: on a dataset of unknown length Keras runs one
    step past its end, and that empty step counts as a zero in every val_<head>_loss (not in
    val_loss), which pulls them, and val_monitor with them, low by a factor batches/(batches+1).
    Left: Keras averages val_<head>_loss over batches, so a short last batch counts as a whole
    one (val_loss weighs it by its windows); a small shift, the same in every epoch."""
    batches = math.ceil(int(manifest["splits"]["val"]["windows"]) / cfg.train.batch_size)
    return min(batches, cfg.train.validation_steps or batches)


def steps_per_epoch(cfg: Config, manifest: Mapping[str, Any]) -> int:
    if cfg.train.steps_per_epoch:
        return cfg.train.steps_per_epoch
    return math.ceil(int(manifest["splits"]["train"]["windows"]) / cfg.train.batch_size)


# --------------------------------------------------------------------------- checkpoints


def work_key(cfg: Config, manifest_sha: str) -> dict[str, Any]:
    """What the checkpoints depend on: the shards (by manifest hash) and every train param but
    checkpoint_steps (how often a run is saved changes nothing it trains, so a run resumes
    after it changes)."""
    train = cfg.train.model_dump(mode="json")
    train.pop("checkpoint_steps")
    return {"manifest_sha256": manifest_sha, "train": train, "transpose": cfg.sequences.transpose}


def _save_model_file(model: Any, dest: Path, weights_only: bool = False) -> None:
    # Keras insists on the file suffix, so the temporary name keeps it.
    suffix = ".weights.h5" if weights_only else ".keras"
    tmp = dest.with_name(f".tmp-{dest.name.removesuffix(suffix)}{suffix}")
    if weights_only:
        model.save_weights(tmp)
    else:
        model.save(tmp)
    tmp.replace(dest)


def checkpoint_name(progress: Progress) -> str:
    """epoch-0003 at the end of epoch 3; epoch-0004-step-00012000 inside epoch 4 at global step
    12000. Names sort in training order ('-' sorts before '.'), which `resume` relies on."""
    if progress.epoch_steps:
        return f"epoch-{progress.epochs_done + 1:04d}-step-{progress.steps:08d}"
    return f"epoch-{progress.epochs_done:04d}"


def save_checkpoint(work: Path, model: Any, progress: Progress, improved: bool) -> None:
    """Files first, then the states that name them, then drop files no kept state names.

    The last KEEP_EPOCHS checkpoints (at epoch ends or inside epochs) are kept, each with its
    own state beside it, so a damaged newest one falls back to the one before it.
    """
    name = checkpoint_name(progress)
    checkpoint = f"{name}.keras"
    _save_model_file(model, work / checkpoint)
    progress.checkpoint = checkpoint
    if improved:
        best = f"best-{progress.epochs_done:04d}.weights.h5"
        _save_model_file(model, work / best, weights_only=True)
        progress.best_weights = best
    storage.write_json(work / f"{name}.json", progress.to_json())
    progress.save(work)
    kept = sorted(work.glob("epoch-*.json"))[-KEEP_EPOCHS:]
    keep = {STATE_FILE, progress.checkpoint, progress.best_weights}
    for path in kept:
        data = storage.read_state(path) or {}
        keep |= {path.name, data.get("checkpoint"), data.get("best_weights")}
    for path in work.iterdir():
        if path.name not in keep:
            path.unlink(missing_ok=True)


def _weights_readable(path: Path) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            f.visit(lambda name: None)  # walks the whole file: a cut one fails here
    except (OSError, ValueError, RuntimeError):
        return False
    return True


def resume(work: Path, load: Any) -> tuple[Progress, Any]:
    """The newest state whose checkpoint loads, and the model loaded from it: (state, model), or
    (a fresh state keeping the MLflow run, None) when there is none. A damaged file is named
    in a warning, then left behind: the run goes on from the last good checkpoint."""
    candidates: list[Path] = [work / STATE_FILE, *sorted(work.glob("epoch-*.json"), reverse=True)]
    run_id = None
    damaged: set[str] = set()  # state.json names the newest epoch's checkpoint too
    for path in candidates:
        data = storage.read_state(path)
        if data is None:
            continue
        try:
            progress = Progress.from_json(data)
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("%s is not a training state (%s); it is ignored", path, exc)
            continue
        run_id = run_id or progress.run_id
        if not progress.checkpoint or progress.checkpoint in damaged:
            continue  # the run had started, no epoch was done; or tried already
        try:
            model = load(work / progress.checkpoint)
        except Exception as exc:  # Keras raises many kinds for a cut or missing .keras file
            damaged.add(progress.checkpoint)
            log.warning(
                "checkpoint %s is damaged or missing (%s); falling back to the one before it",
                work / progress.checkpoint, tracking.reason(exc),
            )  # fmt: skip
            continue
        if progress.best_weights and progress.epoch_steps:
            if not _weights_readable(work / progress.best_weights):
                # inside an epoch no kept file holds the last epoch's weights: forget the best
                log.warning(
                    "best weights %s are damaged; the next epoch counts as the best so far",
                    work / progress.best_weights,
                )
                progress.best_weights, progress.best_epoch = None, 0
                progress.best_monitor, progress.wait = math.inf, 0
        elif progress.best_weights and not _weights_readable(work / progress.best_weights):
            # The best epoch's weights are lost: the best so far is the checkpoint's own epoch.
            log.warning(
                "best weights %s are damaged; epoch %d counts as the best so far",
                work / progress.best_weights, progress.epochs_done,
            )  # fmt: skip
            last = progress.history[-1]
            progress.best_weights, progress.best_epoch = None, progress.epochs_done
            # rows saved before train.monitor have no val_monitor: val_loss chose their best
            progress.best_monitor = float(last.get(MONITOR, last["val_loss"]))
            progress.wait = 0
        return progress, model
    if any(path.exists() for path in work.glob("*.keras")):
        log.warning("no usable checkpoint in %s; training starts over", work)
    return Progress(run_id=run_id), None


# --------------------------------------------------------------------------- MLflow


def git_commit(root: Path) -> str | None:
    try:
        found = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return found.stdout.strip() if found.returncode == 0 else None


def run_tags(cfg: Config, manifest: Mapping[str, Any], manifest_sha: str, placement: Placement):
    tags = {
        "source": str(manifest.get("source", cfg.download.source)),
        "manifest_sha256": manifest_sha,
        "splits_sha256": str(manifest.get("splits_sha256", "")),
        "heads": cfg.train.heads,
        "condition": cfg.train.condition,
        "styles": str(len(style_groups(cfg.train, manifest))),
        "device": placement.device,
        "strategy": placement.strategy_name,
        "replicas": str(placement.replicas),
        "mixed_precision": str(placement.mixed_precision).lower(),
        "deterministic": str(placement.device.startswith("CPU")).lower(),
        "stage": "train",
    }
    commit = git_commit(cfg.paths.root)
    if commit:
        tags["git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    return tags


def start_mlflow_run(progress: Progress, work: Path) -> str:
    """Continue the checkpoint's MLflow run if it exists, else start a new one (linked);
    returns its id. The server answered the stage's check moments ago."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if progress.run_id:
        try:
            mlflow.get_run(progress.run_id)
            return str(mlflow.start_run(run_id=progress.run_id).info.run_id)
        except MlflowException:
            log.warning("MLflow run %s is gone; starting a new run", progress.run_id)
    previous = progress.run_id
    run = mlflow.start_run(run_name=f"train-{time.strftime('%Y%m%d-%H%M%S')}")
    if previous:
        mlflow.set_tag("resumed_from_run", previous)
    progress.run_id = run.info.run_id
    progress.logged_epochs, progress.params_logged = 0, False
    progress.logged_validations = 0
    progress.save(work)
    return str(run.info.run_id)


class RunLog:
    """The run's MLflow logging while it trains. A server that stops answering costs no
    training: the first failure is reported once, training goes on, and what was not logged is
    logged from the checkpoint's history at the end, or by the next `lakhflow train`."""

    def __init__(self, uri: str, tags: dict[str, str]) -> None:
        self.uri = uri
        self.tags = tags
        self.lost: str | None = None

    def attempt(self, log_call: Any, *args: Any, **kwargs: Any) -> bool:
        if self.lost is not None:
            return False
        try:
            log_call(*args, **kwargs)
        except tracking.errors() as exc:
            self.lost = tracking.reason(exc)
            log.warning(
                "MLflow at %s stopped answering (%s); training goes on, and what it has not "
                "logged is logged when it answers again",
                self.uri, self.lost,
            )  # fmt: skip
            return False
        return True

    def start(self, cfg: Config, progress: Progress) -> None:
        """All params and the run's tags, once per run."""
        import mlflow

        if not progress.params_logged:
            logged = self.attempt(mlflow.log_params, cfg.flat()) and self.attempt(
                mlflow.set_tags, self.tags
            )
            progress.params_logged = logged

    def epochs(self, progress: Progress) -> None:
        """Each epoch's losses, accuracies, seconds and windows/s, from the first not logged."""
        import mlflow

        for row, seconds, windows in list(
            zip(progress.history, progress.seconds, progress.windows, strict=True)
        )[progress.logged_epochs :]:
            epoch = int(row["epoch"])
            numbers = {k: v for k, v in row.items() if k != "epoch"}
            numbers |= {"epoch_seconds": seconds, "windows_per_s": windows / max(seconds, 1e-9)}
            if not self.attempt(mlflow.log_metrics, numbers, step=epoch):
                return
            progress.logged_epochs = epoch

    def validations(self, progress: Progress) -> None:
        """The val figures of each checkpoint not logged yet, as checkpoint_val_* by global
        step (the per-epoch val_* metrics count in epochs)."""
        import mlflow

        for row in progress.validations[progress.logged_validations :]:
            numbers = {f"checkpoint_{k}": v for k, v in row.items() if k.startswith("val_")}
            if not self.attempt(mlflow.log_metrics, numbers, step=int(row["step"])):
                return
            progress.logged_validations += 1


def register(cfg: Config, model_dir: Path, run_id: str) -> dict[str, Any]:
    """Log the model in `model_dir` into the active run, register it as a new version of
    `train.model_name`, point the alias `candidate` at it and tag it with its run and data."""
    name = cfg.train.model_name
    manifest = storage.read_json(model_dir / MANIFEST_FILE)
    tags = {
        "run_id": run_id,
        "source": str(manifest.get("source", "")),
        "splits_sha256": str(manifest.get("splits_sha256", "")),
        "manifest_sha256": storage.file_digest(cfg.paths.shards_manifest, "sha256"),
        "heads": cfg.train.heads,
    }
    version = registry.register_candidate(model_dir, name, tags)
    return {
        "run_id": run_id,
        "model_name": name,
        "model_version": version,
        "model_uri": f"models:/{name}/{version}",
    }


def publish(
    cfg: Config, runlog: RunLog, progress: Progress, work: Path, metrics: dict[str, Any]
) -> dict[str, Any]:
    """Log what training could not log, the best figures and data/model/'s files, register the
    model, and write data/model/run.json. A server that does not answer ends the stage with one
    line; the training stays in the work folder, so the next run only logs and registers."""
    import mlflow

    model_dir = cfg.paths.model
    runlog.lost = None  # the server may answer again by now
    try:
        runlog.start(cfg, progress)
        runlog.epochs(progress)
        runlog.validations(progress)
        if runlog.lost is not None:
            raise tracking.unreachable(runlog.uri, runlog.lost)
        mlflow.log_metrics(
            {f"best_{k}": v for k, v in metrics["best"].items()}
            | {"best_epoch": progress.best_epoch}
        )
        for name in ("loss_curves.png", "summary.txt", "history.csv", MANIFEST_FILE):
            mlflow.log_artifact(str(model_dir / name))
        info = register(cfg, model_dir, str(progress.run_id))
    except tracking.errors(LakhflowError) as exc:
        progress.save(work)
        why = runlog.lost or tracking.reason(exc)
        raise LakhflowError(
            f"trained and wrote {model_dir} and {cfg.paths.train_metrics}, but MLflow "
            f"at {runlog.uri} did not answer ({why}), so the model is not registered; once it "
            "answers, run `lakhflow train` (or `dvc repro`) again: it finds the finished "
            f"training in {work} and only logs and registers it"
        ) from None
    storage.write_json(cfg.paths.model_run, info)
    return info


# --------------------------------------------------------------------------- outputs


def history_columns(history: list[dict[str, float]]) -> list[str]:
    """epoch, loss, val_loss, val_monitor, then per head its loss and accuracy, train before
    val."""
    keys = {k for row in history for k in row}
    heads = [h for h in HEADS if f"{h}_loss" in keys]
    order = ["epoch", "loss", "val_loss", MONITOR]
    order += [f"{p}{h}_{m}" for h in heads for m in ("loss", "accuracy") for p in ("", "val_")]
    return [k for k in order if k in keys] + sorted(keys - set(order))


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    columns = history_columns(history)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in history:
            writer.writerow({"epoch": int(row["epoch"]), **{k: row.get(k) for k in columns[1:]}})


def plot_losses(path: Path, history: list[dict[str, float]], heads: tuple[str, ...]) -> None:
    """Train vs val loss per epoch: the total and one panel per head."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [int(row["epoch"]) for row in history]
    panels = ("", *heads)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.0), squeeze=False)
    for ax, head in zip(axes[0], panels, strict=True):
        key = f"{head}_loss" if head else "loss"
        ax.plot(epochs, [row.get(key, np.nan) for row in history], "o-", label="train")
        ax.plot(epochs, [row.get(f"val_{key}", np.nan) for row in history], "s--", label="val")
        ax.set_title(head or "total (weighted)")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("loss")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train_metrics(
    progress: Progress, heads: tuple[str, ...], placement: Placement, monitor: Mapping[str, float]
) -> dict[str, Any]:
    """train.json: `monitor` names the figure (val_monitor) that chose `best_epoch`."""
    last = progress.history[-1]
    best = next(r for r in progress.history if int(r["epoch"]) == progress.best_epoch)
    seconds = float(sum(progress.seconds))
    windows = int(sum(progress.windows))
    return {
        "epochs": len(progress.history),
        "best_epoch": progress.best_epoch,
        "monitor": monitor_formula(monitor),
        "stopped_early": progress.stopped,
        "seconds": round(seconds, 2),
        "windows_per_s": round(windows / seconds, 1) if seconds > 0 else None,
        "device": placement.device,
        "strategy": placement.strategy_name,
        "mixed_precision": placement.mixed_precision,
        "final": {k: last[k] for k in ["loss", "val_loss", MONITOR, *_loss_keys(heads)]},
        "best": {k: best[k] for k in ["val_loss", MONITOR, *(f"val_{h}_loss" for h in heads)]},
    }


def _loss_keys(heads: tuple[str, ...]) -> list[str]:
    return [f"{p}{h}_loss" for h in heads for p in ("", "val_")]


class _BatchProgress:
    """A tqdm bar over one epoch's batches, on stderr (shown only on a terminal); `initial`
    batches were trained before a resume."""

    def __init__(self, total: int, desc: str, initial: int = 0) -> None:
        import keras
        from tqdm import tqdm

        bar = tqdm(total=total, initial=initial, desc=desc, unit="batch", disable=None, leave=False)
        self.bar = bar
        self.batches = 0  # trained in this process

        class Callback(keras.callbacks.Callback):
            def on_train_batch_end(cb, batch: int, logs: dict[str, Any] | None = None) -> None:
                self.batches += 1
                bar.update(1)
                if logs and self.batches % 20 == 0:
                    bar.set_postfix(loss=f"{float(logs.get('loss', np.nan)):.3f}")

        self.callback = Callback()

    def close(self) -> None:
        self.bar.close()


def validate(model: Any, val: Any, steps: int, monitor: Mapping[str, float]) -> dict[str, float]:
    """The val figures of the model as it is, inside an epoch: evaluate() resets the metrics,
    so the epoch's running train sums are put back after it, and its train row stays whole."""
    running = [v.numpy() for v in model.metrics_variables]
    scores = model.evaluate(val, steps=steps, return_dict=True, verbose=0)
    for variable, value in zip(model.metrics_variables, running, strict=True):
        variable.assign(value)
    row = {f"val_{k}": float(v) for k, v in scores.items()}
    row[MONITOR] = monitored_loss(row, monitor)
    return row


def metric_states(model: Any) -> list[list[Any]]:
    return [[v.path, np.asarray(v.numpy()).tolist()] for v in model.metrics_variables]


def add_metric_states(model: Any, states: list[list[Any]]) -> bool:
    """Add an epoch's running train-metric sums from a checkpoint to the metrics; False, with
    nothing changed, when they are not this model's.

    Called after the resumed epoch's first batch: fit() zeroes the metrics at the epoch's start
    and builds a loaded model's metrics only in its first step. Every metric here is a Mean (a
    total and a count) and float addition commutes, so 0 + x, then + the checkpoint's sums, is
    bit for bit what an unbroken run holds after that batch.
    """
    variables = model.metrics_variables
    if [path for path, _ in states] != [v.path for v in variables]:
        return False
    for variable, (_, value) in zip(variables, states, strict=True):
        variable.assign_add(np.asarray(value, dtype=variable.dtype))
    return True


@dataclass
class EpochRun:
    """What one epoch's fit() needs to checkpoint inside it."""

    epoch: int
    batches: int  # the epoch's batches in all
    done: int  # batches trained before this process (a checkpoint inside the epoch)
    seconds_before: float  # their seconds
    steps_before: int  # global steps before this process's first batch of the epoch
    started: float  # perf_counter() at this process's start of the epoch


class _Checkpoints:
    """The callback that saves a checkpoint every `checkpoint_steps` global steps inside an
    epoch (the epoch's last batch is left to the epoch's own checkpoint), with the val figures
    of that moment; and that puts a resumed epoch's running train-metric sums back."""

    def __init__(
        self,
        cfg: Config,
        work: Path,
        progress: Progress,
        runlog: RunLog,
        val: tuple[Any, int],  # the val windows and their batches
        at: EpochRun,
    ) -> None:
        import keras

        every = cfg.train.checkpoint_steps
        self.trained = 0

        def save(model: Any) -> None:
            started = time.perf_counter()
            row = validate(model, *val, cfg.train.monitor)
            validated = time.perf_counter()
            progress.steps = at.steps_before + self.trained
            progress.epoch_steps = at.done + self.trained
            progress.epoch_seconds = at.seconds_before + validated - at.started
            progress.dropout_states = dropout_states(model)
            progress.metric_states = metric_states(model)
            progress.validations.append(
                {"step": float(progress.steps), "epoch": float(at.epoch)} | row
            )
            runlog.epochs(progress)  # before the state is saved, so it knows they are logged
            runlog.validations(progress)
            logged = time.perf_counter()
            save_checkpoint(work, model, progress, improved=False)
            saved = time.perf_counter()
            log.info(
                "checkpoint at step %d (epoch %d, batch %d of %d): saved in %.2f s, "
                "validated in %.2f s: val_loss %.4f, %s %.4f",
                progress.steps, at.epoch, progress.epoch_steps, at.batches, saved - logged,
                validated - started, row["val_loss"], MONITOR, row[MONITOR],
            )  # fmt: skip

        class Callback(keras.callbacks.Callback):
            def on_train_batch_end(cb, batch: int, logs: dict[str, Any] | None = None) -> None:
                self.trained += 1
                if self.trained == 1 and at.done:
                    resumed_sums(cb.model)
                step = at.steps_before + self.trained
                if not every or step % every or at.done + self.trained >= at.batches:
                    return
                loss = float((logs or {}).get("loss", 0.0))
                if cb.model.stop_training or not math.isfinite(loss):
                    return  # a diverged model is never checkpointed
                save(cb.model)

        def resumed_sums(model: Any) -> None:
            if not add_metric_states(model, progress.metric_states):
                log.warning(
                    "epoch %d's train figures average only the batches after the resume "
                    "(the checkpoint holds no running sums for this model's metrics)",
                    at.epoch,
                )

        self.callback = Callback()


# --------------------------------------------------------------------------- the stage


def run(cfg: Config) -> dict[str, Any]:
    import keras
    import mlflow
    import tensorflow as tf

    check_monitor(cfg)
    manifest, manifest_sha = read_shards_manifest(cfg)
    uri = tracking.check(cfg.paths)  # an unreachable server fails now, before any training
    work = storage.work_dir(cfg.paths.work, "train", work_key(cfg, manifest_sha))

    keras.backend.clear_session()
    keras.utils.set_random_seed(cfg.train.seed)
    placement = choose_placement(cfg.train.mixed_precision)
    if placement.device.startswith("CPU"):
        # Same params, same val loss. Not on GPUs: some of their kernels have no deterministic
        # version, and TensorFlow raises rather than run them once determinism is on.
        tf.config.experimental.enable_op_determinism()
    with placement.strategy.scope():
        progress, model = resume(work, load_model)
        if model is None:
            model = build_model(cfg.train, manifest)
        elif progress.epoch_steps:
            log.info(
                "resuming training in epoch %d after batch %d (step %d; %s)",
                progress.epochs_done + 1, progress.epoch_steps, progress.steps, work,
            )  # fmt: skip
        else:
            log.info("resuming training after epoch %d (%s)", progress.epochs_done, work)
    heads = head_names(cfg.train.heads)
    steps = steps_per_epoch(cfg, manifest)

    tracking.setup(cfg.paths)
    runlog = RunLog(uri, run_tags(cfg, manifest, manifest_sha, placement))
    try:
        start_mlflow_run(progress, work)
    except tracking.errors() as exc:
        raise tracking.unreachable(uri, tracking.reason(exc)) from None
    try:
        runlog.start(cfg, progress)
        val, val_batches = val_windows(cfg, manifest), val_steps(cfg, manifest)
        for epoch in range(progress.epochs_done + 1, cfg.train.epochs + 1):
            if progress.stopped:
                break
            at = EpochRun(
                epoch=epoch,
                batches=steps,
                done=progress.epoch_steps,
                seconds_before=progress.epoch_seconds,
                steps_before=progress.steps,
                started=time.perf_counter(),
            )
            bar = _BatchProgress(steps, f"epoch {epoch}/{cfg.train.epochs}", initial=at.done)
            if at.done:
                restore_dropout_states(model, progress.dropout_states)
            else:
                reseed_dropout(model, cfg.train.seed, epoch)
            checkpoints = _Checkpoints(cfg, work, progress, runlog, (val, val_batches), at)
            with warnings.catch_warnings():
                # Keras says so after every validation pass over a dataset of unknown length.
                warnings.filterwarnings("ignore", message="Your input ran out of data")
                fit = model.fit(
                    train_windows(cfg, manifest, epoch, skip=at.done),
                    validation_data=val,
                    initial_epoch=epoch - 1,
                    epochs=epoch,
                    steps_per_epoch=(cfg.train.steps_per_epoch - at.done)
                    if cfg.train.steps_per_epoch
                    else None,
                    validation_steps=val_batches,
                    callbacks=[
                        bar.callback,
                        keras.callbacks.TerminateOnNaN(),
                        checkpoints.callback,
                    ],
                    shuffle=False,  # the reader shuffles, by a seed per epoch
                    verbose=0,
                )
            seconds = at.seconds_before + time.perf_counter() - at.started
            bar.close()
            row = {"epoch": float(epoch)} | {k: float(v[-1]) for k, v in fit.history.items()}
            row[MONITOR] = monitored_loss(row, cfg.train.monitor)
            check_finite(cfg, epoch, row)
            batches = at.done + bar.batches
            windows = min(batches * cfg.train.batch_size, _epoch_windows(cfg, manifest))
            progress.history.append(row)
            progress.seconds.append(seconds)
            progress.windows.append(windows)
            progress.epochs_done = epoch
            progress.steps = at.steps_before + bar.batches
            progress.epoch_steps, progress.epoch_seconds = 0, 0.0
            progress.dropout_states, progress.metric_states = {}, []
            progress.validations.append(
                {"step": float(progress.steps), "epoch": float(epoch)}
                | {k: v for k, v in row.items() if k.startswith("val_")}
            )
            improved = progress.update_early_stopping(epoch, row[MONITOR], cfg.train.patience)
            runlog.epochs(progress)
            runlog.validations(progress)
            save_checkpoint(work, model, progress, improved)
            log.info(
                "epoch %d: loss %.4f, val_loss %.4f, %s %.4f (%.1f s)",
                epoch,
                row["loss"],
                row["val_loss"],
                MONITOR,
                row[MONITOR],
                seconds,
            )

        if progress.best_weights and progress.best_epoch != progress.epochs_done:
            model.load_weights(work / progress.best_weights)
        metrics = train_metrics(progress, heads, placement, cfg.train.monitor)
        _write_outputs(cfg, model, progress, heads, metrics)
        info = publish(cfg, runlog, progress, work, metrics)
    except BaseException:
        with contextlib.suppress(*tracking.errors()):
            mlflow.end_run("FAILED")
        raise
    mlflow.end_run()
    shutil.rmtree(work, ignore_errors=True)  # finished: the next run with these params starts anew
    log.info(
        "Trained %d epochs on %s (best epoch %d, %s %.4f) in %.0f s at %s windows/s. "
        "Wrote %s (model.keras, history.csv, manifest.json, run.json) and %s. MLflow run %s; "
        "registered %s version %s with alias %s.",
        metrics["epochs"],
        placement.device,
        progress.best_epoch,
        metrics["monitor"],
        progress.best_monitor,
        metrics["seconds"],
        metrics["windows_per_s"],
        cfg.paths.model,
        cfg.paths.train_metrics,
        info["run_id"],
        info["model_name"],
        info["model_version"],
        registry.CANDIDATE,
    )
    return metrics


def check_finite(cfg: Config, epoch: int, row: Mapping[str, float]) -> None:
    """A loss that is NaN or infinite ends the stage: such a model is never checkpointed or
    registered, and the run is marked failed in MLflow."""
    bad = sorted(k for k, v in row.items() if not math.isfinite(v))
    if bad:
        raise LakhflowError(
            f"training diverged in epoch {epoch}: {bad[0]} is {row[bad[0]]}; nothing was "
            f"registered. Lower train.learning_rate (now {cfg.train.learning_rate:g}) or "
            f"train.clipnorm (now {cfg.train.clipnorm:g})"
        )


def _epoch_windows(cfg: Config, manifest: Mapping[str, Any]) -> int:
    if cfg.train.steps_per_epoch:
        return cfg.train.steps_per_epoch * cfg.train.batch_size
    return int(manifest["splits"]["train"]["windows"])


def model_manifest(cfg: Config) -> dict[str, Any]:
    """The shards' manifest (bins, parts, splits: what the model was built on) and its style:
    the condition, the style vocabulary and each group's train files."""
    manifest = storage.read_json(cfg.paths.shards_manifest)
    groups = style_groups(cfg.train, manifest)
    files = {g: int(n["train"]) for g, n in (manifest.get("groups") or {}).items()}
    pooled = sum(n for g, n in files.items() if g == OTHER_STYLE or g not in groups)
    manifest["style"] = {
        "condition": cfg.train.condition if groups else "none",
        "min_group_files": cfg.train.min_group_files,
        "groups": [
            {"name": g, "train_files": pooled if g == OTHER_STYLE else files.get(g, 0)}
            for g in groups
        ],
    }
    return manifest


def _write_outputs(
    cfg: Config,
    model: Any,
    progress: Progress,
    heads: tuple[str, ...],
    metrics: dict[str, Any],
) -> None:
    """data/model/ as one atomic folder (run.json comes once it is registered), and train.json."""
    with storage.atomic_dir(cfg.paths.model, "train") as tmp:
        model.save(tmp / MODEL_FILE)
        storage.write_json(tmp / MANIFEST_FILE, model_manifest(cfg))
        write_history(tmp / "history.csv", progress.history)
        (tmp / "summary.txt").write_text(summary_text(model))
        plot_losses(tmp / "loss_curves.png", progress.history, heads)
    storage.write_json(cfg.paths.train_metrics, metrics)
