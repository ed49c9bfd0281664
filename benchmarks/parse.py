"""Parse stage vs the notebooks' pretty_midi loop, on a seeded Lakh-like corpus (+ real files).

    .venv/bin/python benchmarks/parse.py [--files 3000] [--loop-files 150] [--repeat 1]
                                         [REAL.mid|FOLDER ...]

Builds (or reuses, under benchmarks/.cache/) a corpus of multitrack MIDI files with Lakh's event
mix (see `lakh_like`: controllers, pitch-bend runs, sustain pedal, metas, running status; tens of
KB each), prints the pretty_midi rate next to the one measured on real files as a check, runs
`lakhflow parse` on it in a subprocess (all cores, peak resident memory of the process tree
sampled, wall time from start-up to exit), times `pretty_midi.PrettyMIDI(path)` per file in one
process on the first files of the same corpus, and prints files/s, the ratio, the projection for
all of Lakh (from the rate, and from the fixed and per-file costs the two corpus sizes separate),
and the peak memory for both sizes.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
LAKH_FILES = 178_561


def vlq(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MIDI variable-length quantities of `values` (< 2**28): (bytes per value, 4 x n bytes)."""
    values = values.astype(np.int64)
    sizes = 1 + (values >= 1 << 7) + (values >= 1 << 14) + (values >= 1 << 21)
    out = np.zeros((4, len(values)), dtype=np.uint8)
    for k in range(4):
        shift = 7 * (sizes - 1 - k)
        byte = (values >> np.maximum(shift, 0)) & 0x7F
        more = k < sizes - 1
        out[k] = np.where(k < sizes, byte | (more * 0x80), 0)
    return sizes, out


def meta(kind: int, data: bytes) -> bytes:
    """A meta event's bytes (data < 128 bytes, so the length is one byte)."""
    return bytes([0xFF, kind, len(data)]) + data


# Roles of a track in a GM pop arrangement: (programs, notes per beat, pitch centre, durations in
# beats, chance of pitch-bend runs, chance of expression swells, chance of modulation runs).
ROLES: dict[str, tuple[range, tuple[float, float], int, tuple[float, ...], float, float, float]] = {
    "bass": (range(32, 40), (1.0, 2.0), 40, (0.25, 0.5, 1.0), 0.35, 0.05, 0.0),
    "piano": (range(8), (1.5, 3.5), 62, (0.25, 0.5, 1.0, 2.0), 0.0, 0.05, 0.0),
    "organ": (range(16, 24), (0.8, 2.0), 62, (0.5, 1.0, 2.0), 0.05, 0.3, 0.1),
    "guitar": (range(24, 32), (1.0, 3.0), 57, (0.25, 0.5, 1.0), 0.4, 0.1, 0.05),
    "strings": (range(48, 56), (0.4, 1.2), 64, (1.0, 2.0, 4.0), 0.0, 0.5, 0.2),
    "brass": (range(56, 72), (0.5, 1.5), 66, (0.25, 0.5, 1.0, 2.0), 0.1, 0.4, 0.2),
    "lead": (range(72, 88), (0.8, 2.0), 70, (0.25, 0.5, 1.0), 0.45, 0.3, 0.3),
    "pad": (range(88, 104), (0.3, 0.8), 60, (2.0, 4.0), 0.05, 0.4, 0.1),
}
DRUMS = np.array([35, 36, 38, 40, 42, 44, 46, 49, 51, 45, 48, 50])
DRUM_P = np.array([0.12, 0.1, 0.14, 0.04, 0.3, 0.06, 0.06, 0.03, 0.07, 0.03, 0.03, 0.02])


