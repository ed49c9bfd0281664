"""Generate stage: the trained model (data/model/ or an MLflow URI) and primers -> new music.

Writes `data/generated/<name>-NNN.mid` (primer first), a piano-roll PNG and a WAV of each piece
(rendered by FluidSynth where its system library loads, else by tinysoundfont, in-process), and
`manifest.json`; logs them to the MLflow run of the model.
"""

from __future__ import annotations

import logging
import os
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipelines import registry, storage, tracking
from pipelines.config import Config, Generate
from pipelines.errors import LakhflowError, ParamsError
from pipelines.generator import NoteSampler, Sampling, load_keras, style_names
from pipelines.instruments import DRUMS, PART_CLASSES, part_name, part_programs
from pipelines.midi import FEATURES, Notes, PartTrack, seconds_per_unit, tempo_of, to_midi
from pipelines.primers import (
    PRIMER_CANDIDATES,
    Primers,
    midi_primer,
    pitches_primer,
)
from pipelines.schema import OTHER_STYLE

log = logging.getLogger(__name__)

SAMPLE_RATE = 22050
# As pretty_midi's FluidSynth rendering does: the last notes ring out for a second.
RELEASE_S = 1.0
# FluidSynth sounds better, but needs a system library (libfluidsynth); tinysoundfont is a
# wheel that renders the same SoundFont in-process, so a WAV needs nothing installed by hand.
Renderer = Literal["fluidsynth", "tinysoundfont"]


@dataclass
class Source:
    """The model that generates, and where it came from (for the manifest and MLflow)."""

    model: Any
    manifest: dict[str, Any]
    uri: str
    version: str | None = None
    run_id: str | None = None
    sampler: NoteSampler | None = None


# --------------------------------------------------------------------------- the model


def load_source(cfg: Config) -> Source:
    """data/model/ (what DVC tracks) when generate.model_uri is null, else the MLflow model."""
    uri = cfg.generate.model_uri
    if uri is None:
        model_dir = cfg.paths.model
        if not cfg.paths.model_file.exists():
            raise LakhflowError(
                f"no trained model at {cfg.paths.model_file}; run `lakhflow train` first "
                "or set generate.model_uri"
            )
        manifest = storage.read_json(cfg.paths.model_manifest)
        run = storage.read_json(cfg.paths.model_run) if cfg.paths.model_run.exists() else {}
        return Source(
            model=load_keras(cfg.paths.model_file),
            manifest=manifest,
            uri=str(run.get("model_uri") or model_dir),
            version=str(run["model_version"]) if run.get("model_version") else None,
            run_id=run.get("run_id"),
        )
    tracking.setup(cfg.paths)
    version, run_id = registry.version_of_uri(uri) if uri.startswith("models:/") else (None, None)
    if uri.startswith("runs:/"):
        run_id = uri.removeprefix("runs:/").split("/", 1)[0]
    generator = registry.load_generator(uri)
    return Source(
        model=generator.keras_model,
        manifest=generator.manifest,
        uri=uri,
        version=version,
        run_id=run_id,
        sampler=generator.sampler,
    )


# --------------------------------------------------------------------------- primers


def split_primers(
    cfg: Config, manifest: dict[str, Any], count: int, rng: np.random.Generator
) -> Primers:
    """`count` windows of `generate.primer_notes` notes from the test split, chosen by the seed
    (from files of `generate.group` where the test split holds any)."""
    from pipelines import dataset

    length = cfg.generate.primer_notes
    wanted = cfg.generate.group
    shard_manifest = dataset.read_manifest(cfg.paths.shards)
    # Windows exactly as long as the primer, not overlapping, so candidates differ.
    framed = {**shard_manifest, "seq_length": length - 1}
    stream = dataset.windows(cfg.paths.shards, "test", framed, batch_size=256, stride=length)
    found: dict[str, list[np.ndarray]] = {k: [] for k in (*FEATURES, "group")}
    total = 0
    for batch in stream:
        for k in found:
            found[k].append(np.asarray(batch[k]))
        total += int(batch["pitch"].shape[0])
        if total >= PRIMER_CANDIDATES:
            break
    if total == 0:
        raise LakhflowError(
            f"the test split has no run of {length} notes for a primer; lower "
            "generate.primer_notes or set generate.primer_pitches / generate.primer_midi"
        )
    candidates = Notes(**{k: np.concatenate(found[k])[:PRIMER_CANDIDATES] for k in FEATURES})
    groups = [g.decode() for g in np.concatenate(found["group"])[:PRIMER_CANDIDATES]]
    pool = np.arange(len(groups))
    if wanted and wanted in groups:
        pool = np.flatnonzero(np.asarray(groups, dtype=object) == wanted)
    elif wanted:
        log.warning("the test split has no primer from group %s: primers from any group", wanted)
    picked = rng.choice(pool, size=count, replace=count > len(pool))
    primer = candidates.take(picked)
    described = [
        {"source": "test split", "window": int(i), "notes": length, "group": groups[i]}
        for i in picked.tolist()
    ]
    return Primers(primer, described)


