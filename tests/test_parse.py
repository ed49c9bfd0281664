"""The parse stage end to end: real and broken MIDI in a .tar.gz -> note tables, crash-proof."""

from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import mido
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import another_hash_seed, folder_digests, make_midi, make_project, run_cli, tool_env
from faulty_parsers import FaultyParser, worker_env

from pipelines import config, parse, schema, workers

PARAMS = {
    "download": {"source": "bach"},
    "parse": {"workers": 2, "part_files": 3},
}
CHORALES = ["bwv66.6", "bwv7.7", "bwv84.5", "bwv40.8"]
HOOKED = ("hang.mid", "crash.mid", "hog.mid", "garbled.mid")


# --------------------------------------------------------------------------- the test corpus


def chorale_midi(name: str) -> bytes:
    from music21 import corpus

    score = corpus.parse(f"bach/{name}")
    path = score.write("midi")
    data = Path(path).read_bytes()
    Path(path).unlink()
    return data


def multitrack_midi(seed: int) -> bytes:
    """Several programs, drums, varied velocities, then tempo changes in the conductor track."""
    import pretty_midi

    rng = np.random.default_rng(seed)
    pm = pretty_midi.PrettyMIDI(initial_tempo=100 + 10 * seed)
    for number, drum in [(0, False), (33, False), (48 + seed, False), (0, True)]:
        instrument = pretty_midi.Instrument(program=number, is_drum=drum)
        t = 0.0
        for _ in range(40 + 10 * seed):
            pitch = int(rng.integers(36, 50) if drum else rng.integers(40, 90))
            length = float(rng.choice([0.125, 0.25, 0.5, 1.0]))
            velocity = int(rng.integers(20, 127))
            instrument.notes.append(pretty_midi.Note(velocity, pitch, t, t + length))
            t += float(rng.choice([0.0, 0.125, 0.25, 0.5]))
        pm.instruments.append(instrument)
    buffer = io.BytesIO()
    pm.write(buffer)
    file = mido.MidiFile(file=io.BytesIO(buffer.getvalue()))
    conductor = file.tracks[0]
    absolute = []
    tick = 0
    for message in conductor:
        tick += message.time
        absolute.append((tick, message))
    for k, bpm in enumerate([72, 140, 96]):
        at = (k + 1) * 4 * file.ticks_per_beat
        absolute.append((at, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm))))
    absolute.sort(key=lambda e: (e[0], e[1].type == "end_of_track"))
    conductor.clear()
    last = 0
    for tick, message in absolute:
        conductor.append(message.copy(time=tick - last))
        last = tick
    out = io.BytesIO()
    file.save(file=out)
    return out.getvalue()


def tiny_midi(events: list[tuple[int, mido.Message | mido.MetaMessage]]) -> bytes:
    return make_midi([events])


def build_corpus() -> dict[str, bytes]:
    """member name -> bytes, with the status each must get."""
    members: dict[str, bytes] = {}
    chorales = [chorale_midi(name) for name in CHORALES]
    for name, data in zip(CHORALES, chorales, strict=True):
        members[f"bach/{name}.mid"] = data
    for seed in range(3):
        members[f"pop/multitrack{seed}.mid"] = multitrack_midi(seed)
    note = mido.Message("note_on", note=60, velocity=80)
    end = mido.Message("note_off", note=60)
    members["broken/zero_tempo.mid"] = tiny_midi(  # the zero tempo is ignored: ok
        [(0, mido.MetaMessage("set_tempo", tempo=0)), (0, note), (480, end)]
    )
    members["broken/no_notes.mid"] = tiny_midi([(0, mido.MetaMessage("track_name", name="x"))])
    members["broken/truncated.mid"] = chorales[0][: len(chorales[0]) // 2]
    members["broken/random.mid"] = np.random.default_rng(0).bytes(3000)
    members["broken/zero_length.mid"] = b""
    members["broken/bad_header.mid"] = b"MThx" + chorales[1][4:]
    members["broken/huge_tick.mid"] = tiny_midi([(0, note), (50_000_000, end)])
    members["copies/bwv66.6.mid"] = chorales[0]  # a duplicate
    # Valid files that the faulty parser makes hang, crash, eat memory or send a malformed
    # answer (ok with the real one).
    for k, name in enumerate(HOOKED):
        members[f"hooks/{name}"] = multitrack_midi(10 + k)
    return members


EXPECTED = {
    "ok": len(CHORALES) + 3 + 1 + len(HOOKED),
    "empty": 1,
    "duplicate": 1,
    "quarantined": 5,
}


def write_archive(members: dict[str, bytes], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="session")
def corpus_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_archive(build_corpus(), tmp_path_factory.mktemp("corpus") / "bach.tar.gz")


def new_project(tmp: Path, archive: Path, **parse_params: object) -> Path:
    params = {**PARAMS, "parse": {**PARAMS["parse"], **parse_params}}
    root = make_project(tmp, params)
    raw = root / "data" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "bach.tar.gz").write_bytes(archive.read_bytes())
    return root


