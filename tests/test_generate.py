"""The generate stage end to end: real shards (music21 chorales through the sequences stage), a
model built by the train stage's builder (random weights: generation needs no training), MIDI
read back with pretty_midi, WAVs (measured: length and loudness), MLflow artifacts, the registry,
and one-line errors."""

from __future__ import annotations

import json
import logging
import shutil
import wave
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pretty_midi
import pytest
from conftest import another_hash_seed, folder_digests, notes_project, run_cli

from pipelines import cli, config, dataset, generate, instruments, sequences
from pipelines.config import Train
from pipelines.midi import PartTrack, parts_to_midi
from pipelines.model import build_model
from pipelines.registry import log_generator

PRIMER = 8
NOTES = 24
GENERATE = {"count": 3, "notes": NOTES, "primer_notes": PRIMER, "program": "violin"}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, note_corpus: dict) -> Path:
    """Shards from the sequences stage (a large test split) and an untrained model in data/model."""
    root = notes_project(
        tmp_path_factory.mktemp("generate") / "project",
        note_corpus,
        split={"train": 0.5, "val": 0.1, "test": 0.4},
        split_by="file",
    )
    sequences.run(config.load(root))
    manifest = dataset.read_manifest(root / "data" / "shards")
    assert manifest["splits"]["test"]["windows"] > 0
    model_dir = root / "data" / "model"
    model_dir.mkdir(parents=True)
    build_model(Train(units=16, embedding_dim=8), manifest).save(model_dir / "model.keras")
    shutil.copy2(root / "data" / "shards" / "manifest.json", model_dir / "manifest.json")
    params = config.read_params(root / "params.yaml")
    params["generate"].update(GENERATE)
    (root / "params.yaml").write_text(json.dumps(params))  # JSON is YAML
    return root


def run_stage(root: Path, out: Path, *overrides: str) -> dict[str, Any]:
    cfg = config.load(root, [f"generate.output={out}", *overrides])
    return generate.run(cfg)


def pieces(out: Path) -> list[pretty_midi.PrettyMIDI]:
    return [pretty_midi.PrettyMIDI(str(p)) for p in sorted(out.glob("piece-*.mid"))]


def all_notes(midi: pretty_midi.PrettyMIDI) -> list[pretty_midi.Note]:
    """Every part's notes of a piece, by start then pitch."""
    return sorted((n for i in midi.instruments for n in i.notes), key=lambda n: (n.start, n.pitch))


def wav_samples(path: Path) -> tuple[np.ndarray, int]:
    """A 16-bit mono WAV's samples as floats in [-1, 1], and its sample rate."""
    with wave.open(str(path)) as audio:
        assert audio.getnchannels() == 1 and audio.getsampwidth() == 2
        frames = audio.readframes(audio.getnframes())
        return np.frombuffer(frames, dtype="<i2") / 32768.0, audio.getframerate()


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples**2))) if samples.size else 0.0


def test_pieces_are_midi_with_the_primer_length_and_instrument_asked_for(
    project: Path, tmp_path: Path, mlflow_uri: str
) -> None:
    root = tmp_path / "project"
    shutil.copytree(project, root)
    mlflow.set_experiment("lakhflow")
    with mlflow.start_run() as run:
        pass
    run_json = {"run_id": run.info.run_id, "model_uri": "models:/lakhflow-lstm/1"}
    (root / "data" / "model" / "run.json").write_text(json.dumps(run_json | {"model_version": "1"}))
    out = root / "data" / "generated"
    metrics = generate.run(config.load(root))
    assert metrics["pieces"] == 3 and metrics["notes"] == 3 * NOTES and metrics["wav"]
    # FluidSynth where its system library is installed, else tinysoundfont: a WAV either way.
    assert metrics["wav_renderer"] is not None
    assert metrics["wav_renderer"] == generate.wav_renderer()

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] == {"uri": "models:/lakhflow-lstm/1", "version": "1",
                                 "run_id": run.info.run_id, "heads": "categorical"}  # fmt: skip
    assert manifest["params"]["count"] == 3 and manifest["seed"] == 0
    shards_manifest = dataset.read_manifest(root / "data" / "shards")
    assert manifest["tempo_bpm"] == pytest.approx(shards_manifest["tempo_bpm"])
    test_pitches = [c["pitch"].tolist() for c in dataset.chunks(root / "data" / "shards", "test")]
    for midi, piece in zip(pieces(out), manifest["pieces"], strict=True):
        assert {track.program for track in midi.instruments} == {40}  # violin: every part
        assert [t.name for t in midi.instruments] == piece["parts"]
        notes = all_notes(midi)
        assert len(notes) == PRIMER + NOTES == piece["notes"]
        assert midi.get_tempo_changes()[1][0] == pytest.approx(manifest["tempo_bpm"], rel=1e-3)
        primer = piece["primer"]["pitch"]
        assert piece["primer"]["source"] == "test split" and len(primer) == PRIMER
        # The primer opens the piece; it is a run of notes from a test-split track.
        assert sorted(n.pitch for n in notes[:PRIMER]) == sorted(primer)
        assert any(
            chunk[i : i + PRIMER] == primer for chunk in test_pitches for i in range(len(chunk))
        )
        assert (out / piece["piano_roll"]).stat().st_size > 1000
        assert piece["wav_renderer"] == metrics["wav_renderer"]
        samples, rate = wav_samples(out / piece["wav"])
        assert rate == 22050 and np.abs(samples).max() > 0.5  # not silence

    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "generated")}
    assert {"generated/piece-000.mid", "generated/piece-000.png", "generated/piece-000.wav",
            "generated/manifest.json"} <= logged  # fmt: skip