def make_primers(
    cfg: Config, manifest: dict[str, Any], count: int, rng: np.random.Generator
) -> Primers:
    g = cfg.generate
    if g.primer_notes == 0 and (g.primer_midi or g.primer_pitches):
        raise ParamsError(
            "generate.primer_notes is 0 (no primer) but generate.primer_midi or primer_pitches "
            "is set; give the primer notes, or unset the primer"
        )
    if g.primer_notes == 0:
        empty = Notes(**{k: np.zeros((count, 0)) for k in FEATURES})
        return Primers(empty, [{"source": "none", "notes": 0} for _ in range(count)])
    if g.primer_midi:
        path = Path(g.primer_midi)
        path = path if path.is_absolute() else cfg.paths.root / path
        one, tempo = midi_primer(path, g.primer_notes, manifest)
        batch = one.repeated(count)
        described = {"source": "midi", "path": str(g.primer_midi), "notes": len(one)}
        return Primers(batch, [dict(described) for _ in range(count)], tempo)
    if g.primer_pitches:
        one = pitches_primer(g.primer_pitches, manifest)
        batch = one.repeated(count)
        described = {"source": "pitches", "pitches": g.primer_pitches, "notes": len(one)}
        return Primers(batch, [dict(described) for _ in range(count)])
    return split_primers(cfg, manifest, count, rng)


def piece_styles(g: Generate, manifest: dict[str, Any], primers: Primers) -> list[str]:
    """Each piece's style: generate.group; else its primer's group (test-split primers; a group
    the model pooled is `other`); else the model's styles in turn. [] for a model without."""
    styles = style_names(manifest)
    if not styles:
        if g.group:
            raise ParamsError(
                f"generate.group: {g.group!r}, but the model has no styles (it was trained with "
                "train.condition: none)"
            )
        return []
    if g.group:
        if g.group not in styles:
            raise ParamsError(
                f"generate.group: unknown group {g.group!r}; the model knows {', '.join(styles)}"
            )
        return [g.group] * len(primers.described)
    # in turn: the styles the model learned from files (`other` may have none)
    learned = [s["name"] for s in manifest["style"]["groups"] if s["train_files"] > 0] or styles
    return [
        (d["group"] if d["group"] in styles else OTHER_STYLE)
        if "group" in d
        else learned[i % len(learned)]
        for i, d in enumerate(primers.described)
    ]


# --------------------------------------------------------------------------- audio


def fluidsynth_loads() -> bool:
    """pyfluidsynth imports only where the system's libfluidsynth is installed."""
    try:
        import fluidsynth  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def tinysoundfont_loads() -> bool:
    try:
        import tinysoundfont  # noqa: F401
    except ImportError:
        return False
    return True


def wav_renderer() -> Renderer | None:
    """FluidSynth where it loads, else tinysoundfont; None where neither does."""
    if fluidsynth_loads():
        return "fluidsynth"
    if tinysoundfont_loads():
        return "tinysoundfont"
    return None


def general_midi_soundfont() -> Path:
    """The General MIDI SoundFont pretty_midi ships (TimGM6mb.sf2), which its FluidSynth uses."""
    import pretty_midi

    return Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"


