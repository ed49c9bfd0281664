"""The stages as a whole: the project's import graph (no cycle; the CLI at the top), and dvc.yaml
knowing every input of every stage, derived from the code so that it cannot drift again."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest
import yaml
from conftest import REPO, make_project, run_cli

from pipelines import config
from pipelines.stages import STAGES

PACKAGES = ("pipelines", "flows")
# Modules every stage uses that do not shape what it writes: where params and paths come from,
# the user's errors, atomic writes and locks, where MLflow lives, and how a stage is run.
INFRASTRUCTURE = {"config", "errors", "storage", "tracking", "stages"}
# Params that say how a stage runs, not what it writes; DVC must not rerun a stage for them.
HOW_IT_RUNS = {"download.workers"} | {
    f"{section}.{key}"
    for section in ("parse", "sequences")
    for key in ("workers", "executor", "scheduler_address")
}
SECTIONS = {name: field.annotation for name, field in config.Params.model_fields.items()}
SECTION_OF_CLASS = {cls.__name__: name for name, cls in SECTIONS.items() if cls is not None}
KEYS = {name: set(cls.model_fields) for name, cls in SECTIONS.items() if cls is not None}


def module_files() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).glob("*.py")):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


@cache
def imports_of(name: str) -> frozenset[str]:
    """The project modules that module `name` imports, at the top or inside functions."""
    files = module_files()
    found: set[str] = set()
    for node in ast.walk(ast.parse(files[name].read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in PACKAGES:  # `from pipelines import config, storage`
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
            else:
                found.add(node.module)
    return frozenset(m for m in found if m in files and m != name)


def closure(name: str, through: bool = True) -> set[str]:
    """Every project module `name` imports, directly or not; `through=False` does not follow
    the imports of infrastructure modules (config's validators import instruments, say)."""
    seen, todo = set(), [name]
    while todo:
        current = todo.pop()
        if not through and current != name and current.split(".")[-1] in INFRASTRUCTURE:
            continue
        for module in imports_of(current):
            if module not in seen:
                seen.add(module)
                todo.append(module)
    return seen


def test_the_import_graph_has_no_cycle_and_the_cli_is_on_top() -> None:
    files = module_files()
    for name in files:
        assert name not in closure(name), f"{name} imports itself through {sorted(closure(name))}"
    importers = sorted(m for m in files if "pipelines.cli" in imports_of(m))
    assert importers == [], f"nothing imports the CLI, but {importers} do"
    flows = {m for m in files if m.startswith("flows")}
    for name in flows:  # the flows orchestrate: stages, params, the registry; no data logic
        used = {m.split(".")[-1] for m in imports_of(name) if m.startswith("pipelines.")}
        assert used <= INFRASTRUCTURE | {"registry"}, (name, used)


def params_read(path: Path) -> set[str]:
    """`section.key`s (or whole `section`s) a module reads: `cfg.train.units`; `p = cfg.train`
    then `p.units`; a parameter annotated `p: Train`, then `p.units`; `cfg.train.model_dump()`."""
    found: set[str] = set()
    for function in ast.walk(ast.parse(path.read_text())):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        alias: dict[str, str] = {}
        for arg in [*function.args.args, *function.args.kwonlyargs]:
            note = arg.annotation
            named = note.id if isinstance(note, ast.Name) else getattr(note, "value", None)
            if isinstance(named, str) and named in SECTION_OF_CLASS:
                alias[arg.arg] = SECTION_OF_CLASS[named]
        nodes = list(ast.walk(function))
        for node in nodes:
            if (
                isinstance(node, ast.Assign)
                and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Attribute)
                and node.value.attr in SECTIONS
            ):
                alias[node.targets[0].id] = node.value.attr
        for node in nodes:
            if not isinstance(node, ast.Attribute):
                continue
            base = node.value
            if isinstance(base, ast.Attribute) and base.attr in SECTIONS:
                section = base.attr
            elif isinstance(base, ast.Name) and base.id in alias:
                section = alias[base.id]
            else:
                continue
            if node.attr in KEYS[section]:
                found.add(f"{section}.{node.attr}")
            elif node.attr == "model_dump":
                found.add(section)
    return found