class TrackEvents:
    """Channel messages (numpy blocks) and meta/sysex events (bytes) of one track."""

    def __init__(self) -> None:
        self.ticks: list[np.ndarray] = []
        self.prio: list[np.ndarray] = []
        self.msgs: list[np.ndarray] = []  # n x 3
        self.lens: list[np.ndarray] = []  # 2 or 3 bytes
        self.metas: list[tuple[int, bytes]] = []
        self.counts: dict[str, int] = {}
        self.note_starts = np.zeros(0, dtype=np.int64)

    def channel(self, kind: str, ticks: np.ndarray, status: int, d1: Any, d2: Any = None,
                prio: int = 1) -> None:  # fmt: skip
        """Channel messages at `ticks` (prio orders a tick: 1 controls, 2 note-offs, 3 note-ons)."""
        n = len(ticks)
        if n == 0:
            return
        msgs = np.zeros((n, 3), dtype=np.int64)
        msgs[:, 0] = status
        msgs[:, 1] = d1
        msgs[:, 2] = 0 if d2 is None else d2
        self.ticks.append(np.asarray(ticks, dtype=np.int64))
        self.prio.append(np.full(n, prio))
        self.msgs.append(msgs)
        self.lens.append(np.full(n, 2 if d2 is None else 3))
        self.counts[kind] = self.counts.get(kind, 0) + n

    def meta(self, kind: str, tick: int, data: bytes) -> None:
        self.metas.append((int(tick), data))
        self.counts[kind] = self.counts.get(kind, 0) + 1

    def encode(self, running_status: bool) -> bytes:
        """The MTrk chunk: events sorted by tick (metas first on a tick), running status if asked
        (only after a channel message of the same status, which every reader accepts)."""
        end = max([int(t.max()) for t in self.ticks] + [t for t, _ in self.metas] + [0])
        metas = [*self.metas, (end, b"\xff\x2f\x00")]
        width = max(3, *(len(b) for _, b in metas))
        n, m = sum(len(t) for t in self.ticks), len(metas)
        rows = np.zeros((n + m, width), dtype=np.uint8)
        if n:
            rows[:n, :3] = np.concatenate(self.msgs)
        for i, (_, data) in enumerate(metas):
            rows[n + i, : len(data)] = np.frombuffer(data, dtype=np.uint8)
        ticks = np.concatenate([*self.ticks, np.array([t for t, _ in metas])])
        prio = np.concatenate([*self.prio, np.zeros(m - 1, dtype=np.int64), [9]])
        lengths = np.concatenate([*self.lens, np.array([len(b) for _, b in metas])])
        is_channel = np.arange(n + m) < n
        order = np.lexsort((prio, ticks))
        ticks, rows, lengths, is_channel = (
            ticks[order],
            rows[order],
            lengths[order],
            is_channel[order],
        )
        skip = np.zeros(n + m, dtype=np.int64)
        if running_status:
            skip[1:] = is_channel[1:] & is_channel[:-1] & (rows[1:, 0] == rows[:-1, 0])
        cols = np.arange(width)
        payload = rows[(cols >= skip[:, None]) & (cols < lengths[:, None])]
        sizes, delta_bytes = vlq(np.diff(ticks, prepend=0))
        total = sizes + lengths - skip
        offsets = np.concatenate([[0], np.cumsum(total)[:-1]])
        body = np.zeros(int(total.sum()), dtype=np.uint8)
        for k in range(4):
            has = k < sizes
            body[offsets[has] + k] = delta_bytes[k][has]
        sizes_payload = lengths - skip
        starts = np.repeat(offsets + sizes, sizes_payload)
        within = np.arange(int(sizes_payload.sum())) - np.repeat(
            np.cumsum(sizes_payload) - sizes_payload, sizes_payload
        )
        body[starts + within] = payload
        return b"MTrk" + len(body).to_bytes(4, "big") + body.tobytes()


WORDS = b"love baby night oh yeah heart go home dance time I you me the down shine fire".split()


def runs(rng: np.random.Generator, span: int, n_runs: int, length: tuple[int, int],
         spacing: tuple[int, int]) -> list[np.ndarray]:  # fmt: skip
    """`n_runs` bursts of closely spaced ticks (a bend, a swell, a fade) inside [0, span)."""
    out = []
    for start in np.sort(rng.integers(0, max(span, 1), n_runs)):
        n = int(rng.integers(*length))
        out.append(start + np.cumsum(rng.integers(*spacing, size=n)))
    return out


