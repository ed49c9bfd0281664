"""Lakh-scale rehearsal: the whole chain on a Lakh-shaped archive, at two sizes, projected to Lakh.

    .venv/bin/python benchmarks/lakh_scale.py --run [--files 20000] [--sizes 10000,20000]
                                              [--stages parse,sequences] [--keep] [--seed 0]
    .venv/bin/python benchmarks/lakh_scale.py --quick   # a smoke test of a minute or two
    make rehearsal                                      # --run with the defaults

Bare (neither --run nor --quick) it prints this text and exits 0: `make bench` runs every
benchmark bare, and the rehearsal takes the better part of an hour on 2 cores (measured at
1,000 and 2,000 files and extrapolated: about 12 min to build the two archives, once, then about
25 min for the stages and the grouping probe at 10,000 and 20,000 files).

Builds (or reuses, under benchmarks/.cache/, keyed by size, seed and version) an archive shaped
like lmd_full.tar.gz: `lmd_full/<first hex digit>/<md5>.mid` members in folder order, made by
`lakh_like` of benchmarks/parse.py (its sizes, tracks, instruments, drums and event mix), with
the shares of exact duplicates, re-saved near duplicates and corrupt files that the constants
below state. Then, for each size (N/2 and N unless --sizes), a fresh scratch project whose
params.yaml is the repository's with the source pointed at the archive and training cut to a few
hundred steps runs each stage as `lakhflow <stage>` -- what dvc.yaml's cmd runs, one subprocess
per stage, so each is timed and sampled on its own: wall time, CPU time of the process tree,
peak RSS of the tree (psutil, every 0.2 s, children included), disk (the stage's new bytes under
data/ and mlflow's store, under .lakhflow/work, and the project's peak while it ran, sampled
every second). From the two sizes: time = fixed + per_file * N, projected to lmd_full's 178,561
files; the same for disk; RSS is said to grow or not. A figure that did not grow past the noise
between the sizes (FLAT_TIME, FLAT_RSS) is called flat rather than multiplied by 178,561 / N.
Each size's scratch project is removed before the next (all kept with --keep).

Printed: the corpus' shares; what parse found (duplicates, quarantined) as a check that it caught
them; the sequences stage's split grouping (its manifest's `grouping`, and whether each family of
near duplicates landed in one split); the split grouping's own cost, measured apart by running
the stage's pass-1 functions in a probe process (with and without shared-run fingerprints); and
one markdown table (for the README's "Running it on Lakh"), also written to a JSON file.

Train, generate and evaluate run with the rehearsal's short settings (REHEARSAL_PARAMS): their
projection is what those settings cost at Lakh's size (reading shards, streaming the training
notes through the copy detector...), not what a full training on Lakh costs.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: benchmarks/ is on the path, the root is not
    sys.path.insert(0, str(ROOT))

from benchmarks.parse import CACHE, LAKH_FILES, lakh_like  # noqa: E402
from benchmarks.parse import CORPUS_VERSION as LAKH_LIKE_VERSION  # noqa: E402

ARCHIVE_VERSION = 1  # bump when the archive's recipe below changes: the cache key holds it
TOP = "lmd_full"

# Shares of the archive's members (each a fraction of N; the rest are distinct songs).
# - Exact duplicates: lmd_full's home page calls it 176,581 "deduped" files, FACTS.md counts
#   178,561 members: the 1,980 unexplained (1.1%) are taken as byte-identical copies. As a name is
#   the md5 of the bytes, a copy is a second member of the same name (a tar allows it), right
#   after the first. (lmd_matched has real ones: one file under several MSD track folders.)
SHARE_EXACT = 0.011
# - Near duplicates: re-saved versions of a song in the corpus, the same notes in other bytes or
#   nearly: MIDI sites host several re-saves of one sequence. No published figure; 5% is an
#   assumption (lmd_matched's 45,129 files match fewer MSD songs, so versions are common).
SHARE_NEAR = 0.05
# Their kinds, in turn: re-saved by another tool (other bytes, same events), other ticks per
# beat, another tempo, transposed, a few notes changed, tracks in another order.
NEAR_KINDS = ("resave", "ticks", "tempo", "transpose", "edit", "track_order")
# - Corrupt: "a few thousand files which are likely corrupt" (the home page), 2-5% fail to parse
#   (FACTS.md): 3%, half cut short (an interrupted download), half with a garbage header.
SHARE_CORRUPT = 0.03
CORRUPT_KINDS = ("truncated", "garbage_header")

# Settings that keep the chain short on a CPU; the rest is the repository's params.yaml.
REHEARSAL_PARAMS: dict[str, dict[str, Any]] = {
    "parse": {"workers": 0},
    "train": {"epochs": 2, "steps_per_epoch": 200, "validation_steps": 20, "patience": 2},
    "generate": {"count": 8, "notes": 64, "wav": False},
    "evaluate": {"set_size": 8, "draws": 3, "max_test_windows": 2000},
}
QUICK_PARAMS: dict[str, dict[str, Any]] = {
    "parse": {"workers": 0},
    "train": {"epochs": 1, "steps_per_epoch": 10, "validation_steps": 2, "patience": 1},
    "generate": {"count": 2, "notes": 16, "wav": False},
    "evaluate": {"set_size": 2, "draws": 1, "max_test_windows": 200},
}
QUICK_FILES = 40
STAGES = ("download", "parse", "sequences", "train", "generate", "evaluate", "promote")
# MLflow's store: train logs and registers into it, generate and promote read it
MLFLOW_PATHS = ("mlflow.db", "mlartifacts")


# --------------------------------------------------------------------------- the archive


def shares(n: int) -> dict[str, int]:
    """How many members of each kind an archive of n members holds."""
    exact = round(n * SHARE_EXACT)
    near = round(n * SHARE_NEAR)
    corrupt = round(n * SHARE_CORRUPT)
    return {
        "original": n - exact - near - corrupt,
        "exact": exact,
        "near": near,
        "corrupt": corrupt,
    }


def near_duplicate(data: bytes, kind: str, rng: np.random.Generator) -> bytes:
    """A re-saved version of a MIDI file (mido reads and writes it: no running status)."""
    import mido

    mid = mido.MidiFile(file=io.BytesIO(data))
    if kind == "resave":
        mid.tracks[0].insert(0, mido.MetaMessage("text", text="Saved by another sequencer"))
    elif kind == "ticks":
        mid.ticks_per_beat *= 2
        for track in mid.tracks:
            for msg in track:
                msg.time *= 2
    elif kind == "tempo":
        factor = float(rng.choice([0.9, 0.95, 1.05, 1.1]))
        for track in mid.tracks:
            for msg in track:
                if msg.type == "set_tempo":
                    msg.tempo = min(int(msg.tempo * factor), 0xFFFFFF)
    elif kind == "transpose":
        shift = int(rng.choice([-5, -4, -3, -2, -1, 1, 2, 3, 4, 5]))
        for track in mid.tracks:
            for msg in track:
                if msg.type in ("note_on", "note_off") and msg.channel != 9:
                    msg.note = min(max(msg.note + shift, 0), 127)
    elif kind == "edit":
        edit_notes(mid, rng, 3)
    elif kind == "track_order":
        rest = mid.tracks[1:]
        order = rng.permutation(len(rest))
        if len(rest) > 1 and (order == np.arange(len(rest))).all():
            order = np.roll(order, 1)
        mid.tracks[1:] = [rest[i] for i in order]
    else:
        raise ValueError(kind)
    out = io.BytesIO()
    mid.save(file=out)
    return out.getvalue()


def edit_notes(mid: Any, rng: np.random.Generator, n: int) -> None:
    """Move `n` pitched notes up a semitone or two (their note-on and its note-off)."""
    ons = [
        (t, i)
        for t, track in enumerate(mid.tracks)
        for i, msg in enumerate(track)
        if msg.type == "note_on" and msg.velocity > 0 and msg.channel != 9 and msg.note < 120
    ]
    if not ons:
        return
    for k in rng.choice(len(ons), size=min(n, len(ons)), replace=False):
        t, i = ons[int(k)]
        track = mid.tracks[t]
        on = track[i]
        shift = int(rng.integers(1, 3))
        for j in range(i + 1, len(track)):
            off = track[j]
            if (
                off.type in ("note_off", "note_on")
                and off.channel == on.channel
                and off.note == on.note
                and (off.type == "note_off" or off.velocity == 0)
            ):
                off.note += shift
                break
        on.note += shift


def corrupt(data: bytes, kind: str, rng: np.random.Generator) -> bytes:
    if kind == "truncated":
        return data[: int(len(data) * rng.uniform(0.2, 0.9))]
    if kind == "garbage_header":
        return rng.integers(0, 256, 14, dtype=np.uint8).tobytes() + data[14:]
    raise ValueError(kind)


class Spool:
    """Members spooled to 16 files by their folder (the md5's first hex digit), so that the
    archive is written in lmd_full's folder order holding only one folder in memory."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.files = {d: open(folder / d, "wb") for d in "0123456789abcdef"}  # noqa: SIM115
        self.seq = 0

    def add(self, md5: str, data: bytes) -> None:
        f = self.files[md5[0]]
        f.write(bytes.fromhex(md5) + self.seq.to_bytes(4, "big") + len(data).to_bytes(4, "big"))
        f.write(data)
        self.seq += 1

    def write_tar(self, path: Path) -> None:
        for f in self.files.values():
            f.close()
        with tarfile.open(path, "w:gz", compresslevel=6) as tar:
            for digit, f in self.files.items():
                raw = Path(f.name).read_bytes()
                members = []
                at = 0
                while at < len(raw):
                    md5, seq = (
                        raw[at : at + 16].hex(),
                        int.from_bytes(raw[at + 16 : at + 20], "big"),
                    )
                    size = int.from_bytes(raw[at + 20 : at + 24], "big")
                    members.append((md5, seq, raw[at + 24 : at + 24 + size]))
                    at += 24 + size
                for md5, _, data in sorted(members, key=lambda m: (m[0], m[1])):
                    info = tarfile.TarInfo(f"{TOP}/{digit}/{md5}.mid")
                    info.size = len(data)
                    info.mtime = 1_438_000_000  # fixed: the same archive bytes every build
                    tar.addfile(info, io.BytesIO(data))


def archive_path(n: int, seed: int) -> Path:
    return CACHE / f"lakhscale-v{ARCHIVE_VERSION}.{LAKH_LIKE_VERSION}-{seed}-{n}.tar.gz"


def build_archive(n: int, seed: int) -> tuple[Path, dict[str, Any]]:
    """The cached Lakh-shaped archive of n members and its ground truth (what each member is)."""
    path = archive_path(n, seed)
    truth_path = path.with_name(path.name.replace(".tar.gz", ".json"))
    if path.exists() and truth_path.exists():
        return path, json.loads(truth_path.read_text())
    CACHE.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    counts = shares(n)
    rng = np.random.default_rng(seed)
    # Which originals get near duplicates and exact copies (an original may get several).
    near_of = np.bincount(
        rng.integers(0, counts["original"], counts["near"]), minlength=counts["original"]
    )
    exact_of = np.bincount(
        rng.integers(0, counts["original"], counts["exact"]), minlength=counts["original"]
    )
    families: list[dict[str, Any]] = []
    exact: list[str] = []
    corrupt_ids: dict[str, list[str]] = {k: [] for k in CORRUPT_KINDS}
    sizes: list[int] = []
    seen: set[str] = set()
    near_turn = 0
    with tempfile.TemporaryDirectory(prefix="lakhscale-", dir=CACHE) as tmp:
        spool = Spool(Path(tmp))

        def add(data: bytes) -> str:
            md5 = hashlib.md5(data).hexdigest()
            spool.add(md5, data)
            sizes.append(len(data))
            return md5

        for i in range(counts["original"]):
            data, _ = lakh_like(rng)
            md5 = add(data)
            seen.add(md5)
            if near_of[i]:
                family: dict[str, Any] = {"original": md5, "versions": {}}
                for _ in range(int(near_of[i])):
                    kind = NEAR_KINDS[near_turn % len(NEAR_KINDS)]
                    near_turn += 1
                    version = near_duplicate(data, kind, rng)
                    while hashlib.md5(version).hexdigest() in seen:  # another re-save's bytes
                        version = near_duplicate(version, "resave", rng)
                    v = add(version)
                    seen.add(v)
                    family["versions"][v] = kind
                families.append(family)
            for _ in range(int(exact_of[i])):
                exact.append(add(data))
        for k in range(counts["corrupt"]):
            kind = CORRUPT_KINDS[k % len(CORRUPT_KINDS)]
            data = corrupt(lakh_like(rng)[0], kind, rng)
            corrupt_ids[kind].append(add(data))
        spool.write_tar(path.with_suffix(".tmp"))
    truth = {
        "members": n,
        "shares": {"exact": SHARE_EXACT, "near": SHARE_NEAR, "corrupt": SHARE_CORRUPT},
        "counts": counts,
        "distinct_files": n - counts["exact"],
        "near_kinds": {
            k: sum(v == k for f in families for v in f["versions"].values()) for k in NEAR_KINDS
        },
        "corrupt_kinds": {k: len(v) for k, v in corrupt_ids.items()},
        "families": families,
        "exact": exact,
        "corrupt": corrupt_ids,
        "mean_kb": float(np.mean(sizes)) / 1e3,
        "median_kb": float(np.median(sizes)) / 1e3,
        "max_kb": max(sizes) / 1e3,
        "build_s": round(time.perf_counter() - started, 1),
    }
    truth_path.write_text(json.dumps(truth))
    path.with_suffix(".tmp").replace(path)
    truth["archive_mb"] = path.stat().st_size / 1e6
    truth_path.write_text(json.dumps(truth))
    return path, truth


# --------------------------------------------------------------------------- running a stage


@dataclass
class Files:
    """Bytes of a project's files by inode (hard links counted once): inode -> (size, where)."""

    by_inode: dict[tuple[int, int], tuple[int, str]] = field(default_factory=dict)

    @classmethod
    def scan(cls, root: Path) -> Files:
        found = cls()
        for folder, _, names in os.walk(root):
            rel = Path(folder).relative_to(root).parts
            where = "work" if rel[:1] == (".lakhflow",) else "out"
            for name in names:
                try:
                    st = (Path(folder) / name).lstat()
                except OSError:  # removed while we looked
                    continue
                key = (st.st_dev, st.st_ino)
                if where == "out" or key not in found.by_inode:  # a link in data/ is an output
                    found.by_inode[key] = (st.st_size, where)
        return found

    def total(self) -> int:
        return sum(size for size, _ in self.by_inode.values())

    def grown(self, before: Files) -> dict[str, int]:
        """Bytes new since `before` (new files whole, grown files by their growth), by place."""
        out = {"out": 0, "work": 0}
        for key, (size, where) in self.by_inode.items():
            old = before.by_inode.get(key, (0, where))[0]
            out[where] += max(size - old, 0)
        return out


@dataclass
class Measured:
    stage: str
    files: int
    seconds: float
    cpu_s: float
    peak_rss_mb: float  # the process tree's summed RSS (a forked worker's shared pages each time)
    peak_pss_mb: float  # the same in PSS: shared pages split between the processes sharing them
    out_mb: float  # new bytes under data/ and MLflow's store
    work_mb: float  # new bytes under .lakhflow/ (resumable work, spills, locks)
    peak_disk_mb: float  # the project's peak growth while the stage ran
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sampled:
    seconds: float  # wall, from start-up to exit
    cpu_s: float  # user + system of every process of the tree
    peak_rss_mb: float  # the peak of the tree's summed RSS
    peak_pss_mb: float  # ... and of its summed PSS (shared pages split between their users)
    peak_disk_mb: float  # the project's peak growth
    before: Files
    after: Files
    code: int


def run_sampled(cmd: list[str], cwd: Path, log: Path, env: dict[str, str]) -> Sampled:
    """Run cmd in cwd (a project), its output to log, sampling its process tree's memory every
    0.2 s and the project's size every second."""
    before_files = Files.scan(cwd)
    base = before_files.total()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    peak_rss = peak_pss = peak_disk = 0
    next_disk = started
    with open(log, "w") as out:
        proc = psutil.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
        while proc.poll() is None:
            try:
                tree = [proc, *proc.children(recursive=True)]
            except psutil.Error:
                tree = []
            rss = pss = 0
            for p in tree:
                with contextlib.suppress(psutil.Error):  # ended between the listing and the look
                    info = p.memory_full_info()
                    rss += info.rss
                    pss += getattr(info, "pss", info.rss)
            peak_rss = max(peak_rss, rss)
            peak_pss = max(peak_pss, pss)
            if time.perf_counter() >= next_disk:
                peak_disk = max(peak_disk, Files.scan(cwd).total() - base)
                next_disk = time.perf_counter() + 1.0
            time.sleep(0.2)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # every process the stage waited for
    cpu_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    after_files = Files.scan(cwd)
    peak_disk = max(peak_disk, after_files.total() - base)
    mb = 2**20
    return Sampled(
        seconds, cpu_s, peak_rss / mb, peak_pss / mb, peak_disk / mb, before_files, after_files,
        proc.returncode,
    )  # fmt: skip


def stage_env() -> dict[str, str]:
    """The environment of a stage: this project's code, the scratch project's own store."""
    env = dict(os.environ)
    for name in ("LAKHFLOW_ROOT", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    return env


def write_params(project: Path, archive: Path, settings: dict[str, dict[str, Any]]) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["download"].update({"source": "path", "path": str(archive), "limit": 0})
    for section, values in settings.items():
        params[section].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else {}


def stage_figures(stage: str, project: Path, n: int, seconds: float) -> dict[str, Any]:
    """What the stage's own outputs say it did, and its throughput."""
    data = project / "data"
    fig: dict[str, Any] = {"files_per_s": n / seconds}
    if stage == "download":
        raw = next((data / "raw").glob("*.tar.gz"), None)
        if raw is not None:
            fig["MB_per_s"] = raw.stat().st_size / 1e6 / seconds
    elif stage == "parse":
        stats = read_json(data / "notes" / "stats.json")
        fig.update(
            files=stats.get("files", {}),
            quarantined_by_error=stats.get("quarantined_by_error", {}),
            notes=stats.get("notes", 0),
            notes_per_s=stats.get("notes", 0) / seconds,
            notes_per_file=stats.get("notes", 0) / max(stats.get("files", {}).get("ok", 0), 1),
        )
    elif stage == "sequences":
        manifest = read_json(data / "shards" / "manifest.json")
        splits = manifest.get("splits", {})
        windows = sum(s.get("windows", 0) for s in splits.values())
        notes = sum(s.get("notes", 0) for s in splits.values())
        fig.update(
            grouping=manifest.get("grouping", {}),
            windows=windows,
            notes=notes,
            windows_per_s=windows / seconds,
            notes_per_s=notes / seconds,
            split_files={k: s.get("files", 0) for k, s in splits.items()},
        )
    elif stage == "train":
        metrics = read_json(data / "metrics" / "train.json")
        fig.update(
            {k: metrics[k] for k in ("epochs", "windows_per_s", "seconds") if k in metrics},
        )
    elif stage == "generate":
        manifest = read_json(data / "generated" / "manifest.json")
        pieces = manifest.get("pieces", [])
        fig["pieces"] = len(pieces) if isinstance(pieces, list) else pieces
    elif stage == "evaluate":
        headline = read_json(data / "metrics" / "headline.json")
        fig["headline"] = headline
    return fig


def run_stage(stage: str, project: Path, n: int, logs: Path, env: dict[str, str]) -> Measured:
    lakhflow = Path(sys.executable).parent / "lakhflow"
    cmd = (
        [str(lakhflow), stage]
        if lakhflow.exists()
        else [sys.executable, "-m", "pipelines.cli", stage]
    )
    log = logs / f"{stage}.log"
    run = run_sampled(cmd, project, log, env)
    if run.code != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:])
        raise SystemExit(f"lakhflow {stage} failed ({run.code}) in {project}:\n{tail}")
    grown = run.after.grown(run.before)
    return Measured(
        stage, n, run.seconds, run.cpu_s, run.peak_rss_mb, run.peak_pss_mb,
        grown["out"] / 2**20, grown["work"] / 2**20, run.peak_disk_mb,
        stage_figures(stage, project, n, run.seconds),
    )  # fmt: skip


