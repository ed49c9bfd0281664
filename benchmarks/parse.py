"""Parse stage vs the notebooks' pretty_midi loop, on a seeded Lakh-like corpus (+ real files).

    .venv/bin/python benchmarks/parse.py [--files 3000] [--loop-files 150] [--repeat 1]
                                         [REAL.mid|FOLDER ...]

Builds (or reuses, under benchmarks/.cache/) a corpus of multitrack MIDI files (programs, drums,
tempo changes, tens of KB each), runs `lakhflow parse` on it in a subprocess (all cores, peak
resident memory of the process tree sampled, wall time from start-up to exit), times
`pretty_midi.PrettyMIDI(path)` per file in one process on the first files of the same corpus,
and prints files/s, the ratio, the projection for all of Lakh (from the rate, and from the fixed
and per-file costs the two corpus sizes separate), and the peak memory for both sizes.
"""

from __future__ import annotations

import argparse
import io
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

import numpy as np
import psutil
import yaml

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
LAKH_FILES = 178_561
TPB = 480


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


def encode_track(ticks: np.ndarray, messages: np.ndarray, prefix: bytes = b"") -> bytes:
    """An MTrk chunk from sorted absolute ticks and 3-byte channel messages (n x 3)."""
    deltas = np.diff(ticks, prepend=0)
    sizes, bytes_ = vlq(deltas)
    lengths = sizes + 3
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    body = np.zeros(int(lengths.sum()), dtype=np.uint8)
    for k in range(4):
        has = k < sizes
        body[offsets[has] + k] = bytes_[k][has]
    for j in range(3):
        body[offsets + sizes + j] = messages[:, j]
    payload = prefix + body.tobytes() + b"\x00\xff\x2f\x00"
    return b"MTrk" + len(payload).to_bytes(4, "big") + payload


def lakh_like(rng: np.random.Generator) -> bytes:
    """One multitrack file: 4-12 tracks, a drum track, program changes, 1-4 tempo changes."""
    n_tracks = int(rng.integers(4, 13))
    length_beats = int(rng.integers(120, 300))
    conductor = bytearray()
    last = 0
    tempo_ticks = np.sort(rng.integers(0, length_beats * TPB, int(rng.integers(1, 5))))
    tempo_ticks[0] = 0
    for tick in tempo_ticks:
        mspq = int(60_000_000 / rng.uniform(60, 180))
        sizes, delta = vlq(np.array([tick - last]))
        conductor += delta[: sizes[0], 0].tobytes()
        conductor += b"\xff\x51\x03" + mspq.to_bytes(3, "big")
        last = int(tick)
    conductor += b"\x00\xff\x2f\x00"
    chunks = [b"MTrk" + len(conductor).to_bytes(4, "big") + bytes(conductor)]
    for t in range(n_tracks):
        drum = t == 0
        channel = 9 if drum else (t % 15 if t % 15 != 9 else 15)
        program = int(rng.integers(0, 128))
        n = int(rng.integers(150, 800))
        steps = rng.choice([0, TPB // 4, TPB // 2, TPB], size=n, p=[0.25, 0.3, 0.3, 0.15])
        starts = np.cumsum(steps)
        durations = rng.choice([TPB // 8, TPB // 4, TPB // 2, TPB, 2 * TPB], size=n)
        if drum:
            pitches = rng.choice([35, 36, 38, 42, 46, 49, 51], size=n)
        else:
            pitches = np.clip(60 + np.cumsum(rng.integers(-3, 4, size=n)), 24, 100)
        velocities = rng.integers(30, 127, size=n)
        ticks = np.concatenate([starts, starts + durations])
        status = np.concatenate([np.full(n, 0x90 | channel), np.full(n, 0x80 | channel)])
        data2 = np.concatenate([velocities, np.zeros(n, dtype=np.int64)])
        messages = np.stack([status, np.concatenate([pitches, pitches]), data2], axis=1)
        order = np.lexsort((status >> 4 == 9, ticks))  # note-offs first on a tick
        prefix = bytes([0x00, 0xC0 | channel, program])
        chunks.append(encode_track(ticks[order], messages[order].astype(np.uint8), prefix))
    header = b"MThd" + (6).to_bytes(4, "big") + (1).to_bytes(2, "big")
    header += len(chunks).to_bytes(2, "big") + TPB.to_bytes(2, "big")
    return header + b"".join(chunks)


def corpus(n_files: int, seed: int, real: list[Path]) -> Path:
    """A cached .tar.gz of n seeded Lakh-like files (named by md5, like lmd_full) + real files."""
    import hashlib

    CACHE.mkdir(parents=True, exist_ok=True)
    real_files = sorted(
        p
        for r in real
        for p in ([r] if r.is_file() else r.rglob("*"))
        if p.suffix.lower() in {".mid", ".midi"}
    )
    tag = hashlib.md5("\n".join(str(p) for p in real_files).encode()).hexdigest()[:8]
    path = CACHE / f"lakhlike-{seed}-{n_files}-{tag}.tar.gz"
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp")
    with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
        members = [lakh_like(rng) for _ in range(n_files)] + [p.read_bytes() for p in real_files]
        for data in members:
            md5 = hashlib.md5(data).hexdigest()
            info = tarfile.TarInfo(f"lmd_like/{md5[0]}/{md5}.mid")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    tmp.replace(path)
    return path


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
            archive = corpus(n, args.seed, args.real)
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