def declared(stage: dict, key: str) -> bool:
    listed = {p for p in stage.get("params", []) if isinstance(p, str)}
    return key in listed or key.split(".")[0] in listed


@pytest.mark.parametrize("stage", STAGES)
def test_dvc_yaml_lists_every_module_and_params_key_the_stage_reads(stage: str) -> None:
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]
    deps = set(dvc.get("deps", []))
    modules = {f"pipelines.{stage}"} | closure(f"pipelines.{stage}", through=False)
    shaping = {m for m in modules if m.split(".")[-1] not in INFRASTRUCTURE}
    files = {m: f"{m.replace('.', '/')}.py" for m in shaping}
    missing = sorted(path for path in files.values() if path not in deps)
    assert not missing, f"dvc.yaml's {stage} stage does not list the modules it imports: {missing}"
    read = set().union(*(params_read(REPO / path) for path in files.values()))
    unlisted = sorted(k for k in read - HOW_IT_RUNS if not declared(dvc, k))
    assert not unlisted, f"dvc.yaml's {stage} stage does not list the params it reads: {unlisted}"
    stale = sorted(d for d in deps if d.startswith("pipelines/") and not (REPO / d).exists())
    assert not stale, f"dvc.yaml's {stage} stage lists modules that do not exist: {stale}"


def test_the_checks_see_what_they_look_for(tmp_path: Path) -> None:
    source = tmp_path / "stage.py"
    source.write_text(
        "def run(cfg):\n"
        "    g = cfg.generate\n"
        "    return cfg.train.units, g.count, cfg.sequences.model_dump()\n"
        "def build(p: 'Parse'):\n"
        "    return p.part_files, p.not_a_key\n"
    )
    assert params_read(source) == {"train.units", "generate.count", "sequences", "parse.part_files"}
    assert "pipelines.config" in closure("pipelines.parse")


def test_how_a_stage_runs_comes_from_the_environment_not_params_yaml(tmp_path: Path) -> None:
    """LAKHFLOW_PARSE_SCHEDULER makes the parse stage use Dask there (here an address where no
    scheduler listens: the stage says so); params.yaml is not touched."""
    root = make_project(tmp_path / "project")
    before = (root / "params.yaml").read_bytes()
    cfg = config.load(root)
    assert config.run_settings({config.PARSE_SCHEDULER_ENV: "tcp://127.0.0.1:9"}) == [
        "parse.executor=dask",
        "parse.scheduler_address=tcp://127.0.0.1:9",
    ]
    assert config.run_settings({config.SCHEDULER_ENV: "tcp://127.0.0.1:9"}) == [
        "parse.executor=dask",
        "parse.scheduler_address=tcp://127.0.0.1:9",
        "sequences.executor=dask",
        "sequences.scheduler_address=tcp://127.0.0.1:9",
    ]
    assert cfg.parse.executor == "local"
    raw = root / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "bach.tar.gz").write_bytes(b"\x1f\x8b")
    done = run_cli(
        ["lakhflow", "parse"], root, timeout=180, LAKHFLOW_PARSE_SCHEDULER="tcp://127.0.0.1:9"
    )
    assert done.returncode != 0
    assert "tcp://127.0.0.1:9" in done.stderr, done.stderr[-2000:]
    assert (root / "params.yaml").read_bytes() == before
    bad = run_cli(["lakhflow", "parse"], root, timeout=60, LAKHFLOW_PARSE_WORKERS="many")
    assert bad.returncode == 2
    assert "LAKHFLOW_PARSE_WORKERS='many' is not a number of workers" in bad.stderr