def run_stage(root: Path, *overrides: str, parser: parse.MidiParser | None = None) -> dict:
    return parse.run(config.load(root, list(overrides)), parser)


def read_tables(root: Path) -> dict[str, object]:
    notes = root / "data" / "notes"
    return {p.name: pq.read_table(p) for p in sorted(notes.glob("*.parquet"))}


def files_table(root: Path):
    return pq.read_table(root / "data" / "notes" / "files.parquet").to_pandas()


def assert_same_tables(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].equals(b[name]), name


@pytest.fixture(scope="session")
def baseline(corpus_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`lakhflow parse` through the CLI on a project whose download.source is bach."""
    root = new_project(tmp_path_factory.mktemp("baseline") / "project", corpus_archive)
    result = run_cli(["lakhflow", "parse"], cwd=root, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "parse:" in result.stderr and "quarantined" in result.stderr
    return root


# --------------------------------------------------------------------------- the tests


@pytest.mark.slow
def test_cli_accounts_for_every_input(baseline: Path) -> None:
    files = files_table(baseline)
    assert len(files) == sum(EXPECTED.values())
    assert files["status"].value_counts().to_dict() == EXPECTED
    by_path = files.set_index("path")
    assert by_path.loc["copies/bwv66.6.mid", "status"] == "duplicate"
    assert by_path.loc["broken/no_notes.mid", "status"] == "empty"
    assert by_path.loc["broken/zero_tempo.mid", "status"] == "ok"
    bad = by_path[by_path["status"] == "quarantined"]
    assert set(bad.index) == {
        "broken/truncated.mid", "broken/random.mid", "broken/zero_length.mid",
        "broken/bad_header.mid", "broken/huge_tick.mid",
    }  # fmt: skip
    assert bad["error_type"].notna().all() and bad["error"].str.len().gt(0).all()
    assert "largest tick" in by_path.loc["broken/huge_tick.mid", "error"]
    assert by_path.loc["bach/bwv66.6.mid", "group"] == "bach"
    ok = files[files["status"] == "ok"]
    assert (ok["n_notes"] > 0).all() and (ok["duration_s"] > 0).all()

    stats = json.loads((baseline / "data" / "notes" / "stats.json").read_text())
    assert stats["files"] == {"inputs": len(files), **EXPECTED}
    assert stats["notes"] == int(ok["n_notes"].sum()) and stats["hours"] > 0
    assert stats["programs"]["most_common"] and stats["programs"]["drum_notes"] > 0
    plots = sorted(p.name for p in (baseline / "data" / "notes" / "plots").glob("*.png"))
    assert plots == ["duration.png", "piano_roll.png", "pitch.png", "programs.png", "step.png"]


@pytest.mark.slow
def test_note_parts_are_bounded_sorted_and_typed(baseline: Path) -> None:
    parts = sorted((baseline / "data" / "notes").glob("notes-*.parquet"))
    assert len(parts) > 1
    tables = [pq.read_table(p) for p in parts]
    files = files_table(baseline)
    ok = files[files["status"] == "ok"].set_index("file_id")
    parsed = files[files["status"] != "duplicate"].reset_index(drop=True)
    seen: list[str] = []
    for table in tables:
        assert table.schema.equals(schema.NOTES)
        assert pq.ParquetFile(parts[0]).metadata.row_group(0).column(0).compression == "ZSTD"
        # A part holds the files of one batch: part_files consecutive inputs (duplicates
        # aside), each file's notes together, sorted by file_id, track, start, pitch.
        key = table.select(schema.NOTES_SORT).to_pandas().to_records(index=False).tolist()
        assert key == sorted(key)
        ids = list(dict.fromkeys(table.column("file_id").to_pylist()))
        rows = parsed.index[parsed["file_id"].isin(ids)]
        assert rows.max() // 3 == rows.min() // 3
        seen += ids
    assert len(seen) == len(set(seen)) == len(ok)
    notes = pa_concat(tables).to_pandas()
    counts = notes.groupby("file_id").size()
    assert counts.to_dict() == ok["n_notes"].to_dict()
    assert notes["pitch"].between(0, 127).all() and notes["velocity"].between(1, 127).all()
    assert (notes["end"] >= notes["start"]).all() and (
        notes["end_beat"] >= notes["start_beat"]
    ).all()
    multitrack = notes[notes["file_id"] == ok.index[ok["path"] == "pop/multitrack1.mid"][0]]
    assert multitrack["program"].nunique() >= 3 and multitrack["is_drum"].any()
    assert multitrack["velocity"].nunique() > 20
    # tempo changes: seconds per beat is not one constant
    rate = (multitrack["end"] - multitrack["start"]) / (
        multitrack["end_beat"] - multitrack["start_beat"]
    )
    assert rate.round(3).nunique() > 1


def pa_concat(tables: list):
    import pyarrow as pa

    return pa.concat_tables(tables)


@pytest.mark.slow
def test_another_process_with_one_worker_writes_the_same_bytes(
    baseline: Path, corpus_archive: Path, tmp_path: Path
) -> None:
    """The baseline parsed with two workers; one worker, in another process with another hash
    seed, must write every part, files.parquet, stats.json and plot byte for byte: DVC hashes
    data/notes, and any other byte reruns sequences and training."""
    root = new_project(tmp_path / "project", corpus_archive)
    done = run_cli(["lakhflow", "parse", "-S", "parse.workers=1"], cwd=root, timeout=300,
                   PYTHONHASHSEED=another_hash_seed())  # fmt: skip
    assert done.returncode == 0, done.stderr
    first = folder_digests(baseline / "data" / "notes")
    assert sum(name.startswith("notes-") for name in first) > 1
    assert {"files.parquet", "stats.json", "plots/piano_roll.png"} <= first.keys()
    assert folder_digests(root / "data" / "notes") == first


@pytest.mark.slow
def test_pretty_midi_gives_the_same_tables(
    baseline: Path, corpus_archive: Path, tmp_path: Path
) -> None:
    root = new_project(tmp_path / "project", corpus_archive, parser="pretty_midi")
    run_stage(root)
    a, b = read_tables(baseline), read_tables(root)
    assert [n for n in a if n.startswith("notes")] == [n for n in b if n.startswith("notes")]
    for name in a:
        if name.startswith("notes"):
            assert a[name].equals(b[name]), name
    fa, fb = files_table(baseline), files_table(root)
    assert fa[["file_id", "path", "status", "n_notes", "n_tracks"]].equals(
        fb[["file_id", "path", "status", "n_notes", "n_tracks"]]
    )
    np.testing.assert_allclose(fa["duration_s"], fb["duration_s"])


@pytest.fixture(scope="module")
def hooked(corpus_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One run where the faulty parser hangs, aborts, bloats and garbles one file each."""
    root = new_project(
        tmp_path_factory.mktemp("hooked") / "project",
        corpus_archive,
        timeout_s=3,
        max_memory_mb=1024,
    )
    faults = (("sleep", "hang.mid"), ("abort", "crash.mid"), ("allocate", "hog.mid"),
              ("garble", "garbled.mid"))  # fmt: skip
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PYTHONPATH", worker_env()["PYTHONPATH"])
        run_stage(root, parser=FaultyParser(faults=faults))
    return root


def hooked_row(root: Path, name: str):
    files = files_table(root).set_index("path")
    return files.loc[f"hooks/{name}"]


@pytest.mark.slow
def test_hanging_file_is_quarantined_after_the_timeout(hooked: Path) -> None:
    row = hooked_row(hooked, "hang.mid")
    assert (row["status"], row["error_type"]) == ("quarantined", "Timeout")


@pytest.mark.slow
def test_file_over_the_memory_bound_is_quarantined(hooked: Path) -> None:
    row = hooked_row(hooked, "hog.mid")
    assert (row["status"], row["error_type"]) == ("quarantined", "MemoryError")


@pytest.mark.slow
def test_malformed_answer_costs_only_its_file(hooked: Path) -> None:
    # Bytes that are not a frame (its length field reads as petabytes) cost the worker and
    # this file, never a MemoryError in the stage; the other hooked files keep their own fate.
    row = hooked_row(hooked, "garbled.mid")
    assert (row["status"], row["error_type"]) == ("quarantined", "ProtocolError")
    assert "over" in row["error"]
    files = files_table(hooked)
    assert (files["status"] == "quarantined").sum() == EXPECTED["quarantined"] + len(HOOKED)


def test_worker_answers_on_its_own_pipe_not_stdout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A print to the worker's stdout (an import's, or C code's) must not reach the answers.
    monkeypatch.setenv("PYTHONPATH", worker_env()["PYTHONPATH"])
    job = parse.NotePartJob(FaultyParser(faults=(("stdout", "a.mid"),)))
    worker = workers.BatchWorker(workers.WorkerSettings(job, 30.0, 2048))
    worker.start()
    try:
        assert worker.proc is not None and worker.proc.stdout is None
        midi_bytes = tiny_midi(
            [(0, mido.Message("note_on", note=60)), (480, mido.Message("note_off", note=60))]
        )
        result = worker.run_batch([("a.mid", "a", midi_bytes)], str(tmp_path / "a.parquet"))
        assert result.outcomes[0][:2] == ("ok", 1)
    finally:
        worker.close()
    assert worker.proc is None and worker.buffer == b""


@pytest.mark.slow
def test_crashing_worker_costs_only_its_file(hooked: Path, baseline: Path) -> None:
    row = hooked_row(hooked, "crash.mid")
    assert (row["status"], row["error_type"]) == ("quarantined", "WorkerCrash")
    assert "SIGABRT" in row["error"]
    files, base = files_table(hooked), files_table(baseline)
    hooked_paths = {f"hooks/{n}" for n in HOOKED}
    rest = files[~files["path"].isin(hooked_paths)].reset_index(drop=True)
    base_rest = base[~base["path"].isin(hooked_paths)].reset_index(drop=True)
    assert rest[["path", "status", "n_notes"]].equals(base_rest[["path", "status", "n_notes"]])
    lost = set(base.loc[base["path"].isin(hooked_paths), "file_id"])
    notes = pa_concat([t for n, t in read_tables(hooked).items() if n.startswith("notes")])
    notes = notes.to_pandas()
    base_notes = pa_concat([t for n, t in read_tables(baseline).items() if n.startswith("notes")])
    expected = base_notes.to_pandas()
    expected = expected[~expected["file_id"].isin(lost)].reset_index(drop=True)
    assert notes.equals(expected)


@pytest.mark.slow
def test_sigkill_then_resume_parses_only_the_rest(
    baseline: Path, corpus_archive: Path, tmp_path: Path
) -> None:
    root = new_project(tmp_path / "project", corpus_archive, workers=1)
    # The stage with a parser that takes 0.4 s a file, so the kill lands part way through.
    slow = (
        "from pathlib import Path; from faulty_parsers import FaultyParser\n"
        "from pipelines import config, parse\n"
        "parse.run(config.load(Path('.'), []), FaultyParser(faults=(('sleep=0.4', '*'),)))\n"
    )
    proc = subprocess.Popen(
        ["python", "-c", slow], cwd=root, env=worker_env(tool_env()),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    runs = root / ".lakhflow" / "work" / "parse"
    deadline = time.monotonic() + 120
    while not list(runs.glob("*/runs/run-*.json")) and time.monotonic() < deadline:
        assert proc.poll() is None, "the stage ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (root / "data" / "notes").exists()
    metrics = run_stage(root)
    to_parse = sum(EXPECTED.values()) - EXPECTED["duplicate"]
    assert 0 < metrics["parsed_files"] < to_parse
    assert metrics["resumed_batches"] > 0
    assert_same_tables(read_tables(baseline), read_tables(root))


@pytest.mark.slow
def test_dask_cluster_gives_the_same_tables(
    baseline: Path, corpus_archive: Path, tmp_path: Path
) -> None:
    from distributed import LocalCluster

    root = new_project(tmp_path / "project", corpus_archive)
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
        host="127.0.0.1",
    ) as cluster:  # fmt: skip
        metrics = run_stage(
            root, "parse.executor=dask", f"parse.scheduler_address={cluster.scheduler_address}"
        )
    assert metrics["files_ok"] == EXPECTED["ok"]
    assert_same_tables(read_tables(baseline), read_tables(root))


def test_missing_archive_is_one_clear_error(tmp_path: Path) -> None:
    root = make_project(tmp_path / "project", PARAMS)
    result = run_cli(["lakhflow", "parse"], cwd=root, timeout=120)
    assert result.returncode == 1
    assert "bach.tar.gz not found" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_damaged_resume_state_is_redone_and_stray_temporaries_cleared(
    baseline: Path, corpus_archive: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A part cut short, then a run file cut short: each run after names the file, parses the
    batches again and writes the baseline's tables; a killed writer's temporary is cleared."""
    root = new_project(tmp_path / "project", corpus_archive)
    run_stage(root)
    runs = next((root / ".lakhflow" / "work" / "parse").glob("*/runs"))
    to_parse = sum(EXPECTED.values()) - EXPECTED["duplicate"]

    part = sorted(runs.glob("batch-*.parquet"))[-1]
    stray = root / "data" / f".notes.tmp-{_dead_pid()}-0a1b2c3d"
    (stray / "plots").mkdir(parents=True)
    shutil.rmtree(root / "data" / "notes")  # as DVC does before it runs the stage again
    data = part.read_bytes()
    part.write_bytes(data[: len(data) // 2])
    metrics = run_stage(root)
    assert "names a damaged part" in caplog.text and part.name in caplog.text
    assert 0 < metrics["parsed_files"] < to_parse
    assert_same_tables(read_tables(baseline), read_tables(root))
    assert not stray.exists()
    assert not [p for p in (root / "data").iterdir() if ".tmp-" in p.name]

    caplog.clear()
    run_file = sorted(runs.glob("run-*.json"))[0]
    run_file.write_text(run_file.read_text()[:40])
    metrics = run_stage(root)
    assert f"{run_file} is damaged" in caplog.text
    assert metrics["parsed_files"] > 0
    assert_same_tables(read_tables(baseline), read_tables(root))


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_second_run_of_a_stage_is_refused_while_the_first_holds_it(tmp_path: Path) -> None:
    root = make_project(tmp_path / "project", PARAMS)
    hold = (
        "import sys, time; from pathlib import Path; from pipelines import storage\n"
        "with storage.stage_lock(Path('.lakhflow/work'), 'parse'):\n"
        "    print('held', flush=True); time.sleep(120)\n"
    )
    holder = subprocess.Popen(
        ["python", "-c", hold], cwd=root, env=tool_env(), stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        second = run_cli(["lakhflow", "parse"], cwd=root, timeout=120)
        assert second.returncode == 1
        line = second.stderr.strip().splitlines()[-1]
        assert line.startswith(
            f"lakhflow parse: error: another lakhflow parse is running in this project "
            f"(pid {holder.pid}, started "
        ), second.stderr
    finally:
        holder.kill()
        holder.wait()
    after = run_cli(["lakhflow", "parse"], cwd=root, timeout=120)  # the killed holder's lock
    assert after.returncode == 1 and "bach.tar.gz not found" in after.stderr