# --------------------------------------------------------------------------- split grouping's cost


def probe_grouping(project: Path) -> dict[str, Any]:
    """Pass 1 of the sequences stage (its own functions) timed apart: reading the notes with the
    content and tune hashes only (shared_run 0), then with the shared-run fingerprints, then
    pairing the fingerprints and drawing the split keys."""
    from pipelines import config
    from pipelines.sequences import read_corpus, select_tracks, survey_files
    from pipelines.splits import shared_run_pairs, split_keys

    cfg = config.load(project)
    p = cfg.sequences
    corpus = read_corpus(cfg.paths)
    ok = set(corpus.file_ids)
    t0 = time.perf_counter()
    survey_files(corpus.parts, ok, select_tracks(p), 0)
    t1 = time.perf_counter()
    survey, _, _ = survey_files(corpus.parts, ok, select_tracks(p), p.shared_run)
    t2 = time.perf_counter()
    pairs = shared_run_pairs(corpus.file_ids, survey)
    t3 = time.perf_counter()
    split_keys(corpus.file_ids, corpus.groups, survey, p.split_by, pairs)
    t4 = time.perf_counter()
    fingerprints = sum(len(s.runs) for s in survey.values() if hasattr(s, "runs"))
    return {
        "files": len(ok),
        "read_and_hash_s": t1 - t0,
        "fingerprints_s": max((t2 - t1) - (t1 - t0), 0.0),
        "pairing_s": t3 - t2,
        "keys_s": t4 - t3,
        "fingerprints": fingerprints,
        "links": len(pairs),
    }


