"""The style classifier's control: how often pieces of a model trained WITHOUT a style are
classified as a style, when each is labelled with the styles in turn, as a style-conditioned
model's pieces are. Near chance means the style figures measure the conditioning, not the
classifier.

Needs two built projects on the same data: `--project`, trained with `train.condition: group`
(presets/styles.yaml), and `--control`, the same data trained with `train.condition=none` and
generated from no primer (`lakhflow train -S train.condition=none`, then `lakhflow generate -S
generate.primer_notes=0`). Prints both projects' style accuracy, ceiling and chance.

Run: `.venv/bin/python benchmarks/style_control.py --project styled --control unstyled`
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pipelines import config, evaluate, storage


def style_figures(project: Path, styled: dict, length: int, label_in_turn: bool) -> dict:
    """The evaluate stage's style figures for the project's generated pieces, on excerpts of
    `length` notes, judged with the styled model's style vocabulary; the control's pieces
    labelled with the styles in turn."""
    cfg = config.load(project)
    inputs = evaluate.read_inputs(cfg)
    generated = storage.read_json(cfg.paths.generated_manifest)
    if label_in_turn:
        learned = [g["name"] for g in styled["style"]["groups"] if g["train_files"] > 0]
        for i, piece in enumerate(generated["pieces"]):
            piece["style"] = learned[i % len(learned)]
    inputs.manifest = {**inputs.manifest, "style": styled["style"]}
    inputs.generated = generated
    pieces = evaluate.generated_continuations(cfg, inputs)
    test = evaluate.split_tracks(cfg, "test")
    found = evaluate.evaluate_style(cfg, inputs, pieces, test, length)
    if found is None:
        raise SystemExit(f"{project}: no style figures (styles or labelled pieces missing)")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=Path())
    parser.add_argument("--control", type=Path, default=None)
    args = parser.parse_args()
    paths = config.load(args.project).paths
    if args.control is None or not paths.eval_metrics.exists():
        # `make bench` runs every benchmark bare: this one needs two projects built first
        print("style_control: give --project (built with presets/styles.yaml) and --control")
        return
    styled = storage.read_json(paths.model_manifest)
    figures = storage.read_json(paths.eval_metrics).get("style")
    if not figures:
        raise SystemExit(f"{args.project}: its evaluation has no style figures (train.condition)")
    length = int(figures["eval_notes"])
    rows = {
        "style-conditioned": style_figures(args.project, styled, length, False),
        "unconditioned (styles in turn)": style_figures(args.control, styled, length, True),
    }
    print(f"{'model':32} {'accuracy':>9} {'ceiling':>8} {'ratio':>6} {'chance':>7}  by style")
    for name, found in rows.items():
        by_style = ", ".join(f"{k} {v:.2f}" for k, v in found["model"]["by_style"].items())
        print(
            f"{name:32} {found['model']['accuracy']:9.3f} {found['ceiling']['accuracy']:8.3f} "
            f"{found['ratio']:6.2f} {found['model']['chance']['uniform']:7.2f}  {by_style}"
        )


if __name__ == "__main__":
    main()
