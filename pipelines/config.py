"""The one typed view of `params.yaml` and of every path the stages use.

`load(root, overrides)` reads params.yaml, applies `key=value` overrides written as for
`dvc exp run -S`, and validates everything; a bad key or value raises `ParamsError` with
one line that names the key and what is allowed. Every float must be finite, and values with
a physical range (rates, timeouts, sizes) have a ceiling, so a typo such as 1e30 for 1e-3 is
refused here rather than trained on.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from pipelines.errors import ParamsError
from pipelines.schema import HEADS

PARAMS_FILE = "params.yaml"
# A trained model's folder (data/model/, and the pyfunc's artifacts): the Keras model and the
# shards' manifest it was trained on.
MODEL_FILE = "model.keras"
MANIFEST_FILE = "manifest.json"
# How the parse stage runs, not what it writes: a run takes these from the environment (or -S),
# so nothing rewrites params.yaml for one run, and DVC, which hashes params, never sees them.
PARSE_SCHEDULER_ENV = "LAKHFLOW_PARSE_SCHEDULER"  # a Dask scheduler: parse.executor dask there
SCHEDULER_ENV = "LAKHFLOW_SCHEDULER"  # a Dask scheduler for the parse and sequences stages
PARSE_WORKERS_ENV = "LAKHFLOW_PARSE_WORKERS"
# MLflow forbids '/' and ':' in registered model names; '@' and '#', '?', '%' or spaces would
# also break the models:/NAME@ALIAS URIs that name the champion. 256: the registry's column.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
MODEL_NAME_MAX = 256
TEMPERATURE_MAX = 100.0
# pydantic names a union's branch in an error's location (`temperature.dict[str,float]`):
# not a params key, so left out of the key an error names
UNION_BRANCH = re.compile(r"(int|float|str|bool|list|dict)(\[.*\])?")


class Section(BaseModel):
    """A params section: unknown keys are errors, values are checked on assignment, and no
    float may be inf or nan (YAML's .inf and .nan pass every `gt`/`le` bound check otherwise, or
    fail it with a misleading message)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


LakhSource = Literal["lmd_full", "lmd_matched", "lmd_aligned", "clean_midi"]
Source = Literal[
    "bach", "music21", "lmd_full", "lmd_matched", "lmd_aligned", "clean_midi", "url", "path"
]
# a top folder of music21's corpus: bach, essenFolksong, nottingham-dataset, johnson_j_r
COMPOSER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


class Download(Section):
    source: Source = "bach"
    limit: int = Field(
        0, ge=0, description="take the first N files (0: all); for music21, N of each composer"
    )
    url: str | None = None
    md5: str | None = Field(None, pattern=r"^[0-9a-fA-F]{32}$")
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    path: str | None = None
    # MIDI files and scores are kilobytes to a few megabytes; the cap refuses a decompression
    # bomb by name, and at 10 GB it is no cap at all already.
    max_member_mb: float = Field(64.0, gt=0, le=10_000)
    max_mb: float = Field(
        4096.0, gt=0, allow_inf_nan=False, description="cap of a download of unknown size (MB)"
    )
    retries: int = Field(5, ge=0, le=50)
    # seconds without a byte from the server (connect and read): an hour of silence is a dead
    # connection, which a retry serves better
    timeout_s: float = Field(30.0, gt=0, le=3600)
    workers: int = Field(0, ge=0, description="processes converting scores to MIDI (0: cores)")
    # for source=music21: top folders of music21's corpus, each the group (style) of its works;
    # which names exist is music21's to say, so the download stage checks them
    composers: list[str] = Field(default_factory=lambda: ["bach"], min_length=1, max_length=100)

    @field_validator("composers")
    @classmethod
    def _composers(cls, v: list[str]) -> list[str]:
        for name in v:
            if not COMPOSER.fullmatch(name):
                raise ValueError(f"{name!r} is not a folder name of music21's corpus")
        if len(set(v)) < len(v):
            raise ValueError("names a composer twice")
        return v

    @field_validator("md5", "sha256", mode="before")
    @classmethod
    def _hex_text(cls, v: Any) -> Any:
        if isinstance(v, int | float) and not isinstance(v, bool):
            raise ValueError("YAML read this checksum as a number: write it in quotes")
        return v

    @model_validator(mode="after")
    def _needs(self) -> Download:
        if self.source == "url" and not self.url:
            raise ValueError("download.url is required when download.source is 'url'")
        if self.source == "path" and not self.path:
            raise ValueError("download.path is required when download.source is 'path'")
        return self


