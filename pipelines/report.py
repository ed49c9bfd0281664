"""The evaluate stage's pictures and report: PNGs of the model's pieces beside real excerpts and
the shuffled control (overlap per feature over the draws, Yang & Lerch densities, per-piece
figures, MusPy metrics, piano rolls), and one HTML page that says in words what every figure
measures and which way is better, with the tables (parts, and styles for a style-conditioned
model) and the pictures embedded.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipelines import music_metrics as mm
from pipelines.controls import SETS, Draw
from pipelines.plots import draw_notes, save_figure

COLOURS = {"model": "tab:red", "real": "tab:blue", "shuffled": "tab:gray"}
LABELS = {"model": "model", "real": "real vs real", "shuffled": "shuffled control"}
# Which way is better, in words, per kind of figure.
HIGHER = "higher is better, up to real vs real"
LOWER = "lower is better, down to real vs real"
CLOSER = "closer to real is better"
SET_FIGURES = {
    "overlap": "Yang & Lerch overlap area, mean over the features: how far the set's pieces sit "
    "from real pieces compared with how far real pieces sit from each other (1: alike)",
    "kl": "Yang & Lerch KL divergence of the same densities, mean over the features (0: alike)",
}


def describe(name: str) -> str:
    """What a figure measures, in words."""
    if name.startswith("distinct_") and name.endswith("grams"):
        n = name.removeprefix("distinct_").removesuffix("grams")
        return (f"The share of the piece's runs of {n} pitches that occur only once in it "
                "(1: no run repeats; a piece that loops a figure scores low).")  # fmt: skip
    return mm.DESCRIPTIONS.get(name, "")


# --------------------------------------------------------------------------- pictures


def plot_evaluation(draw: Draw, sets: Mapping[str, Any], out: Path) -> list[Path]:
    """The evaluation's pictures: overlap per feature over all draws, and from the first draw
    the densities, per-piece figures, MusPy metrics and piano rolls."""
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = [plot_overlaps(sets, out / "overlap_by_feature.png")]

    features = list(draw.yang_lerch["model"])
    cols = 3
    rows = math.ceil(len(features) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, feature in zip(axes.ravel(), features, strict=False):
        reference = draw.yang_lerch["model"][feature].intra_real
        every = np.concatenate([reference, *(draw.yang_lerch[s][feature].inter for s in SETS)])
        if np.ptp(every) > 0:
            grid = np.linspace(every.min(), every.max(), 200)
            ax.plot(grid, mm.kde(reference, grid), color="k", label="real to real (reference)")
            for name in SETS:
                inter = draw.yang_lerch[name][feature].inter
                ax.plot(grid, mm.kde(inter, grid), color=COLOURS[name], label=f"{LABELS[name]}")
        ax.set_title(feature, fontsize=9)
        ax.set_xlabel("distance to the reference's pieces", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(features) :]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7)
    fig.suptitle("Yang & Lerch distance densities, first draw: a set like real music follows "
                 "the black curve")  # fmt: skip
    written.append(save_figure(fig, out / "yang_lerch.png"))

    title = "Per piece: the model, real excerpts, shuffled real excerpts"
    written.append(boxplots(draw, dict(mm.PIECE_FIGURES), out / "piece_figures.png", title))
    title = "MusPy metrics per piece"
    written.append(boxplots(draw, dict(mm.MUSPY_METRICS), out / "muspy_metrics.png", title))
    written.append(piano_rolls(draw, out / "piano_rolls.png"))
    return written


def plot_overlaps(sets: Mapping[str, Any], path: Path) -> Path:
    """Overlap per feature and its mean, per set: mean and spread over the draws."""
    import matplotlib.pyplot as plt

    keys = ["overlap", *sorted(k for k in sets["model"] if k.startswith("overlap_"))]
    fig, ax = plt.subplots(figsize=(11, 3.8))
    x = np.arange(len(keys))
    width = 0.27
    for i, name in enumerate(SETS):
        means = [sets[name][k]["mean"] for k in keys]
        spread = [sets[name][k]["std"] for k in keys]
        ax.bar(x + (i - 1) * width, means, width, yerr=spread, capsize=2,
               color=COLOURS[name], label=LABELS[name])  # fmt: skip
    labels = ["MEAN", *(k.removeprefix("overlap_").replace("_", " ") for k in keys[1:])]
    ax.set_xticks(x, labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1.2)
    ax.set_ylabel("overlap with real (1: alike)")
    ax.set_title("Yang & Lerch overlap per feature: mean and spread over the reference draws")
    ax.legend(fontsize=8, loc="upper center", ncol=3, frameon=False)
    return save_figure(fig, path)


def boxplots(draw: Draw, metrics: Mapping[str, Any], path: Path, title: str) -> Path:
    import matplotlib.pyplot as plt

    cols = math.ceil(len(metrics) / 2) if len(metrics) > 4 else len(metrics)
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.0 * rows), squeeze=False)
    for ax, (name, metric) in zip(axes.ravel(), metrics.items(), strict=False):
        values = [[v for v in (metric(p) for p in draw.sets[s]) if math.isfinite(v)] for s in SETS]
        if all(values):
            ax.boxplot(values, tick_labels=["model", "real", "shuffled"])
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(metrics) :]:
        ax.axis("off")
    fig.suptitle(title)
    return save_figure(fig, path)


def piano_rolls(draw: Draw, path: Path, count: int = 3) -> Path:
    """Three of the model's pieces above three real excerpts, at the evaluation length."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, count, figsize=(4.2 * count, 5.6), squeeze=False)
    for row, (name, pieces) in enumerate((("model", draw.sets["model"]),
                                          ("real", draw.reference))):  # fmt: skip
        for col in range(count):
            ax = axes[row, col]
            if col < len(pieces):
                p = pieces[col]
                draw_notes(ax, p.pitch, p.start, p.end, cmap="Reds" if row == 0 else "Blues")
            ax.set_title(f"{name} {col + 1}", fontsize=9)
            ax.set_xlabel("beats", fontsize=8)
            ax.tick_params(labelsize=7)
        axes[row, 0].set_ylabel("pitch (MIDI)", fontsize=8)
    fig.suptitle("The model's continuations (top) and real test excerpts (bottom)")
    return save_figure(fig, path)


