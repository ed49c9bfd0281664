"""The one typed view of `params.yaml` and of every path the stages use.

`load(root, overrides)` reads params.yaml, applies `key=value` overrides written as for
`dvc exp run -S`, and validates everything; a bad key or value raises `ParamsError` with
one line that names the key and what is allowed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from pipelines.errors import ParamsError

PARAMS_FILE = "params.yaml"


class Section(BaseModel):
    """A params section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


LakhSource = Literal["lmd_full", "lmd_matched", "lmd_aligned", "clean_midi"]
Source = Literal["bach", "lmd_full", "lmd_matched", "lmd_aligned", "clean_midi", "url", "path"]


class Download(Section):
    source: Source = "bach"
    limit: int = Field(0, ge=0, description="take the first N files (0: all)")
    url: str | None = None
    md5: str | None = Field(None, pattern=r"^[0-9a-fA-F]{32}$")
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    path: str | None = None
    max_member_mb: float = Field(64.0, gt=0)
    max_mb: float = Field(
        4096.0, gt=0, allow_inf_nan=False, description="cap of a download of unknown size (MB)"
    )
    retries: int = Field(5, ge=0, le=50)
    timeout_s: float = Field(30.0, gt=0)
    workers: int = Field(0, ge=0, description="processes converting scores to MIDI (0: cores)")

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
    timeout_s: float = Field(30.0, gt=0)
    max_memory_mb: int = Field(2048, ge=64)
    executor: Literal["local", "dask"] = "local"
    scheduler_address: str | None = None


class Sequences(Section):
    programs: list[int | str] = Field(default_factory=list)
    include_drums: bool = False
    instrument: Literal["all", "most_common"] = "all"
    min_notes: int = Field(32, ge=2)
    time_unit: Literal["seconds", "beats"] = "beats"
    max_step: float = Field(4.0, gt=0)
    max_duration: float = Field(8.0, gt=0)
    seq_length: int = Field(32, ge=2)
    stride: int = Field(1, ge=1)
    chunk_notes: int = Field(512, ge=3)
    split: dict[str, float] = Field(default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})
    split_by: Literal["tune", "group", "file"] = "tune"
    seed: int = 42
    shard_mb: float = Field(64.0, gt=0)
    transpose: int = Field(3, ge=0, le=24)
    bins: int = Field(16, ge=2, le=256)
    velocity_bins: int = Field(8, ge=1, le=127)
    bin_method: Literal["quantile", "log"] = "quantile"

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

    @model_validator(mode="after")
    def _chunk(self) -> Sequences:
        if self.chunk_notes <= self.seq_length:
            raise ValueError(
                f"sequences.chunk_notes ({self.chunk_notes}) must exceed "
                f"sequences.seq_length ({self.seq_length})"
            )
        return self


class Train(Section):
    heads: Literal["categorical", "regression"] = "categorical"
    layers: int = Field(1, ge=1, le=8)
    units: int = Field(128, ge=1)
    embedding_dim: int = Field(32, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    learning_rate: float = Field(0.002, gt=0)
    clipnorm: float = Field(1.0, gt=0)
    batch_size: int = Field(64, ge=1)
    epochs: int = Field(5, ge=1)
    patience: int = Field(2, ge=0)
    steps_per_epoch: int = Field(0, ge=0, description="0: the whole train split")
    validation_steps: int = Field(0, ge=0, description="0: the whole val split")
    loss_weights: dict[str, float] = Field(
        default_factory=lambda: {"pitch": 1.0, "step": 1.0, "duration": 1.0, "velocity": 0.5}
    )
    seed: int = 42
    mixed_precision: Literal["auto", "on", "off"] = "auto"
    model_name: str = Field("lakhflow-lstm", min_length=1)

    @field_validator("loss_weights")
    @classmethod
    def _loss_weights(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = set(v) - {"pitch", "step", "duration", "velocity"}
        if unknown:
            heads = "pitch, step, duration, velocity"
            raise ValueError(f"unknown heads {sorted(unknown)}; heads are {heads}")
        if any(w < 0 for w in v.values()):
            raise ValueError("loss weights must be >= 0")
        return v


class Generate(Section):
    model_uri: str | None = Field(None, description="None: data/model/; or models:/NAME@ALIAS")
    output: str | None = Field(
        None, description="None: data/generated/; scheduled batches: batches/<date-time>/"
    )
    count: int = Field(8, ge=1)
    notes: int = Field(128, ge=1)
    seconds: float | None = Field(None, gt=0)
    temperature: float | dict[str, float] = 1.0
    top_k: int = Field(0, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    greedy: bool = False
    repetition_penalty: float = Field(1.2, ge=1.0)
    repetition_window: int = Field(16, ge=0)
    seed: int = 0
    primer_midi: str | None = None
    primer_pitches: str | None = None
    primer_notes: int = Field(32, ge=1)
    program: int | str = "acoustic_grand_piano"
    tempo_bpm: float | None = Field(None, gt=0)
    name: str = Field("piece", pattern=r"^[A-Za-z0-9_.-]+$")
    wav: bool = True

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v: float | dict[str, float]) -> float | dict[str, float]:
        values = v.values() if isinstance(v, dict) else [v]
        if any(t <= 0 for t in values):
            raise ValueError("temperature must be > 0")
        if isinstance(v, dict) and not set(v) <= {"pitch", "step", "duration", "velocity"}:
            raise ValueError("per-head temperature keys are pitch, step, duration, velocity")
        return v


class Evaluate(Section):
    seed: int = 0
    kde_points: int = Field(256, ge=16)
    ngrams: list[int] = Field(default_factory=lambda: [2, 4, 8])
    copy_threshold: int = Field(16, ge=2)
    max_test_windows: int = Field(20_000, ge=1)


class Promote(Section):
    min_improvement: float = Field(0.0, ge=0)
    allow_split_mismatch: bool = False


class Flows(Section):
    pipeline_cron: str = "0 2 * * *"
    generate_cron: str = "0 * * * *"
    stage_timeout_s: float = Field(3600.0, gt=0)
    download_retries: int = Field(3, ge=0)
    retry_delay_s: float = Field(10.0, ge=0)


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
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        msg = f"{key}: value {raw!r} is not valid YAML ({exc.__class__.__name__})"
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


def _describe(error: ErrorDetails, model: type[BaseModel]) -> str:
    loc = [str(p) for p in error["loc"]]
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
        raise ParamsError(_describe(exc.errors()[0], Params)) from None


def read_params(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path.name} is not valid YAML: {exc}".splitlines()[0]) from None
    if not isinstance(tree, dict):
        raise ParamsError(f"{path.name} must hold a mapping of stage sections")
    return tree


def project_root() -> Path:
    return Path(os.environ.get("LAKHFLOW_ROOT", ".")).resolve()


def load(root: Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read and validate params.yaml under `root` (default: the current folder)."""
    root = (root or project_root()).resolve()
    paths = Paths(root)
    tree = apply_overrides(read_params(paths.params), overrides or [])
    return Config(params=validate(tree), paths=paths)


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