class Parse(Section):
    parser: Literal["symusic", "pretty_midi"] = "symusic"
    workers: int = Field(0, ge=0, description="worker processes (0: cores)")
    part_files: int = Field(64, ge=1, le=100_000, description="files per batch and Parquet part")
    # per file: a MIDI file parses in milliseconds, so an hour is a hang, not a slow file
    timeout_s: float = Field(30.0, gt=0, le=3600)
    # a worker's address-space limit, in MiB (1 TiB: above any machine's memory)
    max_memory_mb: int = Field(2048, ge=64, le=1 << 20)
    executor: Literal["local", "dask"] = "local"
    scheduler_address: str | None = None


class Sequences(Section):
    # track: one stream per track (the TensorFlow tutorial's); score: a file's selected tracks
    # merged into one time-ordered stream, each note with its part: music in parts (the default).
    mode: Literal["score", "track"] = "score"
    # a file's tracks of one instrument class are ranked by median pitch (1 = highest); ranks
    # past this share the last part. 16 covers any real ensemble's voices of one class.
    max_part_rank: int = Field(4, ge=1, le=16)
    programs: list[int | str] = Field(default_factory=list)
    include_drums: bool = False
    instrument: Literal["all", "most_common"] = "all"
    min_notes: int = Field(32, ge=2)
    time_unit: Literal["seconds", "beats"] = "beats"
    # Ceilings of the step and duration heads, in beats or seconds (time_unit); the bins spread
    # over 0..max, so 1e30 would leave every note in the first bin. A thousand beats or seconds
    # is longer than any rest or held note in music.
    max_step: float = Field(4.0, gt=0, le=1000)
    max_duration: float = Field(8.0, gt=0, le=1000)
    seq_length: int = Field(32, ge=2)
    stride: int = Field(1, ge=1)
    chunk_notes: int = Field(512, ge=3)
    split: dict[str, float] = Field(default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})
    split_by: Literal["tune", "group", "file"] = "tune"
    # Files whose pitched tracks share a run of this many notes (in any key) share a split key,
    # whatever split_by says; 0 turns the link off. Shorter than 8 notes is a motif any two
    # pieces may share; past 256 a re-saved duplicate with a few notes edited slips through.
    shared_run: int = Field(24, ge=0, le=256)
    seed: int = 42
    # a ceiling far above any useful shard (the default is 64 MiB): it refuses a typo such as
    # 1e12, which the byte count int(shard_mb * 2**20) would otherwise take
    shard_mb: float = Field(64.0, gt=0, le=65_536)
    transpose: int = Field(3, ge=0, le=24)
    bins: int = Field(16, ge=2, le=256)
    velocity_bins: int = Field(8, ge=1, le=127)
    bin_method: Literal["quantile", "log"] = "quantile"
    # how it runs, not what it writes (DVC does not rerun for these): as parse's
    workers: int = Field(0, ge=0, description="worker processes (0: cores)")
    executor: Literal["local", "dask"] = "local"
    scheduler_address: str | None = None

    @field_validator("split")
    @classmethod
    def _split(cls, v: dict[str, float]) -> dict[str, float]:
        if set(v) != {"train", "val", "test"}:
            raise ValueError("needs exactly the keys train, val, test")
        if any(x < 0 for x in v.values()) or abs(sum(v.values()) - 1.0) > 1e-6:
            raise ValueError(f"ratios must be >= 0 and sum to 1 (they sum to {sum(v.values()):g})")
        return v

    @field_validator("programs")
    @classmethod
    def _programs(cls, v: list[int | str]) -> list[int | str]:
        from pipelines.instruments import select_programs

        try:
            select_programs(v)
        except ParamsError as exc:
            raise ValueError(str(exc)) from None
        return v

    @field_validator("shared_run")
    @classmethod
    def _shared_run(cls, v: int) -> int:
        if 0 < v < 8:
            raise ValueError("must be 0 (no shared-run link) or at least 8 notes")
        return v

    @model_validator(mode="after")
    def _chunk(self) -> Sequences:
        if self.chunk_notes <= self.seq_length:
            raise ValueError(
                f"sequences.chunk_notes ({self.chunk_notes}) must exceed "
                f"sequences.seq_length ({self.seq_length})"
            )
        return self


