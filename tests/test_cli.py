"""The `lakhflow` command as a user meets it: real subprocesses in a temporary project, each
mistake one line on stderr with a non-zero exit; a full or read-only disk (a real tmpfs, in a
mount namespace of its own) leaves the previous outputs as they were."""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
from conftest import CHORALES, bach_midi, make_project, run_cli, tool_env

from pipelines import cli, config, stages
from pipelines.errors import ParamsError


def one_error_line(stderr: str, command: str) -> str:
    """The one line of an error: the last on stderr (progress bars may come before it), the
    only one that says error, and no traceback."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, stderr
    line = stderr.strip().splitlines()[-1].rsplit("\r", 1)[-1]
    assert line == errors[0].rsplit("\r", 1)[-1], stderr
    assert line.startswith(f"lakhflow {command}: error: "), stderr
    return line.removeprefix(f"lakhflow {command}: error: ")


# --------------------------------------------------------------------------- params


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("train.learning_rate=.inf", "train.learning_rate: Input should be a finite number"),
        ("train.learning_rate=.nan", "train.learning_rate: Input should be a finite number"),
        ("train.learning_rate=1e30", "train.learning_rate: Input should be less than or equal"),
        ("download.max_member_mb=.inf", "download.max_member_mb: Input should be a finite"),
        ("evaluate.ngrams=[0,-1]", "evaluate.ngrams: n-gram sizes are numbers of notes"),
        ("flows.pipeline_cron=not a cron", "flows.pipeline_cron: expected a cron expression"),
        ("flows.generate_cron=not a cron", "flows.generate_cron: expected a cron expression"),
        ("train.model_name=a/b@c", "train.model_name: a registered model's name is"),
        ("train.epoch=3", "unknown params key 'train.epoch'"),
    ],
)
def test_bad_params_are_one_line_before_tensorflow(
    project: Path, override: str, needle: str
) -> None:
    """`lakhflow train` with a bad value: exit 2, one line naming the key, and TensorFlow was
    never imported (params are checked first, so the answer does not wait for its import)."""
    code = (
        "import sys; from pipelines.cli import main; code = main(sys.argv[1:]); "
        "print('tensorflow' in sys.modules); sys.exit(code)"
    )
    result = run_cli([sys.executable, "-c", code, "train", "-S", override], cwd=project)
    assert result.returncode == 2, result.stderr
    assert one_error_line(result.stderr, "train").startswith(needle)
    assert result.stdout.strip() == "False"


def test_good_params_do_import_tensorflow(project: Path) -> None:
    """The control for the test above: past validation, a TensorFlow stage imports it (and
    then stops, as no shards exist)."""
    code = (
        "import sys; from pipelines.cli import main; code = main(sys.argv[1:]); "
        "print('tensorflow' in sys.modules); sys.exit(code)"
    )
    result = run_cli([sys.executable, "-c", code, "train", "-S", "train.epochs=1"], cwd=project)
    assert result.returncode == 1, result.stderr
    assert "no shards in" in one_error_line(result.stderr, "train")
    assert result.stdout.strip() == "True"


def test_stage_loads_params_once(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI validates params before anything else and hands that config to the stage."""
    archive = tmp_path / "collection.tar.gz"
    write_archive(archive, bach_midi(tmp_path / "midi", CHORALES[:2]))
    loads: list[list[str] | None] = []
    real_load = config.load

    def counting_load(root: Path | None = None, overrides: list[str] | None = None):
        loads.append(overrides)
        return real_load(root, overrides)

    monkeypatch.setattr(config, "load", counting_load)
    monkeypatch.chdir(project)
    monkeypatch.delenv("LAKHFLOW_ROOT", raising=False)
    overrides = ["download.source=path", f"download.path={archive}"]
    code = cli.main(["download", *[x for o in overrides for x in ("-S", o)]])
    assert code == 0
    assert loads == [overrides]
    assert (project / "data" / "raw" / "path.tar.gz").exists()