def measure_grouping(project: Path, logs: Path, env: dict[str, str]) -> dict[str, Any]:
    out = logs / "grouping.json"
    cmd = [sys.executable, __file__, "--probe-grouping", str(project), "--probe-out", str(out)]
    run = run_sampled(cmd, project, logs / "grouping.log", env)
    if run.code != 0 or not out.exists():
        tail = (logs / "grouping.log").read_text(errors="replace").strip().splitlines()[-1:]
        return {"error": tail[0] if tail else f"exit {run.code}"}
    found: dict[str, Any] = json.loads(out.read_text())
    found["peak_rss_mb"] = run.peak_rss_mb
    found["probe_s"] = run.seconds
    return found


# --------------------------------------------------------------------------- checks


def family_check(project: Path, truth: dict[str, Any]) -> dict[str, Any]:
    """Did each near-duplicate family land in one split? (ground truth vs splits.parquet)"""
    import pyarrow.parquet as pq

    path = project / "data" / "shards" / "splits.parquet"
    if not path.exists():
        return {}
    table = pq.read_table(path, columns=["file_id", "split"]).to_pydict()
    split = dict(zip(table["file_id"], table["split"], strict=True))
    apart: dict[str, int] = dict.fromkeys(NEAR_KINDS, 0)
    together: dict[str, int] = dict.fromkeys(NEAR_KINDS, 0)
    families_apart = 0
    for family in truth["families"]:
        home = split.get(family["original"])
        if home is None:  # the original has no windows (too short) or did not parse
            continue
        moved = False
        for version, kind in family["versions"].items():
            there = split.get(version)
            if there is None:
                continue
            if there == home:
                together[kind] += 1
            else:
                apart[kind] += 1
                moved = True
        families_apart += moved
    return {
        "families": len(truth["families"]),
        "families_split_apart": families_apart,
        "versions_with_original": together,
        "versions_in_another_split": apart,
    }