# --------------------------------------------------------------------------- the page


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float | np.floating):
        return "n/a" if not math.isfinite(value) else f"{float(value) + 0.0:.4g}"  # no "-0"
    return html.escape(str(value))


def _number(value: float) -> str:
    """Three decimals below 10, one below 1000: figures side by side read alike."""
    if not math.isfinite(value):
        return "n/a"
    value = float(value) + 0.0  # no "-0"
    return (
        f"{value:.3f}"
        if abs(value) < 10
        else f"{value:.1f}"
        if abs(value) < 1000
        else f"{value:.0f}"
    )


def _spread(stat: Mapping[str, float]) -> str:
    return f"{_number(stat['mean'])} ± {_number(stat['std'])}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{v if isinstance(v, Raw) else _cell(v)}</td>" for v in row) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


class Raw(str):
    """A cell already written as HTML."""


def _head_table(result: Mapping[str, Any]) -> str:
    """The model's heads against the count baselines; columns with no figure are left out."""
    model = result["model"]
    columns = {
        "NLL (lower is better)": lambda s, b: s.get("nll", math.nan),
        "accuracy (higher is better)": lambda s, b: s.get("accuracy", math.nan),
        "MSE (lower is better)": lambda s, b: s.get("mse", math.nan),
        "unigram NLL": lambda s, b: b.get("unigram", {}).get("nll", math.nan),
        "bigram NLL": lambda s, b: b.get("bigram", {}).get("nll", math.nan),
        "bigram accuracy": lambda s, b: b.get("bigram", {}).get("accuracy", math.nan),
    }
    rows = []
    for head, scores in model["heads"].items():
        base = result["baselines"].get(head, {})
        rows.append([head, *(f(scores, base) for f in columns.values())])
    full = model.get("pitch_full_context")
    if full:  # the same columns: the model and the bigram on each window's last note
        base = {"bigram": result["baselines"]["pitch"].get("bigram_full_context", {})}
        rows.append(["pitch, full context", *(f(full, base) for f in columns.values())])

    def shown(i: int) -> bool:
        return any(isinstance(r[i + 1], float) and math.isfinite(r[i + 1]) for r in rows)

    keep = [i for i in range(len(columns)) if shown(i)]
    header = ["head", *(list(columns)[i] for i in keep)]
    return _table(header, [[r[0], *(r[i + 1] for i in keep)] for r in rows])