def tinysoundfont_audio(midi: Any) -> np.ndarray:
    """The piece's notes played on the General MIDI SoundFont, mono float samples.

    Each instrument gets its own MIDI channel (drums channel 10), as FluidSynth would play the
    file; the audio lasts until the last note ends plus RELEASE_S, as pretty_midi's does.
    """
    import tinysoundfont

    synth = tinysoundfont.Synth(samplerate=SAMPLE_RATE)
    soundfont = synth.sfload(str(general_midi_soundfont()))
    melodic = [c for c in range(16) if c != 9]
    events: list[tuple[float, int, int, int, int]] = []  # (seconds, on, channel, pitch, velocity)
    for i, instrument in enumerate(midi.instruments):
        channel = 9 if instrument.is_drum else melodic[i % len(melodic)]
        try:
            synth.program_select(channel, soundfont, 0, instrument.program, instrument.is_drum)
        except RuntimeError:  # a program the SoundFont lacks: program 0, as pretty_midi for drums
            synth.program_select(channel, soundfont, 0, 0, instrument.is_drum)
        for note in instrument.notes:
            events.append((note.start, 1, channel, note.pitch, note.velocity))
            events.append((note.end, 0, channel, note.pitch, 0))
    events.sort()  # a note's end before another's start at the same time, as FluidSynth
    total = int(np.ceil((midi.get_end_time() + RELEASE_S) * SAMPLE_RATE))
    stereo = np.zeros((total, 2), np.float32)
    done = 0

    def play_until(sample: int) -> None:
        nonlocal done
        if sample > done:
            stereo[done:sample] = np.frombuffer(synth.generate(sample - done), np.float32).reshape(
                -1, 2
            )
            done = sample

    for seconds, on, channel, pitch, velocity in events:
        play_until(min(round(seconds * SAMPLE_RATE), total))
        if on:
            synth.noteon(channel, pitch, velocity)
        else:
            synth.noteoff(channel, pitch)
    play_until(total)
    return stereo.mean(axis=1)


def write_wav(midi: Any, path: Path, renderer: Renderer) -> None:
    """Render with the General MIDI SoundFont pretty_midi ships, 16-bit mono."""
    if renderer == "fluidsynth":
        audio = np.asarray(midi.fluidsynth(fs=SAMPLE_RATE), dtype=np.float64)
    else:
        audio = tinysoundfont_audio(midi).astype(np.float64)
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak > 0:
        audio = audio / peak * 0.9
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes((audio * 32767).astype("<i2").tobytes())


# --------------------------------------------------------------------------- instruments


