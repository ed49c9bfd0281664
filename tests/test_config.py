"""params.yaml validation and the CLI's one-line errors."""

from __future__ import annotations

import types
import typing
from pathlib import Path

import pytest
from conftest import REPO, run_cli

from pipelines import config
from pipelines.errors import ParamsError


def test_repo_params_validate() -> None:
    cfg = config.load(REPO)
    assert cfg.download.source == "bach"
    assert cfg.flat()["sequences.split.train"] == pytest.approx(0.8)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("train.epoch=3", "unknown params key 'train.epoch'"),
        ("trian.epochs=3", "unknown params key 'trian'"),
        ("train.epochs=-1", "train.epochs"),
        ("train.epochs=abc", "train.epochs"),
        ("download.source=foo", "download.source: 'foo' is not allowed"),
        ("sequences.split={train: 0.5, val: 0.1, test: 0.1}", "sum to 1"),
        ("sequences.seq_length=1", "sequences.seq_length"),
        ("generate.top_p=1.5", "generate.top_p"),
        ("generate.temperature=0", "temperature must be > 0"),
        ("download.source=url", "download.url is required"),
        ("epochs=3", "needs its stage prefix"),
    ],
)
def test_bad_override_names_the_key(override: str, needle: str) -> None:
    with pytest.raises(ParamsError) as info:
        config.load(REPO, [override])
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("generate.programs={lute: 24}",
         "generate.programs: 'lute' is neither a family (piano, chromatic_percussion, organ, "),
        ("generate.programs={piano-0: 24}", "generate.programs: 'piano-0' is neither a family"),
        ("generate.programs={piano: kazoo}",
         "generate.programs: piano: unknown General MIDI instrument 'kazoo'"),
        ("generate.programs={piano-4: 128}", "generate.programs: piano-4: program 128 is outside"),
        ("generate.programs={Piano: 40, piano: 41}",
         "generate.programs: 'Piano' and 'piano' name the same parts"),
        ("generate.programs=[cello]", "generate.programs: Input should be a valid dictionary"),
        ("generate.program=kazoo", "generate.program: unknown General MIDI instrument 'kazoo'"),
    ],
)  # fmt: skip
def test_programs_name_families_or_parts_and_general_midi_programs(
    override: str, message: str
) -> None:
    with pytest.raises(ParamsError) as info:
        config.load(REPO, [override])
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_parts_play_their_own_programs_unless_re_voiced() -> None:
    g = config.load(REPO).generate
    assert g.program is None and g.programs == {}
    by_name = "{piano: string_ensemble_1, piano-4: 42, Synth Lead-2: 81, drums: 0}"
    g = config.load(REPO, [f"generate.programs={by_name}", "generate.program=violin"]).generate
    assert g.programs == {"piano": "string_ensemble_1", "piano-4": 42, "Synth Lead-2": 81,
                          "drums": 0}  # fmt: skip
    assert g.program == "violin"


def test_overrides_are_yaml_values() -> None:
    cfg = config.load(REPO, ["train.epochs=3", "sequences.programs=[0, piano, 40-47]"])
    assert cfg.train.epochs == 3
    assert cfg.sequences.programs == [0, "piano", "40-47"]


def test_preset_validates(tmp_path: Path) -> None:
    cfg = config.load(REPO)
    for preset in sorted(cfg.paths.presets.glob("*.yaml")):
        overrides = config.load_preset(cfg.paths, preset.stem)
        assert overrides, preset
        config.load(REPO, overrides)


@pytest.mark.parametrize(
    "override", ["train.epoch=3", "download.limit=-1", "download.source=nowhere"]
)
def test_cli_bad_params_one_line_exit_2(project: Path, override: str) -> None:
    result = run_cli(["lakhflow", "download", "-S", override], cwd=project)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lakhflow download: error:")
    assert "Traceback" not in result.stderr


def test_cli_bad_key_in_params_file(project: Path) -> None:
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("  epochs: 5", "  epochz: 5"))
    result = run_cli(["lakhflow", "download"], cwd=project)
    assert result.returncode == 2
    assert "train.epochz" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- values that validate
# but cannot work


def _float_keys() -> list[str]:
    """Every params key whose value is a float (alone, optional, or in a union); the floats
    inside mappings are in test_floats_inside_mappings_must_be_finite."""
    keys = []
    for section, field in config.Params.model_fields.items():
        model = field.annotation
        assert isinstance(model, type) and issubclass(model, config.Section)
        for name, inner in model.model_fields.items():
            ann = inner.annotation
            union = typing.get_origin(ann) in (typing.Union, types.UnionType)
            if ann is float or (union and float in typing.get_args(ann)):
                keys.append(f"{section}.{name}")
    return keys


FLOAT_KEYS = _float_keys()