def test_run_stage_still_loads_params_itself(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """flows/ call `run_stage(stage, overrides)`: it loads and validates as before."""
    monkeypatch.setenv("LAKHFLOW_ROOT", str(project))
    with pytest.raises(ParamsError, match=r"^train\.learning_rate: "):
        stages.run_stage("train", ["train.learning_rate=.inf"])


def test_missing_params_file_is_one_line(tmp_path: Path) -> None:
    result = run_cli(["lakhflow", "download"], cwd=tmp_path)
    assert result.returncode == 2
    line = one_error_line(result.stderr, "download")
    assert line == (
        f"no params.yaml in {tmp_path.resolve()}: run lakhflow from the project's root "
        "(or set LAKHFLOW_ROOT)"
    )
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "params.yaml is a folder, not a params file"),
        (
            b"download:\n  source: bach\n  limit: \xff\xfe5\n",
            "not UTF-8 text (byte 0xff on line 3)",
        ),
        (b"download:\n  source: bach\n limit: 5\n", "not valid YAML: line 3, column 2: "),
        (b"download:\n  limit: 5\n  limit: 3\n", "line 3, column 3: duplicate key 'limit'"),
    ],
)
def test_unreadable_params_file_is_one_line(
    project: Path, content: bytes | None, needle: str
) -> None:
    params = project / "params.yaml"
    params.unlink()
    if content is None:
        params.mkdir()
    else:
        params.write_bytes(content)
    result = run_cli(["lakhflow", "download"], cwd=project)
    assert result.returncode == 2
    assert needle in one_error_line(result.stderr, "download")


# --------------------------------------------------------------------------- lakhflow ui


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("port", ["99999", "0", "-1"])
def test_ui_port_out_of_range(project: Path, port: str) -> None:
    result = run_cli(["lakhflow", "ui", "--port", port], cwd=project, timeout=60)
    assert result.returncode == 2
    assert one_error_line(result.stderr, "ui") == f"--port {port} is not a TCP port (1-65535)"