def part_tracks(manifest: dict[str, Any], g: Generate) -> dict[int, PartTrack]:
    """The track every part of the model's vocabulary is written to: its name ("piano-1"), the
    program `generate.program` and `generate.programs` give it (instruments.part_programs),
    and drums as drums."""
    parts = manifest.get("parts")
    if not parts:
        raise LakhflowError(
            "the model's manifest has no parts (a model from before parts); train it again"
        )
    max_rank = int(parts["max_rank"])
    return {
        index: PartTrack(
            name=part_name(index, max_rank),
            program=program,
            is_drum=PART_CLASSES[index // max_rank] == DRUMS,
        )
        for index, program in part_programs(manifest, g.program, g.programs).items()
    }


# --------------------------------------------------------------------------- the stage


def sampling_of(g: Generate) -> Sampling:
    return Sampling.with_temperature(
        g.temperature,
        top_k=g.top_k,
        top_p=g.top_p,
        greedy=g.greedy,
        repetition_penalty=g.repetition_penalty,
        repetition_window=g.repetition_window,
    )


def output_dir(cfg: Config) -> Path:
    if cfg.generate.output is None:
        return cfg.paths.generated
    path = Path(cfg.generate.output).expanduser()
    # normpath, not resolve: `..` must not hide the folder meant, and links stay as named
    return Path(os.path.normpath(path if path.is_absolute() else cfg.paths.root / path))


def log_to_run(cfg: Config, run_id: str | None, folder: Path) -> bool:
    """Log the written files as artifacts of the model's MLflow run."""
    from mlflow import MlflowClient

    if not run_id:
        log.warning("the model has no MLflow run (no run.json): files not logged to MLflow")
        return False
    where = "generated" if cfg.generate.output is None else f"generated/{folder.name}"
    try:
        tracking.setup(cfg.paths)
        MlflowClient().log_artifacts(run_id, str(folder), artifact_path=where)
    except tracking.errors(LakhflowError) as exc:
        log.warning(
            "could not log to MLflow run %s (%s); the pieces are kept in %s",
            run_id, tracking.reason(exc), folder,
        )  # fmt: skip
        return False
    return True


def run(cfg: Config, *, renderer: Renderer | None = None) -> dict[str, Any]:
    """The stage. `renderer` picks the WAV renderer; None: the best that loads here."""
    from pipelines.plots import piano_roll

    g = cfg.generate  # generate.program and the programs' names are checked by config
    sampling = sampling_of(g)
    dest = output_dir(cfg)
    declared = dest == cfg.paths.generated
    storage.claim_dir(dest, "generate", declared=declared)  # before any work, and again at the end
    tracking.check(cfg.paths)
    source = load_source(cfg)
    sampler = source.sampler or NoteSampler(source.model, source.manifest)
    manifest = source.manifest
    tracks = part_tracks(manifest, g)  # a part named past the model's ranks is refused here
    rng = np.random.default_rng(g.seed)
    primers = make_primers(cfg, manifest, g.count, rng)
    styles = piece_styles(g, manifest, primers)
    names = style_names(manifest)
    tempo = g.tempo_bpm or primers.tempo_bpm or tempo_of(manifest)

    started = time.perf_counter()
    pieces = sampler.generate(
        primers.notes,
        sampling,
        rng,
        notes=None if g.seconds else g.notes,
        seconds=g.seconds,
        tempo_bpm=tempo,
        style=np.asarray([names.index(s) for s in styles]) if styles else None,
    )
    elapsed = time.perf_counter() - started
    primed = len(primers.notes)
    made = sum(len(p) - primed for p in pieces)

    wav = (renderer or wav_renderer()) if g.wav else None
    if g.wav and not wav:
        log.info("neither FluidSynth nor tinysoundfont loads; no WAV")
    scale = seconds_per_unit(manifest, tempo)
    described = []
    with storage.atomic_dir(dest, "generate", declared=declared) as tmp:
        for i, piece in enumerate(pieces):
            stem = f"{g.name}-{i:03d}"
            start = piece.starts() * scale
            end = start + piece.duration * scale
            midi = to_midi(piece, manifest, tempo, tracks)
            midi.write(str(tmp / f"{stem}.mid"))
            piano_roll(
                piece.pitch,
                start,
                end,
                tmp / f"{stem}.png",
                f"{stem}: {primed} primer notes + {len(piece) - primed} generated",
                velocity=piece.velocity,
                primer_end=float(start[primed]) if 0 < primed < len(piece) else None,
                part=piece.part,
                part_names={p: tracks[p].name for p in np.unique(piece.part).tolist()},
            )
            if wav:
                write_wav(midi, tmp / f"{stem}.wav", wav)
            described.append(
                {
                    "midi": f"{stem}.mid",
                    "piano_roll": f"{stem}.png",
                    "wav": f"{stem}.wav" if wav else None,
                    "wav_renderer": wav,
                    "notes": len(piece),
                    "generated_notes": len(piece) - primed,
                    "seconds": round(float(midi.get_end_time()), 3),
                    "seed": g.seed,
                    "index_in_batch": i,
                    "style": styles[i] if styles else None,
                    "parts": [tracks[p].name for p in np.unique(piece.part).tolist()],
                    "primer": {**primers.described[i], "pitch": piece.pitch[:primed].tolist()},
                }
            )
        storage.write_json(
            tmp / cfg.paths.generated_manifest.name,
            {
                "model": {
                    "uri": source.uri,
                    "version": source.version,
                    "run_id": source.run_id,
                    "heads": "categorical" if sampler.categorical else "regression",
                },
                "params": g.model_dump(mode="json"),
                "seed": g.seed,
                "part_programs": {
                    tracks[v["index"]].name: tracks[v["index"]].program
                    for v in manifest.get("parts", {}).get("vocabulary", [])
                },
                "tempo_bpm": tempo,
                "time_unit": manifest.get("time_unit", "beats"),
                "pieces": described,
            },
        )
    logged = log_to_run(cfg, source.run_id, dest)
    rate = made / elapsed if elapsed > 0 else 0.0
    log.info(
        "generate: wrote %d pieces (%d primer + %d new notes in all, %.0f notes/s) as MIDI, "
        "piano rolls%s and manifest.json to %s, from %s%s%s.",
        len(pieces),
        primed * len(pieces),
        made,
        rate,
        f" and WAVs ({wav})" if wav else "",
        dest,
        source.uri,
        f" (version {source.version})" if source.version else "",
        f"; logged to MLflow run {source.run_id}" if logged else "",
    )
    return {
        "pieces": len(pieces),
        "notes": made,
        "notes_per_s": round(rate, 1),
        "wav": wav is not None,
        "wav_renderer": wav,
    }
