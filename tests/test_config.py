"""params.yaml validation and the CLI's one-line errors."""

from __future__ import annotations

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