# --------------------------------------------------------------------------- the report


def fit(points: list[tuple[int, float]]) -> tuple[float, float] | None:
    """(fixed, per file) through two sizes' figures; None with one size."""
    if len(points) < 2:
        return None
    (n1, y1), (n2, y2) = points[0], points[-1]
    per = (y2 - y1) / (n2 - n1)
    return y1 - per * n1, per


# Growth between the two sizes below these is taken as none (flat): at small sizes a line would
# multiply the noise by 178,561 / N. Time is judged by its CPU seconds, which the other load on a
# shared machine moves less than wall seconds; memory by a share and a floor of MB.
FLAT_TIME = 0.15
FLAT_RSS = (0.03, 20.0)


def project_to(points: list[tuple[int, float]], n: int, flat: bool) -> tuple[float, str]:
    """The figure at n files, and how it was found: a line through the two sizes, or the
    larger figure where `flat`."""
    line = fit(points)
    if line is None:
        return float("nan"), "one size: no projection"
    fixed, per = line
    (_, y1), (n2, y2) = points[0], points[-1]
    if flat or per <= 0:
        return max(y1, y2), "flat"
    if fixed < 0:  # noise: a line through the origin and the larger size instead
        return y2 / n2 * n, f"proportional: {y2 / n2:.4g} x N"
    return fixed + per * n, f"{fixed:.4g} + {per:.4g} x N"