def _known_heads(weights: Mapping[str, float]) -> None:
    unknown = set(weights) - set(HEADS)
    if unknown:
        raise ValueError(f"unknown heads {sorted(unknown)}; heads are {', '.join(HEADS)}")


class Train(Section):
    heads: Literal["categorical", "regression"] = "categorical"
    layers: int = Field(1, ge=1, le=8)
    units: int = Field(128, ge=1)
    embedding_dim: int = Field(32, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    # Adam moves each weight by about learning_rate per step, and the weights start within +-1:
    # above 1 every step overshoots and the loss diverges (1e30 trains a loss of 1e31).
    learning_rate: float = Field(0.002, gt=0, le=1)
    # the largest gradient norm let through, and it is clipped off anyway well before 1000: a
    # larger value only comes from a typo (1e30 for 1.0), as nothing it would change is left
    clipnorm: float = Field(1.0, gt=0, le=1000)
    batch_size: int = Field(64, ge=1)
    epochs: int = Field(5, ge=1)
    patience: int = Field(2, ge=0)
    steps_per_epoch: int = Field(0, ge=0, description="0: the whole train split")
    # A checkpoint (model, optimizer, progress) every so many optimizer steps inside an epoch,
    # besides the one at each epoch's end; a killed run resumes from it mid-epoch. 0: at epoch
    # ends only (the demo's epochs take minutes; a Lakh epoch takes hours on one GPU).
    checkpoint_steps: int = Field(0, ge=0)
    # batches of the val split per evaluation (0: all of it); fewer give a fixed subset spread
    # over the split, read in every epoch and at every checkpoint
    validation_steps: int = Field(0, ge=0, description="0: the whole val split")
    loss_weights: dict[str, float] = Field(
        default_factory=lambda: {
            "pitch": 1.0,
            "step": 1.0,
            "duration": 1.0,
            "velocity": 0.5,
            "part": 1.0,
        }
    )
    # What early stopping and the best epoch watch: weights over the heads' val_<head>_loss, as
    # Keras' loss_weights are over the losses. Pitch alone by default: the summed val_loss once
    # stopped a run on a rising duration loss while pitch was still improving; loss_weights'
    # values here give Keras' val_loss back. Only the ratios count; a weight above 1000 is a
    # typo, and a huge one would overflow the sum to inf (then no epoch would ever be better).
    monitor: dict[str, Annotated[float, Field(ge=0, le=1000)]] = Field(
        default_factory=lambda: {"pitch": 1.0}
    )
    # Style: `group` feeds each piece's folder group (a composer, an artist...) to every step as
    # a learned embedding; groups with fewer train files than min_group_files are pooled as other
    condition: Literal["none", "group"] = "none"
    min_group_files: int = Field(8, ge=1)
    seed: int = 42
    mixed_precision: Literal["auto", "on", "off"] = "auto"
    model_name: str = Field("lakhflow-lstm", min_length=1, max_length=MODEL_NAME_MAX)

    @field_validator("model_name")
    @classmethod
    def _model_name(cls, v: str) -> str:
        if not MODEL_NAME.fullmatch(v):
            raise ValueError(
                "a registered model's name is letters, digits, '_', '.' and '-', starting with "
                "a letter or digit (it is written into models:/NAME@ALIAS URIs)"
            )
        return v

    @field_validator("loss_weights")
    @classmethod
    def _loss_weights(cls, v: dict[str, float]) -> dict[str, float]:
        _known_heads(v)
        if any(w < 0 for w in v.values()):
            raise ValueError("loss weights must be >= 0")
        return v

    @field_validator("monitor", mode="before")
    @classmethod
    def _monitor_by_name(cls, v: Any) -> Any:
        if isinstance(v, str):  # Keras' EarlyStopping(monitor="val_loss") habit
            raise ValueError(
                "weights per head over val_<head>_loss, such as {pitch: 1} for val_pitch_loss, "
                "or train.loss_weights' values for Keras' val_loss"
            )
        return v

    @field_validator("monitor")
    @classmethod
    def _monitor(cls, v: dict[str, float]) -> dict[str, float]:
        _known_heads(v)
        if not any(w > 0 for w in v.values()):
            raise ValueError("at least one monitored head needs a weight > 0, such as {pitch: 1}")
        return v


class Generate(Section):
    model_uri: str | None = Field(None, description="None: data/model/; or models:/NAME@ALIAS")
    output: str | None = Field(
        None, description="None: data/generated/; scheduled batches: batches/<date-time>/"
    )
    count: int = Field(32, ge=1)
    # The sampler adds one note per step until it has enough: 100 000 notes (hours of music) or
    # an hour of new music is already more than a listener takes from one file.
    notes: int = Field(128, ge=1, le=100_000)
    seconds: float | None = Field(None, gt=0, le=3600)
    temperature: float | dict[str, float] = 1.0
    top_k: int = Field(0, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    greedy: bool = False
    # CTRL's penalty divides a repeated pitch's logit: at 100 that pitch is never drawn already.
    # Off by default: measured against the evaluation's controls (README), 1.2 pushed a voice
    # onto chromatic pitches and below the shuffled control; 1.0 scores like real music.
    repetition_penalty: float = Field(1.0, ge=1.0, le=100)
    repetition_window: int = Field(16, ge=0)
    seed: int = 0
    primer_midi: str | None = None
    primer_pitches: str | None = None
    # 0: no primer, the model starts from its own first note (with primer_midi/pitches: all)
    primer_notes: int = Field(32, ge=0)
    # a style-conditioned model's group (composer, artist...); null: each piece its primer's
    # group (test-split primers), else the model's groups in turn
    group: str | None = None
    # None: each part plays the program most of its training notes had (the model's manifest);
    # a General MIDI number or name (violin, 40, ...) puts every part on it
    program: int | str | None = None
    # part ("piano-4") or family ("piano", "strings", "drums") -> program: re-voices those parts
    # over `program` (a part's own entry over its family's); {piano: string_ensemble_1} puts a
    # chorale on strings
    programs: dict[str, int | str] = Field(default_factory=dict, max_length=128)
    # the tempi MIDI files hold stay far below 1000 bpm (sequences' tempo histogram ends there)
    tempo_bpm: float | None = Field(None, gt=0, le=1000)
    name: str = Field("piece", pattern=r"^[A-Za-z0-9_.-]+$")
    wav: bool = True

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v: float | dict[str, float]) -> float | dict[str, float]:
        values = v.values() if isinstance(v, dict) else [v]
        if any(t <= 0 for t in values):
            raise ValueError("temperature must be > 0")
        # logits are divided by it: at 100 a spread of tens between logits is under one, near
        # uniform sampling already, so more is a typo
        if any(t > TEMPERATURE_MAX for t in values):
            raise ValueError(f"temperature must be <= {TEMPERATURE_MAX:g}")
        if isinstance(v, dict) and not set(v) <= set(HEADS):
            raise ValueError(f"per-head temperature keys are {', '.join(HEADS)}")
        return v

    @field_validator("program")
    @classmethod
    def _program(cls, v: int | str | None) -> int | str | None:
        from pipelines.instruments import program_number

        if v is not None:
            try:
                program_number(v)
            except ParamsError as exc:
                raise ValueError(str(exc)) from None
        return v

    @field_validator("programs")
    @classmethod
    def _programs(cls, v: dict[str, int | str]) -> dict[str, int | str]:
        from pipelines.instruments import part_key, program_number

        named: dict[tuple[int, int | None], str] = {}
        for key, value in v.items():
            try:
                part = part_key(key)
            except ParamsError as exc:
                raise ValueError(str(exc)) from None
            try:
                program_number(value)
            except ParamsError as exc:
                raise ValueError(f"{key}: {exc}") from None
            if part in named:  # "Piano" and "piano" read alike: which one wins is a guess
                raise ValueError(f"{named[part]!r} and {key!r} name the same parts")
            named[part] = key
        return v


class Evaluate(Section):
    seed: int = 0
    kde_points: int = Field(256, ge=16)
    ngrams: list[int] = Field(default_factory=lambda: [2, 4, 8], min_length=1)
    copy_threshold: int = Field(16, ge=2)
    max_test_windows: int = Field(20_000, ge=1)
    # the train (and val) chunks the bigram baselines and the parts' registers are counted on:
    # the first in shard order, a fixed random sample, so evaluation time does not grow with
    # the corpus (20,000 chunks: some ten million notes)
    max_train_chunks: int = Field(20_000, ge=1)
    # every set compared (the model's pieces, the reference, the real and shuffled controls)
    # holds this many pieces: Yang & Lerch's figures move with the set size
    set_size: int = Field(32, ge=2, le=4096)
    draws: int = Field(10, ge=1, le=1000)  # reference draws averaged over (mean and spread)

    @field_validator("ngrams")
    @classmethod
    def _ngrams(cls, v: list[int]) -> list[int]:
        # Sizes are note counts, so at least 1. The report keys its rows by size: a repeated
        # size would be computed twice and shown once, which is a typo rather than a wish.
        if any(n < 1 for n in v):
            raise ValueError("n-gram sizes are numbers of notes, each >= 1")
        if len(set(v)) != len(v):
            raise ValueError("n-gram sizes must be distinct")
        return v


class Promote(Section):
    min_improvement: float = Field(0.0, ge=0)
    allow_split_mismatch: bool = False


class Flows(Section):
    pipeline_cron: str = "0 2 * * *"
    generate_cron: str = "0 * * * *"
    # a week: Lakh end to end on a CPU takes hours, so a stage still running after a week hangs
    stage_timeout_s: float = Field(3600.0, gt=0, le=7 * 86400)
    download_retries: int = Field(3, ge=0)
    # a day between retries is already longer than any outage worth waiting for in one run
    retry_delay_s: float = Field(10.0, ge=0, le=86400)

    @field_validator("pipeline_cron", "generate_cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        check_cron(v)
        return v


def check_cron(text: str) -> None:
    """Raise ValueError unless Prefect's CronSchedule takes `text`: its own rule, applied with
    its own parser (prefect._internal.schemas.validators.validate_cron_string)."""
    if not _prefect_croniter().croniter.is_valid(text):
        raise ValueError(
            "expected a cron expression such as '0 2 * * *' (minute hour day month weekday)"
        )
    if any(field.casefold() in ("r", "h") for field in text.split()):
        raise ValueError("random (R) and hashed (H) cron fields are not supported by Prefect")


@functools.cache
def _prefect_croniter() -> Any:
    """Prefect's vendored croniter module, loaded from its file without importing the prefect
    package: that import takes 1.7 s, which every stage would pay to check two strings."""
    spec = importlib.util.find_spec("prefect")
    if spec is None or spec.origin is None:
        raise ParamsError("prefect is not installed: it is needed to check the flows' cron")
    path = Path(spec.origin).parent / "_vendor" / "croniter" / "croniter.py"
    croniter_spec = importlib.util.spec_from_file_location("lakhflow_prefect_croniter", path)
    assert croniter_spec is not None and croniter_spec.loader is not None
    module = importlib.util.module_from_spec(croniter_spec)
    croniter_spec.loader.exec_module(module)
    return module


class Params(Section):
    download: Download = Field(default_factory=Download)
    parse: Parse = Field(default_factory=Parse)
    sequences: Sequences = Field(default_factory=Sequences)
    train: Train = Field(default_factory=Train)
    generate: Generate = Field(default_factory=Generate)
    evaluate: Evaluate = Field(default_factory=Evaluate)
    promote: Promote = Field(default_factory=Promote)
    flows: Flows = Field(default_factory=Flows)


@dataclass(frozen=True)
class Paths:
    """Every path a stage reads or writes, relative to the project root."""

    root: Path

    @property
    def params(self) -> Path:
        return self.root / PARAMS_FILE

    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def notes(self) -> Path:
        return self.root / "data" / "notes"

    @property
    def shards(self) -> Path:
        return self.root / "data" / "shards"

    @property
    def model(self) -> Path:
        return self.root / "data" / "model"

    @property
    def generated(self) -> Path:
        return self.root / "data" / "generated"

    @property
    def metrics(self) -> Path:
        return self.root / "data" / "metrics"

    @property
    def batches(self) -> Path:
        return self.root / "batches"

    @property
    def work(self) -> Path:
        """Resumable state, outside every DVC output (DVC deletes outputs before a run)."""
        return self.root / ".lakhflow" / "work"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlartifacts(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def presets(self) -> Path:
        return self.root / "presets"

    def raw_archive(self, source: str) -> Path:
        return self.raw / f"{source}.tar.gz"

    # The files the stages write, by name: a stage writes `tmp / path.name` in its atomic
    # folder, and readers open the path.
    @property
    def files_table(self) -> Path:
        return self.notes / "files.parquet"

    @property
    def notes_stats(self) -> Path:
        return self.notes / "stats.json"

    @property
    def shards_manifest(self) -> Path:
        return self.shards / MANIFEST_FILE

    @property
    def splits(self) -> Path:
        return self.shards / "splits.parquet"

    @property
    def model_file(self) -> Path:
        return self.model / MODEL_FILE

    @property
    def model_manifest(self) -> Path:
        """The shards' manifest the model was trained on, copied beside it."""
        return self.model / MANIFEST_FILE

    @property
    def model_run(self) -> Path:
        """The model's MLflow run and registered version (once registered)."""
        return self.model / "run.json"

    @property
    def generated_manifest(self) -> Path:
        return self.generated / "manifest.json"

    @property
    def evaluation(self) -> Path:
        return self.root / "data" / "evaluation"

    @property
    def report(self) -> Path:
        return self.evaluation / "report.html"

    @property
    def train_metrics(self) -> Path:
        return self.metrics / "train.json"

    @property
    def eval_metrics(self) -> Path:
        return self.metrics / "eval.json"

    @property
    def headline(self) -> Path:
        return self.metrics / "headline.json"

    @property
    def promotion(self) -> Path:
        return self.metrics / "promotion.json"


@dataclass(frozen=True)
class Config:
    params: Params
    paths: Paths

    @property
    def download(self) -> Download:
        return self.params.download

    @property
    def parse(self) -> Parse:
        return self.params.parse

    @property
    def sequences(self) -> Sequences:
        return self.params.sequences

    @property
    def train(self) -> Train:
        return self.params.train

    @property
    def generate(self) -> Generate:
        return self.params.generate

    @property
    def evaluate(self) -> Evaluate:
        return self.params.evaluate

    @property
    def promote(self) -> Promote:
        return self.params.promote

    @property
    def flows(self) -> Flows:
        return self.params.flows

    def flat(self) -> dict[str, Any]:
        """Every param as `section.key: value`, as MLflow and DVC name them."""
        return flatten(self.params.model_dump(mode="json"))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.epochs=3` -> (["train", "epochs"], 3); values are YAML, as in `dvc exp run -S`."""
    if "=" not in text:
        raise ParamsError(f"override {text!r} is not key=value (for example train.epochs=3)")
    key, _, raw = text.partition("=")
    parts = key.strip().split(".")
    if len(parts) < 2 or not all(parts):
        raise ParamsError(f"override key {key!r} needs its stage prefix, such as download.limit")
    try:
        value = yaml.load(raw, Loader=UniqueKeyLoader) if raw.strip() else None
    except yaml.YAMLError as exc:
        msg = f"{key}: value {raw!r} is not valid YAML ({_yaml_problem(exc)})"
        raise ParamsError(msg) from None
    return parts, value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        parts, value = parse_override(text)
        node = tree
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ParamsError(f"{'.'.join(parts)}: {part} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return tree


def _shown_error(errors: list[ErrorDetails]) -> ErrorDetails:
    """The first error; where a value failed each branch of a union (a temperature as a number
    or per head), the branch's error that got furthest into the value, which says what is wrong
    with it rather than that it is not the other branch's type."""
    first = errors[0]
    same_key = [e for e in errors if e["loc"][:2] == first["loc"][:2]]
    return max(same_key, key=lambda e: len(e["loc"]))  # the first of the deepest


def apply_to_params(path: Path, overrides: list[str]) -> None:
    """Write overrides into params.yaml (`lakhflow preset --apply`), keeping its comments and
    order; the result is validated before the file is touched."""
    from ruamel.yaml import YAML

    yaml_rt = YAML()
    tree = yaml_rt.load(path.read_text())
    apply_overrides(tree, overrides)  # ruamel's mappings are dicts: the same walk
    validate(_plain(tree))
    with open(path, "w") as f:
        yaml_rt.dump(tree, f)


def _plain(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {str(k): _plain(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_plain(v) for v in tree]
    return tree


def _describe(error: ErrorDetails, model: type[BaseModel]) -> str:
    loc = [str(p) for p in error["loc"] if not UNION_BRANCH.fullmatch(str(p))]
    key = ".".join(loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        section: type[BaseModel] | None = model
        for part in loc[:-1]:
            field = section.model_fields.get(part) if section else None
            ann = field.annotation if field else None
            section = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        allowed = ", ".join(sorted(section.model_fields)) if section else "?"
        return f"unknown params key '{key}'; allowed here: {allowed}"
    value = error.get("input")
    msg = error["msg"].removeprefix("Value error, ")
    if kind.startswith("literal_error"):
        return f"{key}: {value!r} is not allowed; {msg.lower()}"
    where = f"{key}: " if key and not msg.startswith(f"{key}.") else ""
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"{where}{msg}{shown}"


def validate(tree: dict[str, Any]) -> Params:
    try:
        return Params.model_validate(tree)
    except ValidationError as exc:
        raise ParamsError(_describe(_shown_error(exc.errors()), Params)) from None


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key twice in one mapping is an error: PyYAML keeps the
    last silently, so the first value, the one a reader sees, would be ignored."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults` then overriding some of them is what merge keys are for
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # the base class refuses unhashable keys with its own message
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first on line {seen[key] + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error as `line L, column C: what`, in one line."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
    return str(exc).splitlines()[0]


def read_params(path: Path) -> dict[str, Any]:
    """A params file's sections; every way it cannot be read is one line naming the file."""
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise ParamsError(f"{path} is a folder, not a params file") from None
    except FileNotFoundError:
        raise ParamsError(f"{path} does not exist") from None
    except OSError as exc:
        raise ParamsError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark from a Windows editor is harmless
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        byte = data[exc.start]
        raise ParamsError(
            f"{path.name} is not UTF-8 text (byte 0x{byte:02x} on line {line})"
        ) from None
    try:
        tree = yaml.load(text, Loader=UniqueKeyLoader) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path.name} is not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(tree, dict):
        raise ParamsError(f"{path.name} must hold a mapping of stage sections")
    return tree


def project_root() -> Path:
    return Path(os.environ.get("LAKHFLOW_ROOT", ".")).resolve()


def load(root: Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read and validate params.yaml under `root` (default: $LAKHFLOW_ROOT, else the current
    folder). A root without params.yaml is refused: the stages would run on built-in defaults,
    writing data/ wherever lakhflow happened to be started."""
    root = (root or project_root()).resolve()
    paths = Paths(root)
    if not paths.params.exists() and not paths.params.is_symlink():
        raise ParamsError(
            f"no {PARAMS_FILE} in {root}: run lakhflow from the project's root "
            "(or set LAKHFLOW_ROOT)"
        )
    settings = run_settings(os.environ)
    tree = apply_overrides(read_params(paths.params), settings + (overrides or []))
    return Config(params=validate(tree), paths=paths)


def run_settings(environ: Mapping[str, str]) -> list[str]:
    """The overrides that LAKHFLOW_SCHEDULER (parse and sequences on a Dask cluster),
    LAKHFLOW_PARSE_SCHEDULER (parse only) and LAKHFLOW_PARSE_WORKERS stand for (an -S override
    still wins)."""
    settings = []
    for name, sections in (
        (SCHEDULER_ENV, ("parse", "sequences")),
        (PARSE_SCHEDULER_ENV, ("parse",)),
    ):
        if address := environ.get(name, "").strip():
            for section in sections:
                settings += [
                    f"{section}.executor=dask",
                    f"{section}.scheduler_address={to_yaml_scalar(address)}",
                ]
    if workers := environ.get(PARSE_WORKERS_ENV, "").strip():
        if not workers.isdigit():
            raise ParamsError(f"{PARSE_WORKERS_ENV}={workers!r} is not a number of workers")
        settings.append(f"parse.workers={workers}")
    return settings


def load_preset(paths: Paths, name: str) -> list[str]:
    """A preset file's overrides as `key=value` strings, validated against the params."""
    path = paths.presets / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in paths.presets.glob("*.yaml"))) or "none"
        raise ParamsError(f"no preset named {name!r}; presets: {known}")
    flat = flatten(read_params(path))
    overrides = [f"{k}={to_yaml_scalar(v)}" for k, v in flat.items()]
    validate(apply_overrides(read_params(paths.params), overrides))
    return overrides


def to_yaml_scalar(value: Any) -> str:
    """A value as one line of YAML, as `dvc exp run -S` takes it."""
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("...\n").strip()