def test_float_keys_are_found() -> None:
    assert {"train.learning_rate", "download.max_member_mb", "generate.temperature"} <= set(
        FLOAT_KEYS
    )


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_every_float_must_be_finite(key: str, value: str) -> None:
    with pytest.raises(ParamsError) as info:
        config.load(REPO, [f"{key}={value}"])
    assert str(info.value).startswith(f"{key}: Input should be a finite number")


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("sequences.split={train: .nan, val: 0.1, test: 0.1}", "sequences.split.train"),
        ("train.loss_weights={pitch: .inf}", "train.loss_weights.pitch"),
        ("train.monitor={pitch: .inf}", "train.monitor.pitch"),
        ("generate.temperature={pitch: .inf}", "generate.temperature.pitch"),
    ],
)
def test_floats_inside_mappings_must_be_finite(override: str, key: str) -> None:
    with pytest.raises(ParamsError) as info:
        config.load(REPO, [override])
    assert str(info.value).startswith(f"{key}: Input should be a finite number")


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        (
            "train.learning_rate=1e30",
            "train.learning_rate: Input should be less than or equal to 1",
        ),
        ("train.learning_rate=1.5", "train.learning_rate: Input should be less than or equal to 1"),
        ("train.clipnorm=1e30", "train.clipnorm: Input should be less than or equal to 1000"),
        ("train.monitor={pitch: 1.0e30}", "train.monitor.pitch: Input should be less than"),
        ("download.max_member_mb=1e300", "download.max_member_mb: Input should be less than"),
        ("download.timeout_s=1e9", "download.timeout_s: Input should be less than"),
        ("parse.timeout_s=1e9", "parse.timeout_s: Input should be less than"),
        ("parse.max_memory_mb=99999999999", "parse.max_memory_mb: Input should be less than"),
        ("sequences.shard_mb=1e12", "sequences.shard_mb: Input should be less than"),
        ("sequences.max_step=1e9", "sequences.max_step: Input should be less than"),
        ("generate.temperature=1e30", "generate.temperature: temperature must be <= 100"),
        ("generate.temperature={pitch: 1e30}", "temperature must be <= 100"),
        ("generate.repetition_penalty=1e9", "generate.repetition_penalty: Input should be less"),
        ("generate.tempo_bpm=1e6", "generate.tempo_bpm: Input should be less than"),
        ("generate.seconds=1e9", "generate.seconds: Input should be less than"),
        ("flows.stage_timeout_s=1e30", "flows.stage_timeout_s: Input should be less than"),
        ("flows.retry_delay_s=1e30", "flows.retry_delay_s: Input should be less than"),
    ],
)
def test_absurd_values_are_refused(override: str, needle: str) -> None:
    with pytest.raises(ParamsError) as info:
        config.load(REPO, [override])
    assert needle in str(info.value)


def test_bounds_are_inclusive_where_sensible() -> None:
    cfg = config.load(REPO, ["train.learning_rate=1", "generate.temperature=100"])
    assert cfg.train.learning_rate == 1
    assert cfg.generate.temperature == 100


@pytest.mark.parametrize(
    ("ngrams", "needle"),
    [
        ("[0, -1]", "each >= 1"),
        ("[2, 0]", "each >= 1"),
        ("[2, 4, 2]", "must be distinct"),
        ("[]", "at least 1 item"),
    ],
)
def test_ngram_sizes(ngrams: str, needle: str) -> None:
    with pytest.raises(ParamsError) as info:
        config.load(REPO, [f"evaluate.ngrams={ngrams}"])
    assert str(info.value).startswith("evaluate.ngrams:")
    assert needle in str(info.value)
    assert config.load(REPO, ["evaluate.ngrams=[1, 3]"]).evaluate.ngrams == [1, 3]


CRONS = ["0 2 * * *", "*/15 * * * *", "0 0 1 1 *", "0 9-17 * * mon-fri", "0 2 * * * 30",
         "not a cron", "", "0 2 * *", "61 * * * *", "0 25 * * *", "R 2 * * *", "H * * * *",
         "0 2 * * * * * *", "0 2 31 2 *"]  # fmt: skip


@pytest.mark.parametrize("cron", CRONS)
def test_cron_is_checked_as_prefect_checks_it(cron: str) -> None:
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron)
        prefect_takes = True
    except ValueError:
        prefect_takes = False
    for key in ("pipeline_cron", "generate_cron"):
        try:
            config.validate({"flows": {key: cron}})
            taken = True
        except ParamsError as exc:
            assert str(exc).startswith(f"flows.{key}: ")
            taken = False
        assert taken == prefect_takes, (key, cron)


def test_not_a_cron_names_the_key() -> None:
    with pytest.raises(ParamsError, match=r"^flows.pipeline_cron: expected a cron expression"):
        config.load(REPO, ["flows.pipeline_cron=not a cron"])