def grew(points: list[tuple[int, float]], share: float, floor: float = 0.0) -> bool:
    (_, y1), (_, y2) = points[0], points[-1]
    return y2 - y1 > max(share * y1, floor)


def human_s(s: float) -> str:
    if s != s:  # nan: one size
        return "-"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def human_mb(mb: float) -> str:
    if mb != mb:
        return "-"
    return f"{mb / 1024:.1f} GB" if mb >= 1024 else f"{mb:.0f} MB"


def throughput(m: Measured) -> str:
    f = m.figures
    if m.stage == "parse":
        return f"{f['files_per_s']:.0f} files/s, {f['notes_per_s'] / 1e3:.0f}k notes/s"
    if m.stage == "sequences":
        return f"{f['files_per_s']:.0f} files/s, {f['windows_per_s'] / 1e3:.0f}k windows/s"
    if m.stage == "train" and "windows_per_s" in f:
        return f"{f['windows_per_s']:.0f} windows/s (training)"
    if m.stage == "download" and "MB_per_s" in f:
        return f"{f['files_per_s']:.0f} files/s, {f['MB_per_s']:.0f} MB/s"
    return f"{f['files_per_s']:.0f} files/s"


def table(
    results: dict[int, dict[str, Measured]], stages: list[str]
) -> tuple[str, list[dict], list[str]]:
    sizes = sorted(results)
    head = "/".join(f"{n:,}" for n in sizes)
    lines = [
        f"| stage | wall ({head} files) | throughput ({sizes[-1]:,}) | "
        f"peak RSS (PSS) MB ({head}) | disk: out + work MB ({head}) | "
        f"peak disk MB ({sizes[-1]:,}) | time at {LAKH_FILES:,} | disk at {LAKH_FILES:,} | "
        f"RSS at {LAKH_FILES:,} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    fits: list[str] = []
    totals = {"time": 0.0, "disk": 0.0}
    for stage in stages:
        ms = [results[n][stage] for n in sizes if stage in results[n]]
        if not ms:
            continue
        cpu = [(m.files, m.cpu_s) for m in ms]
        t, t_how = project_to(
            [(m.files, m.seconds) for m in ms], LAKH_FILES, not grew(cpu, FLAT_TIME)
        )
        disk = [(m.files, m.out_mb + m.work_mb) for m in ms]
        d, d_how = project_to(disk, LAKH_FILES, not grew(disk, FLAT_TIME, 1.0))
        rss_points = [(m.files, m.peak_rss_mb) for m in ms]
        rss, rss_how = project_to(rss_points, LAKH_FILES, not grew(rss_points, *FLAT_RSS))
        grows = len(ms) > 1 and rss_how != "flat"
        rss_text = "flat" if rss_how == "flat" else "-"
        if grows:
            slope = (ms[-1].peak_rss_mb - ms[0].peak_rss_mb) / (ms[-1].files - ms[0].files)
            rss_text = f"grows {slope * 1e3:.0f} MB/1k files: {human_mb(rss)} if linear"
        totals["time"] += t
        totals["disk"] += d
        last = ms[-1]
        lines.append(
            f"| {stage} | {' / '.join(f'{m.seconds:.1f} s' for m in ms)} | {throughput(last)} | "
            f"{' / '.join(f'{m.peak_rss_mb:.0f} ({m.peak_pss_mb:.0f})' for m in ms)} | "
            f"{' / '.join(f'{m.out_mb:.0f} + {m.work_mb:.0f}' for m in ms)} | "
            f"{last.peak_disk_mb:.0f} | {human_s(t)}{' (flat)' if t_how == 'flat' else ''} | "
            f"{human_mb(d)}{' (flat)' if d_how == 'flat' else ''} | {rss_text} |"
        )
        rows.append({
            "stage": stage,
            "measured": [asdict(m) for m in ms],
            "time_at_lakh_s": t, "time_fit": t_how,
            "disk_at_lakh_mb": d, "disk_fit": d_how,
            "rss_at_lakh_mb": rss if grows else max(m.peak_rss_mb for m in ms),
            "rss_fit": rss_how, "rss_grows": grows,
        })  # fmt: skip
        peak = [(m.files, m.peak_disk_mb) for m in ms]
        peak_mb, p_how = project_to(peak, LAKH_FILES, not grew(peak, FLAT_TIME, 1.0))
        fits.append(
            f"{stage}: time s {t_how}; disk MB {d_how}; peak disk MB {p_how} "
            f"({human_mb(peak_mb)} at {LAKH_FILES:,}); RSS MB {rss_how}"
        )
    walls = " / ".join(
        f"{sum(results[n][s].seconds for s in stages if s in results[n]):.0f} s" for n in sizes
    )
    lines.append(
        f"| **total** | {walls} | | | | | **{human_s(totals['time'])}** | "
        f"**{human_mb(totals['disk'])}** | |"
    )
    return "\n".join(lines), rows, fits


def print_checks(
    truths: dict[int, dict[str, Any]],
    results: dict[int, dict[str, Measured]],
    groups: dict[int, dict[str, Any]],
    families: dict[int, dict[str, Any]],
) -> None:
    """Per size: the planted shares, and what parse and sequences made of them."""
    for size in sorted(results):
        truth = truths[size]
        c = truth["counts"]
        near = ", ".join(f"{k} {v}" for k, v in truth["near_kinds"].items())
        bad = ", ".join(f"{k} {v}" for k, v in truth["corrupt_kinds"].items())
        print(
            f"\ncorpus ({size:,} members, {truth['archive_mb']:.0f} MB .tar.gz; per file mean "
            f"{truth['mean_kb']:.0f} KB, median {truth['median_kb']:.0f} KB, max "
            f"{truth['max_kb']:.0f} KB): {c['original']:,} songs, {c['exact']:,} exact duplicates "
            f"({c['exact'] / size:.1%}), {c['near']:,} near duplicates ({c['near'] / size:.1%}: "
            f"{near}), {c['corrupt']:,} corrupt ({c['corrupt'] / size:.1%}: {bad})"
        )
        parse = results[size].get("parse")
        if parse is not None:
            f = parse.figures["files"]
            print(
                f"  parse found: {f.get('ok', 0):,} ok, {f.get('empty', 0)} empty, "
                f"{f.get('duplicate', 0)} duplicate (planted {c['exact']}), "
                f"{f.get('quarantined', 0)} quarantined (planted corrupt {c['corrupt']}); by "
                f"error: {parse.figures['quarantined_by_error']}; "
                f"{parse.figures['notes_per_file']:,.0f} notes per ok file"
            )
        seq = results[size].get("sequences")
        if seq is not None:
            g = seq.figures["grouping"]
            print(
                f"  sequences' split grouping (manifest): {g.get('files')} files in "
                f"{g.get('split_keys')} split keys (songs planted: {c['original']:,}; fewer keys: "
                f"unrelated songs linked, more: versions missed), largest group "
                f"{g.get('largest_split_group')}, "
                f"{g.get('files_grouped_by_shared_runs')} files linked by shared runs of "
                f"{g.get('shared_run')} notes; split_by {g.get('split_by')}"
            )
            fam = families.get(size)
            if fam:
                print(
                    f"  near-duplicate families split apart: {fam['families_split_apart']} of "
                    f"{fam['families']}; versions in their original's split by kind "
                    f"{fam['versions_with_original']}, in another "
                    f"{fam['versions_in_another_split']}"
                )
        gr = groups.get(size)
        if gr is None:
            continue
        if "error" in gr:
            print(f"  split grouping's cost: not measured ({gr['error']})")
            continue
        per = 1e3 / max(gr["files"], 1)
        print(
            f"  split grouping's cost (pass 1 rerun apart in a probe over {gr['files']:,} files, "
            f"peak RSS {gr['peak_rss_mb']:.0f} MB): reading the notes + content and tune hashes "
            f"{gr['read_and_hash_s']:.1f} s ({gr['read_and_hash_s'] * per:.2f} ms/file), "
            f"shared-run fingerprints +{gr['fingerprints_s']:.1f} s "
            f"({gr['fingerprints_s'] * per:.2f} ms/file; {gr['fingerprints']:,} kept), pairing "
            f"{gr['pairing_s']:.2f} s ({gr['links']:,} links), keys {gr['keys_s']:.2f} s"
        )
    probed = [(g["files"], g["peak_rss_mb"]) for _, g in sorted(groups.items()) if "error" not in g]
    if len(probed) > 1 and probed[-1][0] > probed[0][0]:
        (n1, m1), (n2, m2) = probed[0], probed[-1]
        per = (m2 - m1) / (n2 - n1)
        print(
            f"  pass 1's memory (the probe: every file's fingerprints held until they are paired) "
            f"grew {per * 1e3:.1f} MB per 1,000 files: {human_mb(m2 + per * (LAKH_FILES - n2))} "
            f"at {LAKH_FILES:,} if linear"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", action="store_true", help="run the rehearsal")
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_FILES} files, one size, tiny")
    ap.add_argument("--files", type=int, default=20_000, help="N: the larger size")
    ap.add_argument("--sizes", help="comma-separated sizes instead of N/2,N")
    ap.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)} (with what "
                    "they need before them)")  # fmt: skip
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the scratch projects")
    ap.add_argument("--scratch", type=Path, default=None, help="where scratch projects go")
    ap.add_argument(
        "--json",
        type=Path,
        help="where the report goes (benchmarks/.cache/lakh_scale-<sizes>.json)",
    )
    ap.add_argument("--probe-grouping", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--probe-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.probe_grouping is not None:
        args.probe_out.write_text(json.dumps(probe_grouping(args.probe_grouping)))
        return
    if not (args.run or args.quick):
        print(__doc__)
        return
    if args.quick:
        sizes = [QUICK_FILES]
        settings = QUICK_PARAMS
    else:
        sizes = (
            sorted({int(s) for s in args.sizes.split(",")})
            if args.sizes
            else sorted({max(args.files // 2, 1), args.files})
        )
        settings = REHEARSAL_PARAMS
    stages = list(STAGES)
    if args.stages:
        wanted = {s.strip() for s in args.stages.split(",")}
        unknown = wanted - set(STAGES)
        if unknown:
            raise SystemExit(f"--stages: unknown {sorted(unknown)}; stages are {', '.join(STAGES)}")
        # a stage needs the ones before it: run them, report only the ones asked for
        last = max(STAGES.index(s) for s in wanted)
        stages = list(STAGES[: last + 1])
        shown = [s for s in stages if s in wanted]
    else:
        shown = stages

    env = stage_env()
    scratch = Path(tempfile.mkdtemp(prefix="lakhflow-rehearsal-", dir=args.scratch))
    results: dict[int, dict[str, Measured]] = {}
    groups: dict[int, dict[str, Any]] = {}
    families: dict[int, dict[str, Any]] = {}
    truths: dict[int, dict[str, Any]] = {}
    started = time.perf_counter()
    try:
        for n in sizes:
            archive, truth = build_archive(n, args.seed)
            truths[n] = truth
            print(
                f"archive {archive.name}: {n:,} members, {truth['archive_mb']:.0f} MB (built in "
                f"{truth['build_s']:.0f} s, cached)",
                flush=True,
            )
            project = scratch / f"n{n}"
            logs = project / "logs"
            logs.mkdir(parents=True)
            write_params(project, archive, settings)
            results[n] = {}
            for stage in stages:
                m = run_stage(stage, project, n, logs, env)
                results[n][stage] = m
                print(
                    f"  {n:>6,} files  {stage:<9} {m.seconds:7.1f} s  CPU {m.cpu_s:7.1f} s  "
                    f"RSS {m.peak_rss_mb:6.0f} MB (PSS {m.peak_pss_mb:5.0f})  "
                    f"out {m.out_mb:7.1f} MB  work {m.work_mb:7.1f} MB  "
                    f"peak disk {m.peak_disk_mb:7.1f} MB  {throughput(m)}",
                    flush=True,
                )
                if stage == "sequences":
                    families[n] = family_check(project, truth)
                    groups[n] = measure_grouping(project, logs, env)
            if not args.keep:  # the next size's disk figures need no room taken by this one
                shutil.rmtree(project, ignore_errors=True)
    finally:
        if args.keep:
            print(f"scratch projects kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)

    text, rows, fits = table(results, shown)
    print_checks(truths, results, groups, families)
    print(f"\n{text}\n")
    if len(sizes) > 1:
        print("fits (N files; flat: no growth past the noise between the sizes):")
        print("\n".join(f"  {line}" for line in fits))
    print(
        f"Measured on {os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f} at the end) "
        f"in {human_s(time.perf_counter() - started)}; settings: "
        + "; ".join(f"{s}: {v}" for s, v in settings.items())
        + ". Projection: time = fixed + per file x N through the two sizes (flat where its CPU "
        f"time grew less than {FLAT_TIME:.0%}); disk likewise; RSS is the sum over the process "
        "tree (a forked worker's shared pages count once per worker; PSS splits them)."
    )
    report = {
        "sizes": sizes,
        "lakh_files": LAKH_FILES,
        "settings": settings,
        "cores": os.cpu_count(),
        "seconds": time.perf_counter() - started,
        "corpus": {
            n: {k: v for k, v in t.items() if k not in ("families", "exact", "corrupt")}
            for n, t in truths.items()
        },
        "stages": rows,
        "grouping_cost": groups,
        "families": families,
        "table": text,
    }
    out = args.json or CACHE / f"lakh_scale-{'-'.join(map(str, sizes))}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