def test_ui_port_in_use(project: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(["lakhflow", "ui", "--port", str(port)], cwd=project, timeout=60)
    assert result.returncode == 1
    line = one_error_line(result.stderr, "ui")
    assert line == f"port {port} on 127.0.0.1 is in use; choose another with --port"


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except (urllib.error.URLError, OSError):
        return False


def group_members(pgid: int) -> list[psutil.Process]:
    """Live processes (not zombies) in the process group `pgid`."""
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return found


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_stopping_ui_stops_the_mlflow_server(
    project: Path, mlflow_uri: str, tmp_path: Path, stop: signal.Signals
) -> None:
    """SIGTERM (a service manager) or SIGINT (Ctrl-C) to `lakhflow ui` ends the MLflow server
    and every process it started: the port stops answering and nothing is left behind."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with open(tmp_path / "ui.log", "w+") as log:
        ui = subprocess.Popen(
            ["lakhflow", "ui", "--port", str(port)],
            cwd=project,
            env=tool_env(MLFLOW_TRACKING_URI=mlflow_uri),
            stdout=log,
            stderr=subprocess.STDOUT,
            # as started from a terminal: a test run started in the background (`nohup ... &`)
            # passes SIGINT on ignored, and Python then never turns Ctrl-C into an interrupt
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        server_group = None
        try:
            deadline = time.monotonic() + 300
            while not answers(url):
                assert ui.poll() is None, (tmp_path / "ui.log").read_text()
                assert time.monotonic() < deadline, "the MLflow UI never answered"
                time.sleep(0.5)
            server = psutil.Process(ui.pid).children()[0]
            server_group = os.getpgid(server.pid)
            assert server_group != os.getpgid(ui.pid)  # a group of its own
            started = group_members(server_group)
            assert started
            ui.send_signal(stop)
            code = ui.wait(timeout=60)
            assert code == 130
            assert not answers(url)
            assert group_members(server_group) == []
            assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in started)
        finally:
            if ui.poll() is None:
                ui.kill()
            if server_group is not None:
                for proc in group_members(server_group):
                    proc.kill()
        log.seek(0)
        assert log.read().strip().splitlines()[-1] == "lakhflow ui: interrupted"


# --------------------------------------------------------------------------- write errors


def write_archive(path: Path, midis: list[Path]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for midi in midis:
            data = midi.read_bytes()
            info = tarfile.TarInfo(f"bach/{midi.name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# Runs in a mount namespace of its own: DIR on a fresh tmpfs holding a copy of its files, then
# either read-only or filled up to FREE KiB; the command's exit code is the script's, and what
# the tmpfs held after it is copied to AFTER (the mount goes with the namespace).
SMALL_DISK = r"""
set -e
dir=$1 saved=$2 after=$3 free=$4
shift 4
mount -t tmpfs -o size=16m lakhflow-test "$dir"
cp -a "$saved/." "$dir/"
if [ "$free" = ro ]; then
    mount -o remount,ro "$dir"
else
    dd if=/dev/zero of="$dir/.filler" bs=4k 2>/dev/null || true
    truncate -s "-${free}K" "$dir/.filler"
fi
set +e
"$@"
code=$?
rm -f "$dir/.filler" 2>/dev/null
cp -a "$dir/." "$after/"
exit $code
"""


def on_small_disk(
    project: Path, folder: str, args: list[str], free_kb: int | None
) -> tuple[subprocess.CompletedProcess[str], dict[str, bytes]]:
    """Run `args` in `project` with `folder` on a tmpfs with `free_kb` KiB left (None:
    read-only); returns the result and the folder's files as the command left them."""
    dir_ = project / folder
    saved = project.parent / "saved"
    after = project.parent / "after"
    shutil.rmtree(saved, ignore_errors=True)
    shutil.rmtree(after, ignore_errors=True)
    shutil.copytree(dir_, saved, symlinks=True)
    after.mkdir()
    free = "ro" if free_kb is None else str(free_kb)
    cmd = ["unshare", "--mount", "sh", "-c", SMALL_DISK, "sh", str(dir_), str(saved),
           str(after), free, *args]  # fmt: skip
    result = run_cli(cmd, cwd=project, timeout=300)
    return result, files_in(after)


def files_in(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def chorales_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("chorales")
    return write_archive(root / "chorales.tar.gz", bach_midi(root / "midi", CHORALES[:6]))


def parse_project(tmp_path: Path, archive: Path) -> Path:
    """A project with data/raw/bach.tar.gz and a previous parse's outputs (stand-ins that no
    parse writes, so that any change to them shows)."""
    project = make_project(tmp_path / "project", {"parse": {"workers": 1, "part_files": 2}})
    (project / "data" / "raw").mkdir(parents=True)
    shutil.copyfile(archive, project / "data" / "raw" / "bach.tar.gz")
    notes = project / "data" / "notes"
    notes.mkdir()
    (notes / "notes-00000.parquet").write_bytes(b"the previous run's part")
    (notes / "stats.json").write_text('{"previous": true}\n')
    return project


@pytest.mark.parametrize(
    ("free_kb", "reason"), [(16, "no space left on device"), (None, "read-only file system")]
)
def test_parse_on_a_full_or_read_only_disk(
    tmp_path: Path, chorales_archive: Path, free_kb: int | None, reason: str
) -> None:
    project = parse_project(tmp_path, chorales_archive)
    before = files_in(project / "data")
    result, after = on_small_disk(project, "data", ["lakhflow", "parse"], free_kb)
    assert result.returncode == 1, result.stderr
    line = one_error_line(result.stderr, "parse")
    assert line.startswith(f"cannot write {project / 'data' / 'notes'}")
    assert line.endswith(f": {reason}")
    assert after == before
    # the control: with room to write, the same command replaces those outputs
    done = run_cli(["lakhflow", "parse"], cwd=project)
    assert done.returncode == 0, done.stderr
    assert files_in(project / "data") != before


@pytest.mark.parametrize(
    ("free_kb", "reason"), [(0, "no space left on device"), (None, "read-only file system")]
)
def test_download_on_a_full_or_read_only_disk(
    project: Path, chorales_archive: Path, free_kb: int | None, reason: str
) -> None:
    published = project / "data" / "raw" / "path.tar.gz"
    published.parent.mkdir(parents=True)
    published.write_bytes(b"the archive the user already had")
    before = files_in(project / "data")
    args = ["lakhflow", "download", "-S", "download.source=path",
            "-S", f"download.path={chorales_archive}"]  # fmt: skip
    result, after = on_small_disk(project, "data", args, free_kb)
    assert result.returncode == 1, result.stderr
    assert one_error_line(result.stderr, "download") == f"cannot write {published}: {reason}"
    assert after == before
    done = run_cli(args, cwd=project)
    assert done.returncode == 0, done.stderr
    assert published.read_bytes() == chorales_archive.read_bytes()