def test_tinysoundfont_sounds_the_notes_when_they_play_and_rings_out_a_second(
    tmp_path: Path,
) -> None:
    midi = pretty_midi.PrettyMIDI(initial_tempo=120)
    piano = pretty_midi.Instrument(program=0)
    piano.notes = [pretty_midi.Note(100, 60, 0.0, 0.5), pretty_midi.Note(100, 64, 2.5, 3.0)]
    midi.instruments = [piano]
    generate.write_wav(midi, tmp_path / "two-notes.wav", "tinysoundfont")
    samples, rate = wav_samples(tmp_path / "two-notes.wav")
    assert len(samples) / rate == pytest.approx(3.0 + generate.RELEASE_S, abs=2 / rate)

    def loudness(start: float, end: float) -> float:
        return rms(samples[int(start * rate) : int(end * rate)])

    assert loudness(0.0, 0.5) > 0.05 and loudness(2.5, 3.0) > 0.05  # each note sounds
    assert loudness(1.5, 2.5) < 0.005  # and the rest between them is silent
    assert loudness(3.5, 4.0) < 0.005  # the release has died away by the end


def test_tinysoundfont_plays_each_part_of_a_piece_in_parts(tmp_path: Path) -> None:
    """Four parts, each on its own channel with its own program (drums on channel 10), one
    after another: each sounds when it plays, and the rests between them are silent."""
    tracks = {
        0: PartTrack("piano-1", 0),
        3: PartTrack("piano-4", 42),  # cello
        36: PartTrack("pipe-1", 73),  # flute
        64: PartTrack("drums-1", 0, is_drum=True),
    }
    part = np.array([0, 3, 36, 64])
    start = np.array([0.0, 2.5, 5.0, 7.5])
    midi = parts_to_midi(np.array([72, 48, 79, 38]), start, start + 0.5,
                         np.full(4, 100), part, tracks, tempo_bpm=120.0)  # fmt: skip
    assert [(i.program, i.is_drum) for i in midi.instruments] == [
        (0, False), (42, False), (73, False), (0, True)
    ]  # fmt: skip
    generate.write_wav(midi, tmp_path / "parts.wav", "tinysoundfont")
    samples, rate = wav_samples(tmp_path / "parts.wav")
    assert len(samples) / rate == pytest.approx(8.0 + generate.RELEASE_S, abs=2 / rate)

    def loudness(start: float, end: float) -> float:
        return rms(samples[int(start * rate) : int(end * rate)])

    for onset in start.tolist():
        assert loudness(onset, onset + 0.5) > 0.02, onset  # each part sounds
    for rest in (1.7, 4.2, 6.7):
        assert loudness(rest, rest + 0.8) < 0.005, rest  # and has died away before the next


def test_parts_play_their_training_program_or_the_one_their_family_is_given(
    project: Path, tmp_path: Path
) -> None:
    """A piece is one MIDI track per part it plays, named by the part, on the part's training
    program, which generate.programs re-voices by family or by name."""
    parts = dataset.read_manifest(project / "data" / "shards")["parts"]
    lead = max(parts["vocabulary"], key=lambda v: (v["notes"], -v["index"]))
    assert lead["family"] == "piano"  # the chorales' voices
    cases = {
        "default": (["generate.program=null"], lead["program"]),
        "family": (["generate.program=null", "generate.programs={piano: string_ensemble_1}"], 48),
        "part": (["generate.program=flute", f"generate.programs={{{lead['name']}: cello}}"], 42),
        "program": (["generate.program=flute", "generate.programs={strings: cello}"], 73),
    }
    for case, (overrides, program) in cases.items():
        out = tmp_path / case
        run_stage(project, out, "generate.count=2", "generate.wav=false", *overrides)
        manifest = json.loads((out / "manifest.json").read_text())
        programs = manifest["part_programs"]
        assert set(programs) == {v["name"] for v in parts["vocabulary"]}
        assert programs[lead["name"]] == program, case
        for midi, piece in zip(pieces(out), manifest["pieces"], strict=True):
            names = [track.name for track in midi.instruments]
            assert names == piece["parts"] and len(names) == len(set(names)) >= 1
            for track in midi.instruments:
                family, rank = track.name.rsplit("-", 1)
                assert family in instruments.PART_CLASSES and int(rank) >= 1
                if track.name in programs:
                    assert track.program == programs[track.name], (case, track.name)