def instrument_track(rng: np.random.Generator, tpb: int, beats: int, channel: int, role: str,
                     program: int, note_off_90: bool) -> TrackEvents:  # fmt: skip
    """One instrument track: names, setup controls, notes, and the role's controller traffic."""
    track = TrackEvents()
    span = beats * tpb
    track.meta("track_name", 0, meta(0x03, role.encode() + b" " + str(program).encode()))
    if rng.random() < 0.3:
        track.meta("text", 0, meta(0x04, b"GM " + str(program).encode()))
    drum = channel == 9
    zero = np.zeros(1, dtype=np.int64)
    # GM setup at tick 0: bank select, program, volume, pan, reverb, chorus (most sequencers).
    for cc, value in [(0, 0), (32, 0), (7, rng.integers(60, 120)), (10, rng.integers(0, 128)),
                      (91, rng.integers(0, 80)), (93, rng.integers(0, 40))]:  # fmt: skip
        if rng.random() < 0.8:
            track.channel("control", zero, 0xB0 | channel, cc, value)
    track.channel("program", zero, 0xC0 | channel, program)
    # Notes over the part of the song this track plays in.
    first = int(rng.integers(0, beats // 4)) * tpb if rng.random() < 0.5 else 0
    played = beats * tpb - first
    if drum:
        rate, centre, durs = rng.uniform(2.5, 4.5), 0, (0.125, 0.25)
    else:
        _, rates, centre, durs, *_ = ROLES[role]
        rate = rng.uniform(*rates)
    n = int(rate * played / tpb)
    grid = max(tpb // 4, 1)
    starts = first + np.sort(rng.integers(0, played // grid, n)) * grid
    durations = (rng.choice(durs, size=n) * tpb * rng.uniform(0.8, 1.0, n)).astype(np.int64) + 1
    if drum:
        pitches = rng.choice(DRUMS, size=n, p=DRUM_P)
    else:
        pitches = np.clip(centre + np.cumsum(rng.integers(-3, 4, size=n)) % 24 - 12, 21, 108)
    velocities = rng.integers(40, 127, size=n)
    track.note_starts = starts
    track.channel("note_on", starts, 0x90 | channel, pitches, velocities, prio=3)
    if note_off_90:
        track.channel("note_off", starts + durations, 0x90 | channel, pitches, 0, prio=2)
    else:
        track.channel("note_off", starts + durations, 0x80 | channel, pitches, 64, prio=2)
    if drum:
        return track
    _, _, _, _, p_bend, p_swell, p_mod = ROLES[role]
    step = max(tpb // 48, 1)
    if role == "piano":  # sustain pedal: down after each bar line, up just before the next
        bars = np.arange(first, span, 4 * tpb)[rng.random(len(range(first, span, 4 * tpb))) < 0.8]
        track.channel("sustain", bars + tpb // 16, 0xB0 | channel, 64, 127)
        track.channel("sustain", bars + 4 * tpb - tpb // 16, 0xB0 | channel, 64, 0)
    if rng.random() < p_bend:  # bend runs: a scoop or a vibrato, back to the centre
        track.channel("control", zero, 0xB0 | channel, 101, 0)  # RPN 0: bend range
        track.channel("control", zero, 0xB0 | channel, 100, 0)
        track.channel("control", zero, 0xB0 | channel, 6, 2)
        for ticks in runs(rng, span, int(rng.integers(8, 40)), (8, 50), (step, 4 * step)):
            curve = 8192 + (np.sin(np.linspace(0, np.pi * rng.uniform(0.5, 4), len(ticks)))
                            * rng.uniform(500, 4000)).astype(np.int64)  # fmt: skip
            curve[-1] = 8192
            curve = np.clip(curve, 0, 16383)
            track.channel("pitch_bend", first + ticks, 0xE0 | channel, curve & 0x7F, curve >> 7)
    if rng.random() < p_swell:  # expression swells (CC11)
        for ticks in runs(rng, span, int(rng.integers(4, 20)), (8, 40), (step, 6 * step)):
            values = np.linspace(rng.integers(30, 90), rng.integers(90, 128), len(ticks))
            track.channel("expression", first + ticks, 0xB0 | channel, 11, values.astype(int))
    if rng.random() < p_mod:  # modulation wheel (CC1)
        for ticks in runs(rng, span, int(rng.integers(2, 10)), (5, 25), (step, 6 * step)):
            values = (np.abs(np.sin(np.linspace(0, 3, len(ticks)))) * 100).astype(int)
            track.channel("modulation", first + ticks, 0xB0 | channel, 1, values)
    # A few volume/pan moves at section changes.
    moves = np.sort(rng.integers(first, span, int(rng.integers(0, 5))))
    track.channel("control", moves, 0xB0 | channel, rng.choice([7, 10]), rng.integers(40, 127))
    if rng.random() < 0.05:  # channel aftertouch in a few synth tracks
        for ticks in runs(rng, span, int(rng.integers(2, 8)), (5, 20), (step, 4 * step)):
            track.channel(
                "aftertouch", first + ticks, 0xD0 | channel, rng.integers(0, 128, len(ticks))
            )
    return track


def lakh_like(rng: np.random.Generator) -> tuple[bytes, dict[str, int]]:
    """One Lakh-like multitrack file and its event counts by kind.

    Like the files of lmd_full (transcriptions made in sequencers): 4-16 instrument tracks by
    role (bass, piano with sustain pedal, guitars and leads with pitch-bend runs, strings and pads
    with expression swells), one or two drum tracks, several tracks sharing an instrument, GM
    setup controls, track names, a conductor track with tempo changes (some files with tempo
    ramps), time and key signatures, markers, copyright, a GM-reset sysex, lyrics in karaoke
    files, running status and note-on velocity 0 as note-off in most files.
    """
    tpb = int(
        rng.choice([96, 120, 192, 240, 384, 480, 960], p=[0.15, 0.15, 0.2, 0.05, 0.15, 0.25, 0.05])
    )
    beats = int(rng.integers(200, 520))  # 2-5 minutes at 100-140 bpm
    span = beats * tpb
    running_status = rng.random() < 0.85
    note_off_90 = rng.random() < 0.6
    conductor = TrackEvents()
    conductor.meta("track_name", 0, meta(0x03, b"Song " + str(int(rng.integers(1e6))).encode()))
    if rng.random() < 0.5:
        conductor.meta("text", 0, meta(0x02, b"Copyright (c) 1998 by the sequencer"))
    if rng.random() < 0.3:
        conductor.meta("sysex", 0, b"\xf0\x05\x7e\x7f\x09\x01\xf7")  # GM system on
    numerator = int(rng.choice([4, 4, 4, 3, 6, 2]))
    conductor.meta("time_signature", 0, meta(0x58, bytes([numerator, 2, 24, 8])))
    if rng.random() < 0.1:
        conductor.meta("time_signature", int(rng.integers(span)), meta(0x58, bytes([3, 2, 24, 8])))
    conductor.meta("key_signature", 0, meta(0x59, bytes([int(rng.integers(-6, 7)) & 0xFF, 0])))
    tempo_ticks = np.sort(rng.integers(0, span, int(rng.integers(0, 4))))
    if rng.random() < 0.15:  # a ritardando or accelerando written as a tempo ramp
        tempo_ticks = np.sort(
            np.concatenate([tempo_ticks, runs(rng, span, 2, (15, 60), (tpb // 4, tpb))[0]])
        )
    bpm = rng.uniform(70, 170)
    for tick in [0, *tempo_ticks.tolist()]:
        mspq = int(60_000_000 / (bpm * rng.uniform(0.9, 1.1)))
        conductor.meta("tempo", tick, meta(0x51, mspq.to_bytes(3, "big")))
    if rng.random() < 0.4:
        for i, tick in enumerate(range(0, span, 32 * tpb)):
            conductor.meta(
                "marker", tick, meta(0x06, [b"Intro", b"Verse", b"Chorus", b"Bridge"][i % 4])
            )
    tracks = [conductor]
    n_tracks = int(rng.integers(4, 17))
    channels = [c for c in range(16) if c != 9]
    role_names = list(ROLES)
    previous: tuple[int, str, int] | None = None
    for t in range(n_tracks):
        if t == 0 or (t == 1 and rng.random() < 0.2):  # drums, split kit in some files
            track = instrument_track(rng, tpb, beats, 9, "drums", 0, note_off_90)
        elif previous is not None and rng.random() < 0.2:  # a second track of the same instrument
            track = instrument_track(rng, tpb, beats, *previous, note_off_90)
        else:
            role = role_names[int(rng.integers(len(role_names)))] if t > 1 else "bass"
            previous = (channels[(t - 1) % 15], role, int(rng.choice(ROLES[role][0])))
            track = instrument_track(rng, tpb, beats, *previous, note_off_90)
        tracks.append(track)
    if rng.random() < 0.1:  # karaoke: a lyric per melody note, in the melody's track
        melody = tracks[-1]
        ons = np.unique(melody.note_starts)[:400]
        for tick in ons.tolist():
            melody.meta("lyrics", tick, meta(0x05, WORDS[int(rng.integers(len(WORDS)))] + b" "))
    counts: dict[str, int] = {}
    for track in tracks:
        for kind, n in track.counts.items():
            counts[kind] = counts.get(kind, 0) + n
    counts["tracks"] = len(tracks)
    header = b"MThd" + (6).to_bytes(4, "big") + (1).to_bytes(2, "big")
    header += len(tracks).to_bytes(2, "big") + tpb.to_bytes(2, "big")
    return header + b"".join(t.encode(running_status) for t in tracks), counts


CHANNEL_KINDS = (
    "note_on", "note_off", "pitch_bend", "expression", "sustain", "modulation", "control",
    "program", "aftertouch",
)  # fmt: skip
CORPUS_VERSION = 2  # bump when lakh_like changes: the cache key holds it


def corpus(n_files: int, seed: int, real: list[Path]) -> tuple[Path, dict[str, Any]]:
    """A cached .tar.gz of n seeded Lakh-like files (named by md5, like lmd_full) + real files,
    and its summary (sizes, the synthetic files' mean event counts), cached beside it."""
    import hashlib

    CACHE.mkdir(parents=True, exist_ok=True)
    real_files = sorted(
        p
        for r in real
        for p in ([r] if r.is_file() else r.rglob("*"))
        if p.suffix.lower() in {".mid", ".midi"}
    )
    tag = hashlib.md5("\n".join(str(p) for p in real_files).encode()).hexdigest()[:8]
    path = CACHE / f"lakhlike-v{CORPUS_VERSION}-{seed}-{n_files}-{tag}.tar.gz"
    summary_path = path.with_name(path.name.replace(".tar.gz", ".json"))
    if path.exists() and summary_path.exists():
        return path, json.loads(summary_path.read_text())
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp")
    totals: dict[str, int] = {}
    sizes: list[int] = []
    with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
        for i in range(n_files + len(real_files)):
            if i < n_files:
                data, counts = lakh_like(rng)
                for kind, n in counts.items():
                    totals[kind] = totals.get(kind, 0) + n
            else:
                data = real_files[i - n_files].read_bytes()
            sizes.append(len(data))
            md5 = hashlib.md5(data).hexdigest()
            info = tarfile.TarInfo(f"lmd_like/{md5[0]}/{md5}.mid")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    summary = {
        "files": len(sizes),
        "real_files": len(real_files),
        "mean_kb": float(np.mean(sizes)) / 1e3,
        "median_kb": float(np.median(sizes)) / 1e3,
        "max_kb": max(sizes) / 1e3,
        "synthetic_mean_events": {k: v / max(n_files, 1) for k, v in sorted(totals.items())},
    }
    summary_path.write_text(json.dumps(summary, indent=1))
    tmp.replace(path)
    return path, summary


@dataclass
class StageRun:
    files: int
    seconds: float  # wall, from start-up to exit
    cpu_s: float  # user + system of the whole process tree (workers and plotter included)
    peak_mb: float  # peak resident memory of the process tree
    stats: dict


def run_stage(archive: Path, workdir: Path) -> StageRun:
    """`lakhflow parse` in a subprocess, timed and sampled."""
    root = workdir / "project"
    shutil.rmtree(root, ignore_errors=True)
    (root / "data" / "raw").mkdir(parents=True)
    shutil.copy2(archive, root / "data" / "raw" / "bach.tar.gz")  # the stage reads <source>
    params = {"download": {"source": "bach"}, "parse": {"workers": 0}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    lakhflow = Path(sys.executable).parent / "lakhflow"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = psutil.Popen([str(lakhflow), "parse"], cwd=root, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        try:
            tree = [proc, *proc.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # every process the stage waited for
    cpu_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    err = proc.stderr.read() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"lakhflow parse failed:\n{err}")
    stats = yaml.safe_load((root / "data" / "notes" / "stats.json").read_text())
    return StageRun(stats["files"]["inputs"], seconds, cpu_s, peak / 2**20, stats)


def pretty_midi_loop(archive: Path, n_files: int, workdir: Path) -> tuple[float, float, int, int]:
    """The notebooks' loop on the first n files: PrettyMIDI(path) per file, notes collected."""
    import warnings

    import pretty_midi

    folder = workdir / "loop"
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    with tarfile.open(archive, "r:gz") as tar:
        for info in tar:
            if info.isfile() and len(paths) < n_files:
                handle = tar.extractfile(info)
                assert handle is not None
                path = folder / Path(info.name).name
                path.write_bytes(handle.read())
                paths.append(path)
    notes: list[dict] = []
    failures = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in paths:
            try:
                pm = pretty_midi.PrettyMIDI(str(path))
            except Exception:
                failures += 1
                continue
            for instrument in pm.instruments:
                for note in instrument.notes:
                    notes.append(
                        {"pitch": note.pitch, "start": note.start, "end": note.end,
                         "velocity": note.velocity, "program": instrument.program}
                    )  # fmt: skip
    cpu_s = time.process_time() - cpu_started
    return time.perf_counter() - started, cpu_s, len(paths), len(notes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("real", nargs="*", type=Path, help="real MIDI files or folders to add")
    ap.add_argument("--files", type=int, default=3000, help="synthetic files in the large corpus")
    ap.add_argument("--loop-files", type=int, default=150, help="files the pretty_midi loop times")
    ap.add_argument("--repeat", type=int, default=1, help="stage runs per corpus (fastest kept)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="lakhflow-bench-") as tmp:
        workdir = Path(tmp)
        runs: list[StageRun] = []
        for n in (args.files // 2, args.files):
            archive, summary = corpus(n, args.seed, args.real)
            tries = [run_stage(archive, workdir) for _ in range(args.repeat)]
            best = min(tries, key=lambda r: r.seconds)
            best.peak_mb = max(r.peak_mb for r in tries)
            runs.append(best)
            size_mb = archive.stat().st_size / 1e6
            print(
                f"stage   {best.files:6d} files ({size_mb:.0f} MB .tar.gz, "
                f"{best.stats['notes']:,} notes): {best.seconds:6.1f} s = "
                f"{best.files / best.seconds:5.0f} files/s, CPU {best.cpu_s:5.1f} s "
                f"({best.cpu_s / best.files * 1e3:.2f} ms/file), peak RSS (tree) "
                f"{best.peak_mb:4.0f} MB, statuses {best.stats['files']}"
            )
        loop_s, loop_cpu, loop_files, loop_notes = pretty_midi_loop(
            archive, args.loop_files, workdir
        )
        small, large = runs
        mix = summary["synthetic_mean_events"]
        channel = sum(v for k, v in mix.items() if k in CHANNEL_KINDS)
        print(
            f"corpus: {summary['files']} files ({summary['real_files']} real), mean "
            f"{summary['mean_kb']:.1f} KB, median {summary['median_kb']:.1f} KB, max "
            f"{summary['max_kb']:.0f} KB (lmd_full's .tar.gz: 9.9 KB/file, here: "
            f"{archive.stat().st_size / 1e3 / summary['files']:.1f}); mean per "
            f"synthetic file: {mix['tracks']:.1f} tracks, {channel:,.0f} channel messages ("
            + ", ".join(f"{k} {mix[k]:,.0f}" for k in CHANNEL_KINDS if k in mix)
            + "), meta/sysex "
            + ", ".join(
                f"{k} {v:.1f}" for k, v in mix.items() if k not in {*CHANNEL_KINDS, "tracks"}
            )
        )
        print(
            f"calibration: pretty_midi on this corpus {loop_files / loop_cpu:.1f} files/s per core "
            f"({loop_cpu / loop_files * 1e3:.0f} ms/file CPU) vs about 12 files/s (83 ms/file) "
            "on 167 real multitrack files (FACTS.md): the closer, the more Lakh-like the event mix"
        )
        stage_rate = large.files / large.seconds
        loop_rate = loop_files / loop_s
        print(
            f"pretty_midi loop: {loop_files} files, {loop_notes:,} notes in {loop_s:.1f} s = "
            f"{loop_rate:.1f} files/s, CPU {loop_cpu / loop_files * 1e3:.1f} ms/file "
            "(one process, the first files of the same corpus)"
        )
        print(
            f"ratio stage / pretty_midi loop: {stage_rate / loop_rate:.0f}x wall "
            f"(target >= 100x; the stage's time includes start-up, plots and part writing); "
            f"{(loop_cpu / loop_files) / (large.cpu_s / large.files):.0f}x in CPU per file"
        )
        print(
            f"projected full Lakh ({LAKH_FILES:,} files) at {stage_rate:.0f} files/s: "
            f"{LAKH_FILES / stage_rate / 60:.1f} min (target < 5 min); pretty_midi loop: "
            f"{LAKH_FILES / loop_rate / 3600:.1f} h"
        )
        # Wall time = fixed cost (start-up, plots) + cost per file: the two corpus sizes
        # separate them, so the projection does not charge the fixed cost 178,561 times.
        per_file = (large.seconds - small.seconds) / max(large.files - small.files, 1)
        fixed = small.seconds - small.files * per_file
        if per_file > 0 and fixed >= 0:
            print(
                f"  from the two sizes: {fixed:.1f} s fixed + {per_file * 1e3:.2f} ms per file "
                f"({1 / per_file:.0f} files/s): {(fixed + LAKH_FILES * per_file) / 60:.1f} min "
                f"for Lakh, {1 / per_file / loop_rate:.0f}x the loop per file"
            )
        else:
            print("  (the two sizes gave no usable fixed/per-file split: too noisy; run again)")
        cores = os.cpu_count() or 1
        print(
            f"  from CPU time alone (what {cores} idle cores could do): "
            f"{LAKH_FILES * large.cpu_s / large.files / cores / 60:.1f} min for Lakh"
        )
        print(
            "peak RSS of the stage's process tree: "
            + ", ".join(f"{r.files} files -> {r.peak_mb:.0f} MB" for r in runs)
            + " (target < 2048 MB, flat)"
        )
        print(f"cores: {cores}, 1-min load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