def _parts_section(music: Mapping[str, Any], better: Mapping[str, str]) -> str:
    """The part figures beside both controls, and the real registers they are measured by."""
    names = [*mm.PART_FIGURES, "outside_range"]
    ranges = music.get("part_ranges") or {}
    listed = ", ".join(f"{html.escape(name)} {_number(lo)}-{_number(hi)}"
                       for name, (lo, hi) in ranges.items())  # fmt: skip
    return f"""<h2>Parts: voices in their registers</h2>
<p>Each part's real range is the 1st to 99th percentile of its pitches over the train split's
notes ({len(ranges)} parts: {listed or "none"}). Pieces whose notes carry no part leave these
figures undefined (n/a).</p>
{_sets_table(music["sets"], names, better)}"""


def _style_section(result: Mapping[str, Any]) -> str:
    """The style classifier's accuracy per style: on held-out real excerpts (the ceiling) and
    on the pieces generated for each style; empty for a model without styles."""
    found = result.get("style")
    if not found:
        return ""
    ceiling, model = found["ceiling"], found["model"]
    rows = [
        [name, found["train_excerpts"].get(name, 0), ceiling["pieces"].get(name, 0),
         ceiling["by_style"].get(name, math.nan), model["pieces"].get(name, 0),
         model["by_style"].get(name, math.nan)]
        for name in found["styles"]
    ]  # fmt: skip
    rows.append([Raw("<b>all</b>"), sum(found["train_excerpts"].values()),
                 sum(ceiling["pieces"].values()), ceiling["accuracy"],
                 sum(model["pieces"].values()), model["accuracy"]])  # fmt: skip
    header = ["style", "real train excerpts", "real test excerpts", "ceiling: accuracy on them",
              "generated pieces", "model: accuracy on them"]  # fmt: skip
    left = model["left_out"] + ceiling["left_out"]
    return f"""<h2>Style: do the pieces sound like the style asked for?</h2>
<p>A small classifier (pitch-class spectrum, register, rhythm, polyphony, part shares; logistic
regression, its styles weighted alike) is fitted on real excerpts of {found["eval_notes"]} notes
of the train split, labelled with their file's style. The <b>ceiling</b> is how often it names
the right style for real excerpts of the test split; the <b>model</b>'s figure, how often it
names the style each generated piece was asked for. Their ratio is {_cell(found["ratio"])}
(higher is better; 1: the pieces are as recognisable as real music). Guessing scores
{_cell(ceiling["chance"]["uniform"])} (one style of {len(found["styles"])} at random), or
{_cell(ceiling["chance"]["majority"])} on the test excerpts and
{_cell(model["chance"]["majority"])} on the pieces by always naming the commonest style.
{f"{left} pieces of styles without train excerpts are left out." if left else ""}</p>
{_table(header, rows)}"""


def _sets_table(sets: Mapping[str, Any], names: Sequence[str], better: Mapping[str, str]) -> str:
    rows = []
    for name in names:
        if name not in sets["model"]:
            continue
        bare = name.removeprefix("muspy_").removeprefix("overlap_")
        text = SET_FIGURES.get(name) or describe(bare)
        rows.append([name, text, *(Raw(_spread(sets[s][name])) for s in SETS),
                     better.get(name, CLOSER)])  # fmt: skip
    return _table(["figure", "what it measures", "model", "real", "shuffled", "better"], rows)


