"""How the sampling settings change the music, judged by the evaluate stage's figures against
its controls (real vs real, shuffled), on a project that has been built (`make demo`).

For each setting, the trained model in data/model writes `generate.count` pieces from the
test split's primers, as the generate stage does (same primers for every setting: the same
seed), and the continuations are compared with real excerpts over `evaluate.draws` reference
draws, as the evaluate stage does. Nothing is written; MLflow is not touched.

Run: `.venv/bin/python benchmarks/sampling.py [--project .] [--penalty 1.0 1.2] [--temperature 1.0]`
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from pipelines import config, controls, evaluate, generate
from pipelines import music_metrics as mm
from pipelines.generator import NoteSampler
from pipelines.midi import tempo_of

FIGURES = ("overlap", "longest_repeat", "pitch_range", "n_pitches_used", "scale_consistency")


def continuations(cfg: config.Config) -> list[mm.Piece]:
    """The pieces the generate stage would write with these settings, after their primers."""
    g = cfg.generate
    source = generate.load_source(cfg)
    sampler = NoteSampler(source.model, source.manifest)
    rng = np.random.default_rng(g.seed)
    primers = generate.make_primers(cfg, source.manifest, g.count, rng)
    tempo = g.tempo_bpm or primers.tempo_bpm or tempo_of(source.manifest)
    pieces = sampler.generate(primers.notes, generate.sampling_of(g), rng, notes=g.notes,
                              seconds=None, tempo_bpm=tempo)  # fmt: skip
    primed = len(primers.notes)
    spb = evaluate.seconds_per_beat(source.manifest)
    out = []
    for piece in pieces:
        start = piece.starts()[primed:]
        start = start - start[0]
        end = start + np.asarray(piece.duration[primed:], dtype=np.float64)
        out.append(mm.Piece(piece.pitch[primed:], start / spb, end / spb))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, default=Path())
    parser.add_argument("--penalty", type=float, nargs="+", default=[1.0, 1.1, 1.2])
    parser.add_argument("--temperature", type=float, nargs="+", default=[0.9, 1.0])
    args = parser.parse_args()
    project = args.project.resolve()
    base = config.load(project)
    if not base.paths.model_file.exists() or not base.paths.shards_manifest.exists():
        print(f"no trained model or shards in {project}: run `make demo` there first")
        return 0  # nothing to measure is not a failure of `make bench`
    e = base.evaluate
    tracks = evaluate.split_tracks(base, "test")
    spb = evaluate.seconds_per_beat(generate.load_source(base).manifest)
    header = f"{'penalty':>8} {'temp':>5} " + " ".join(f"{f:>18}" for f in FIGURES)
    controls_row: dict[str, dict[str, dict[str, float]]] = {}
    for penalty, temperature in itertools.product(args.penalty, args.temperature):
        settings = [f"generate.repetition_penalty={penalty}", f"generate.temperature={temperature}",
                    f"generate.count={max(base.generate.count, e.set_size)}"]  # fmt: skip
        cfg = config.load(project, settings)
        started = time.perf_counter()
        judged = controls.judge(
            continuations(cfg), tracks, set_size=e.set_size, draws=e.draws, seed=e.seed,
            seconds_per_beat=spb, kde_points=e.kde_points, ngrams=e.ngrams,
        ).summary  # fmt: skip
        sets = judged["sets"]
        if not controls_row:
            print(f"sets of {judged['set_size']} pieces of {judged['eval_notes']} notes over "
                  f"{judged['draws']} draws; project {project}")  # fmt: skip
            print(header + f" {'ratio':>6} {'beats shuffled':>14}")
        controls_row = sets
        cells = " ".join(
            f"{sets['model'][f]['mean']:>10.3f} ± {sets['model'][f]['std']:<5.3f}" for f in FIGURES
        )
        ratio = sets["model"]["overlap"]["mean"] / sets["real"]["overlap"]["mean"]
        beats = controls.beats_shuffled(sets["model"]["overlap"], sets["shuffled"]["overlap"])
        print(f"{penalty:>8g} {temperature:>5g} {cells} {ratio:>6.3f} {beats!s:>14}"
              f"   ({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip
    for name in ("real", "shuffled"):
        cells = " ".join(
            f"{controls_row[name][f]['mean']:>10.3f} ± {controls_row[name][f]['std']:<5.3f}"
            for f in FIGURES
        )
        print(f"{name:>14} {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