def test_monitor_defaults_to_the_pitch_loss_and_takes_weights_per_head() -> None:
    assert config.load(REPO).train.monitor == {"pitch": 1.0}
    weights = "{pitch: 1, step: 1, duration: 1, velocity: 0.5, part: 1}"
    cfg = config.load(REPO, [f"train.monitor={weights}"])
    assert cfg.train.monitor == cfg.train.loss_weights  # Keras' val_loss, as it was
    assert config.load(REPO, ["train.monitor={pitch: 1, velocity: 0}"]).train.monitor == {
        "pitch": 1.0,
        "velocity": 0.0,
    }


@pytest.mark.parametrize(
    ("monitor", "message"),
    [
        (
            "{pitch: 1, harmony: 2}",
            "train.monitor: unknown heads ['harmony']; heads are pitch, step, duration, velocity",
        ),
        ("{pitch: 0}", "train.monitor: at least one monitored head needs a weight > 0"),
        ("{}", "train.monitor: at least one monitored head needs a weight > 0"),
        ("{pitch: -1}", "train.monitor.pitch: Input should be greater than or equal to 0"),
        ("val_loss", "train.monitor: weights per head over val_<head>_loss, such as {pitch: 1}"),
    ],
)
def test_monitor_weighs_known_heads_only(monitor: str, message: str) -> None:
    with pytest.raises(ParamsError) as info:
        config.load(REPO, [f"train.monitor={monitor}"])
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "name", ["a/b@c", "a:b", "a@b", "a b", "-a", ".a", "_a", "a#b", "é", "x" * 257]
)
def test_model_name_fits_the_registry_and_its_uris(name: str) -> None:
    with pytest.raises(ParamsError, match=r"^train.model_name: "):
        config.validate({"train": {"model_name": name}})


@pytest.mark.parametrize("name", ["lakhflow-lstm", "Model_2.v3", "7bars", "x" * 256])
def test_model_names_the_registry_takes(name: str) -> None:
    from mlflow.store.artifact.utils.models import _parse_model_uri
    from mlflow.utils.validation import _validate_model_name

    assert config.validate({"train": {"model_name": name}}).train.model_name == name
    _validate_model_name(name)  # MLflow's own rule: raises for a name it refuses
    assert _parse_model_uri(f"models:/{name}@champion").name == name


# --------------------------------------------------------------------------- the params file


def _project_with(tmp_path: Path, content: bytes | None) -> Path:
    if content is not None:
        (tmp_path / "params.yaml").write_bytes(content)
    return tmp_path


def test_missing_params_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ParamsError) as info:
        config.load(tmp_path)
    assert str(info.value) == (
        f"no params.yaml in {tmp_path}: run lakhflow from the project's root (or set LAKHFLOW_ROOT)"
    )


def test_params_file_that_is_a_folder(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").mkdir()
    with pytest.raises(ParamsError, match=r"params\.yaml is a folder, not a params file"):
        config.load(tmp_path)


def test_params_file_not_utf8(tmp_path: Path) -> None:
    _project_with(tmp_path, b"download:\n  source: bach\n  limit: \xff5\n")
    with pytest.raises(ParamsError) as info:
        config.load(tmp_path)
    assert str(info.value) == "params.yaml is not UTF-8 text (byte 0xff on line 3)"


def test_params_file_with_a_byte_order_mark(tmp_path: Path) -> None:
    _project_with(tmp_path, "\ufeffdownload:\n  limit: 5\n".encode())
    assert config.load(tmp_path).download.limit == 5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "download:\n  source: bach\n limit: 5\n",
            "params.yaml is not valid YAML: line 3, column 2: "
            "expected <block end>, but found '<block mapping start>'",
        ),
        (
            "download:\n  source: [bach\n",
            "params.yaml is not valid YAML: line 3, column 1: "
            "expected ',' or ']', but got '<stream end>'",
        ),
        (
            "download:\n  limit: 5\n  source: bach\n  limit: 3\n",
            "params.yaml is not valid YAML: line 4, column 3: duplicate key 'limit' "
            "(first on line 2)",
        ),
        (
            "train:\n  epochs: 1\ndownload: {}\ntrain:\n  epochs: 2\n",
            "params.yaml is not valid YAML: line 4, column 1: duplicate key 'train' "
            "(first on line 1)",
        ),
    ],
)
def test_params_file_yaml_errors_name_line_and_column(
    tmp_path: Path, text: str, message: str
) -> None:
    _project_with(tmp_path, text.encode())
    with pytest.raises(ParamsError) as info:
        config.load(tmp_path)
    assert str(info.value) == message


def test_merge_keys_may_override_what_they_merge(tmp_path: Path) -> None:
    text = "x-base: &base {limit: 5, source: bach}\ndownload:\n  <<: *base\n  limit: 3\n"
    tree = config.UniqueKeyLoader(text).get_single_data()
    assert tree["download"] == {"limit": 3, "source": "bach"}


def test_duplicate_key_in_an_override() -> None:
    with pytest.raises(ParamsError, match="duplicate key 'pitch'"):
        config.load(REPO, ["train.loss_weights={pitch: 1, pitch: 2}"])