def report_html(result: Mapping[str, Any], pictures: Sequence[Path]) -> str:
    """One page: the verdict, every figure beside both controls with what it means, the
    tables and the pictures embedded (it travels as one file)."""
    music = result["music"]
    sets = music["sets"]
    overlap_keys = sorted(k for k in sets["model"] if k.startswith("overlap_"))
    piece_keys = [k for k in mm.PIECE_FIGURES if k in sets["model"]]
    ngram_keys = sorted(
        (k for k in sets["model"] if k.startswith("distinct_")),
        key=lambda k: int(k.removeprefix("distinct_").removesuffix("grams")),
    )
    muspy_keys = [k for k in sets["model"] if k.startswith("muspy_")]
    better = {"overlap": HIGHER, "kl": LOWER, "outside_range": LOWER}
    better |= dict.fromkeys(overlap_keys, HIGHER)
    verdict = (
        f"The model's mean overlap with real music is {_cell(result['overlap_ratio'])} of real vs "
        f"real's, and it <b>{'beats' if result['beats_shuffled'] else 'does not beat'}</b> the "
        "shuffled control (real excerpts with their pitches shuffled) by more than the spread "
        "over the draws."
    )
    copy_rows = [
        [c["piece"], c["notes"], c["longest_copied_run"], c["longest_copied_run_transposed"],
         c.get("source_path") or c.get("source_file_id") or ""]
        for c in music["copying"]["generated"]
    ]  # fmt: skip
    images = "".join(
        f'<figure><img src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}" '
        f'alt="{html.escape(p.stem)}"><figcaption>{html.escape(p.name)}</figcaption></figure>'
        for p in pictures
    )
    style = (
        "body{font-family:sans-serif;max-width:1150px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:0.5em 0 1.5em}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "th{background:#f3f3f3}td:first-child,td:nth-child(2),th:nth-child(2){text-align:left}"
        "td:nth-child(n+3){white-space:nowrap}img{max-width:100%}"
    )
    n = music["set_size"]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>lakhflow evaluation</title><style>{style}</style></head>
<body>
<h1>lakhflow evaluation: {html.escape(str(result.get("model_name")))} version \
{html.escape(str(result.get("model_version")))}</h1>
<p>{verdict}</p>
<p>Every set holds {n} pieces of {music["eval_notes"]} notes (the continuations are
{music["continuation_notes"]} notes). The <b>reference</b> is {n} real excerpts of the test split;
<b>model</b> is {n} of the {music["generated_pieces"]} generated continuations;
<b>real</b> is {n} other real excerpts (from other files where there are enough), compared with
the reference the same way (real vs real: the ceiling); <b>shuffled</b> is those real excerpts
with each one's pitches randomly permuted and its rhythm kept: music-shaped noise, the floor.
Each figure is the mean ± spread (standard deviation) over {music["draws"]} reference draws
from {music["test_files_used"]} test files
({music["test_tracks_long_enough"]} of {music["test_tracks"]} test tracks are long enough).</p>
<h2>The music against both controls</h2>
{_sets_table(sets, ["overlap", "kl", *piece_keys, *ngram_keys], better)}
<h2>Yang &amp; Lerch per feature</h2>
<p>For each feature, the overlap area of two densities: the distances between the reference's
pieces, and the distances from the set's pieces to the reference's (higher is better, 1 at
most).</p>
{_sets_table(sets, overlap_keys, better)}
{_parts_section(music, better)}
{_style_section(result)}
<h2>The model against count baselines on the test split</h2>
<p>{result["model"]["windows"]} test windows; {html.escape(result["model"]["heads_kind"])} heads.
NLL is in nats per note, averaged over every position of a window (context of 1 to
seq_length notes); "full context" scores each window's last note only, after the whole window.
The unigram counts notes, the bigram the note before; both are fitted on the train split.</p>
{_head_table(result)}
<h2>MusPy metrics (means per piece)</h2>
{_sets_table(sets, muspy_keys, {})}
<h2>Copying from the training files</h2>
<p>The longest run of each continuation's notes found in a training file (exact pitches, and up
to transposition); real test excerpts' longest is {music["copying"]["max_real"]}, and
{music["copying"]["pieces_copying"]} pieces copy {music["copying"]["threshold"]} notes or
more (lower is better).</p>
{_table(["piece", "notes", "copied run", "up to transposition", "source"], copy_rows)}
<h2>Pictures</h2>{images}
</body></html>
"""