def test_the_stage_renders_wavs_with_tinysoundfont_where_asked(
    project: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Forced even where FluidSynth loads, so this renderer is tested on every machine."""
    out = tmp_path / "out"
    cfg = config.load(project, [f"generate.output={out}", "generate.count=2"])
    with caplog.at_level(logging.INFO, logger="pipelines.generate"):
        metrics = generate.run(cfg, renderer="tinysoundfont")
    assert metrics["wav"] and metrics["wav_renderer"] == "tinysoundfont"
    manifest = json.loads((out / "manifest.json").read_text())
    for piece in manifest["pieces"]:
        assert piece["wav_renderer"] == "tinysoundfont"
        samples, rate = wav_samples(out / piece["wav"])
        end = pretty_midi.PrettyMIDI(str(out / piece["midi"])).get_end_time()
        assert len(samples) / rate == pytest.approx(end + generate.RELEASE_S, abs=2 / rate)
        assert np.abs(samples).max() > 0.5 and rms(samples) > 0.02  # not silence
    (summary,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("generate:")]
    assert "WAVs (tinysoundfont)" in summary


def test_the_same_seed_gives_the_same_bytes_in_another_process_and_another_seed_other_music(
    project: Path, tmp_path: Path
) -> None:
    """Once in this process, once as `lakhflow generate` in another (another hash seed), into
    the same folder (the manifest records it): every MIDI, piano roll, WAV and the manifest."""
    out = tmp_path / "out"
    run_stage(project, out)
    first = folder_digests(out)
    shutil.rmtree(out)
    done = run_cli(["lakhflow", "generate", "-S", f"generate.output={out}"], project,
                   PYTHONHASHSEED=another_hash_seed())  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(first) == [".lakhflow-owner", "manifest.json"] + [
        f"piece-00{i}.{kind}" for i in range(3) for kind in ("mid", "png", "wav")
    ]
    assert folder_digests(out) == first

    run_stage(project, tmp_path / "c", "generate.wav=false", "generate.seed=1")
    a = [[n.pitch for n in all_notes(m)] for m in pieces(out)]
    c = [[n.pitch for n in all_notes(m)] for m in pieces(tmp_path / "c")]
    assert a != c


def test_a_pitch_list_primer_a_length_in_seconds_and_a_program_number(
    project: Path, tmp_path: Path
) -> None:
    run_stage(project, tmp_path / "out", "generate.primer_pitches='60 62 64 65 67'",
              "generate.seconds=6", "generate.program=73", "generate.tempo_bpm=90",
              "generate.wav=false")  # fmt: skip
    for midi in pieces(tmp_path / "out"):
        assert {track.program for track in midi.instruments} == {73}
        assert midi.get_tempo_changes()[1][0] == pytest.approx(90, rel=1e-3)
        notes = all_notes(midi)
        assert [n.pitch for n in notes[:5]] == [60, 62, 64, 65, 67]
        onsets = [n.start for n in notes[5:]]
        assert onsets and max(onsets) < notes[4].start + 6.0


def test_a_midi_file_primer_opens_every_piece_at_its_tempo(project: Path, tmp_path: Path) -> None:
    primer = pretty_midi.PrettyMIDI(initial_tempo=150)
    drums = pretty_midi.Instrument(program=0, is_drum=True)
    drums.notes = [pretty_midi.Note(100, 36, i * 0.2, i * 0.2 + 0.1) for i in range(20)]
    melody = pretty_midi.Instrument(program=0)
    pitches = [67, 69, 71, 72, 74, 72, 71, 69, 67, 66]
    melody.notes = [pretty_midi.Note(90, p, i * 0.4, i * 0.4 + 0.3) for i, p in enumerate(pitches)]
    primer.instruments = [drums, melody]
    primer.write(str(tmp_path / "primer.mid"))
    run_stage(project, tmp_path / "out", f"generate.primer_midi={tmp_path / 'primer.mid'}",
              "generate.wav=false")  # fmt: skip
    for midi in pieces(tmp_path / "out"):
        notes = all_notes(midi)
        assert [n.pitch for n in notes[:PRIMER]] == pitches[:PRIMER]
        assert [n.velocity for n in notes[:PRIMER]] == [90] * PRIMER
        assert notes[1].start == pytest.approx(0.4, abs=0.01)  # 1 beat at 150 bpm
        assert len(notes) == PRIMER + NOTES


@pytest.mark.slow
def test_a_registered_model_generates_and_gets_the_files(
    project: Path, tmp_path: Path, mlflow_uri: str
) -> None:
    mlflow.set_experiment("lakhflow")
    with mlflow.start_run() as run:
        info = log_generator(project / "data" / "model", registered_model_name="lakhflow-lstm")
    client = mlflow.MlflowClient()
    client.set_registered_model_alias("lakhflow-lstm", "champion", info.registered_model_version)
    out = tmp_path / "batch-1"
    metrics = run_stage(project, out, "generate.model_uri=models:/lakhflow-lstm@champion",
                        "generate.count=2", "generate.wav=false")  # fmt: skip
    assert metrics["pieces"] == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["version"] == "1" and manifest["model"]["run_id"] == run.info.run_id
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "generated/batch-1")}
    assert "generated/batch-1/piece-001.mid" in logged


@pytest.mark.parametrize(
    ("override", "code", "message"),
    [
        ("generate.temperature=0", 2, "temperature must be > 0"),
        ("generate.top_p=1.5", 2, "top_p"),
        ("generate.program=kazoo_supreme", 2, "unknown General MIDI instrument 'kazoo_supreme'"),
        ("generate.programs={lute: 24}", 2, "generate.programs: 'lute' is neither a family"),
        (
            "generate.programs={piano-9: cello}",
            2,
            "generate.programs: 'piano-9' names rank 9, but the model's parts have ranks 1-4",
        ),
        ("generate.group=bach", 2, "generate.group: 'bach', but the model has no styles"),
        ("generate.primer_midi=notes.txt", 1, "notes.txt is not a MIDI file"),
        ("generate.primer_midi=primers", 1, "primers is a folder, not a MIDI file"),
        ("generate.model_uri=models:/lakhflow-lstm@champion", 1, "does not exist"),
    ],
)
def test_bad_settings_end_with_one_line(
    project: Path,
    tmp_path: Path,
    mlflow_uri: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    override: str,
    code: int,
    message: str,
) -> None:
    (project / "notes.txt").write_text("not a MIDI file\n")
    (project / "primers").mkdir(exist_ok=True)
    monkeypatch.setenv("LAKHFLOW_ROOT", str(project))
    out = tmp_path / "out"  # tmp_path holds the MLflow store: generate would refuse it
    assert cli.main(["generate", "-S", override, "-S", f"generate.output={out}"]) == code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("lakhflow generate: error:")]
    assert len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in err and not out.exists()


def _listing(root: Path) -> dict[str, int]:
    """Every file and folder of the project and its size, but the stage locks' own files."""
    files = (p for p in sorted(root.rglob("*")) if ".lakhflow/locks" not in p.as_posix())
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in files}


@pytest.mark.parametrize("target", ["mine", "data", ".", "params.yaml"])
def test_generate_never_replaces_a_folder_it_did_not_write(
    project: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    target: str,
) -> None:
    """A user's folder, every stage's outputs, the project itself or a file: refused with one
    line before any work, and nothing in them is touched."""
    mine = project / "mine"
    mine.mkdir(exist_ok=True)
    (mine / "song.mid").write_bytes(b"a user's own file")
    before = _listing(project)
    monkeypatch.setenv("LAKHFLOW_ROOT", str(project))
    assert cli.main(["generate", "-S", f"generate.output={target}"]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("lakhflow generate: error:")]
    assert len(errors) == 1, err
    assert "refusing to replace" in errors[0] or "is not a folder" in errors[0], errors[0]
    assert "Traceback" not in err
    assert _listing(project) == before


def test_a_folder_generate_wrote_is_marked_and_replaced_next_time(
    project: Path, tmp_path: Path
) -> None:
    out = tmp_path / "batch"
    run_stage(project, out, "generate.count=1")
    assert (out / ".lakhflow-owner").read_text() == "generate\n"
    run_stage(project, out, "generate.count=2", "generate.name=again")
    assert sorted(p.name for p in out.glob("*.mid")) == ["again-000.mid", "again-001.mid"]
    assert [p.name for p in tmp_path.iterdir()] == ["batch"]  # no temporary left beside it
