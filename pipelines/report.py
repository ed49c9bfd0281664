"""The evaluate stage's pictures and report: PNGs of generated vs real music (Yang & Lerch
densities, MusPy metrics, pitches and note lengths, distinct n-grams) and one HTML page with the
figures, the tables and the pictures embedded.
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
from pipelines.plots import save_figure


def plot_distributions(
    comparisons: Mapping[str, mm.FeatureComparison],
    generated: Sequence[mm.Piece],
    real: Sequence[mm.Piece],
    ngrams: Mapping[int, Mapping[str, float]],
    out: Path,
) -> list[Path]:
    """PNGs of generated vs real: Yang & Lerch densities, MusPy metrics, pitches, n-grams."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []

    names = list(comparisons)
    cols = 3
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), names, strict=False):
        c = comparisons[name].comparison
        ax.plot(c.grid, c.p, label="intra-set, real", color="tab:blue")
        ax.plot(c.grid, c.q, label="inter-set", color="tab:red")
        intra_gen = comparisons[name].intra_generated
        if len(intra_gen) and np.ptp(np.concatenate([intra_gen, c.grid[[0, -1]]])) > 0:
            ax.plot(c.grid, mm.kde(intra_gen, c.grid), "--", label="intra-set, generated",
                    color="tab:orange")  # fmt: skip
        ax.set_title(f"{name}\noverlap {c.overlap_area:.2f}, KL {c.kl_divergence:.2f}", fontsize=9)
        ax.set_xlabel("distance", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(names) :]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7)
    fig.suptitle("Yang & Lerch: distance densities per feature (generated vs real)")
    written.append(save_figure(fig, out / "yang_lerch.png"))

    metric_names = list(mm.MUSPY_METRICS)
    fig, axes = plt.subplots(2, math.ceil(len(metric_names) / 2), figsize=(16, 6), squeeze=False)
    for ax, name in zip(axes.ravel(), metric_names, strict=False):
        metric = mm.MUSPY_METRICS[name]
        values = [
            [v for v in (metric(p) for p in pieces) if math.isfinite(v)]
            for pieces in (generated, real)
        ]
        if all(values):
            ax.boxplot(values, tick_labels=["generated", "real"])
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(metric_names) :]:
        ax.axis("off")
    fig.suptitle("MusPy metrics per piece: generated vs real test excerpts")
    written.append(save_figure(fig, out / "muspy_metrics.png"))

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.5))
    every = np.concatenate([p.pitch for p in (*generated, *real)])
    pitch_bins = np.arange(every.min() - 0.5, every.max() + 1.5)
    for pieces, label in ((generated, "generated"), (real, "real")):
        pitch = np.concatenate([p.pitch for p in pieces])
        left.hist(pitch, bins=pitch_bins, density=True, histtype="step", label=label)
        lengths = np.concatenate([p.duration for p in pieces])
        right.hist(np.log2(np.maximum(lengths, 1 / 64)), bins=40, density=True,
                   histtype="step", label=label)  # fmt: skip
    left.set_xlabel("pitch (MIDI)")
    right.set_xlabel("note length, log2 beats")
    left.legend()
    written.append(save_figure(fig, out / "pitch_and_length.png"))

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ns = sorted(ngrams)
    width = 0.38
    x = np.arange(len(ns))
    ax.bar(x - width / 2, [ngrams[n]["generated"] for n in ns], width, label="generated")
    ax.bar(x + width / 2, [ngrams[n]["real"] for n in ns], width, label="real")
    ax.set_xticks(x, [f"{n}-grams" for n in ns])
    ax.set_ylabel("distinct / all (per piece)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    written.append(save_figure(fig, out / "distinct_ngrams.png"))
    return written


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else f"{value:.4g}"
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def report_html(result: Mapping[str, Any], pictures: Sequence[Path]) -> str:
    """One page: the headline, the tables, and the pictures embedded (it travels as one file)."""
    headline = [(k, v) for k, v in result.items() if not isinstance(v, dict | list)]
    model = result["model"]
    head_rows = []
    for head, scores in model["heads"].items():
        base = result["baselines"].get(head, {})
        head_rows.append(
            [
                head,
                scores.get("nll", math.nan),
                scores.get("accuracy", math.nan),
                scores.get("mse", math.nan),
                base.get("unigram", {}).get("nll", math.nan),
                base.get("bigram", {}).get("nll", math.nan),
                base.get("bigram", {}).get("accuracy", math.nan),
            ]
        )
    head_header = ["head", "NLL", "accuracy", "MSE", "unigram NLL", "bigram NLL", "bigram accuracy"]
    music = result["music"]
    muspy_rows = [
        [name, music["muspy"]["generated"][name], music["muspy"]["real"][name]]
        for name in music["muspy"]["generated"]
    ]
    yl_rows = [
        [name, s["overlap_area"], s["kl_divergence"], s["intra_real_mean"],
         s["intra_generated_mean"], s["inter_mean"]]
        for name, s in music["yang_lerch"].items()
    ]  # fmt: skip
    ngram_rows = [[f"{n}-grams", *v.values()] for n, v in music["distinct_ngrams"].items()]
    ngram_header = ["", *next(iter(music["distinct_ngrams"].values())).keys()]
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
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:0.5em 0 1.5em}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "th{background:#f3f3f3}td:first-child{text-align:left}img{max-width:100%}"
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>lakhflow evaluation</title><style>{style}</style></head>
<body>
<h1>lakhflow evaluation: {html.escape(str(result.get("model_name")))} version \
{html.escape(str(result.get("model_version")))}</h1>
<h2>Headline</h2>{_table(["figure", "value"], headline)}
<h2>Model vs baselines on the test split</h2>
<p>{model["windows"]} test windows; {html.escape(model["heads_kind"])} heads.
NLL in nats per note.</p>
{_table(head_header, head_rows)}
<h2>MusPy metrics (means)</h2>
<p>{music["generated_pieces"]} generated continuations vs {music["real_excerpts"]} real test
excerpts of the same lengths ({music["excerpt_notes"]} notes).</p>
{_table(["metric", "generated", "real"], muspy_rows)}
<h2>Yang &amp; Lerch</h2>
<p>Overlap area and KL divergence of the real set's intra-set distance density against the
inter-set (generated to real) density, per feature.</p>
{_table(["feature", "overlap", "KL", "intra real", "intra generated", "inter"], yl_rows)}
<h2>Repetition</h2>{_table(ngram_header, ngram_rows)}
<h2>Copying from the training files</h2>
<p>Longest run of notes after the primer found in a training file (exact pitches, and up to
transposition); the real test excerpts' longest is {music["copying"]["max_real"]}.</p>
{_table(["piece", "notes", "copied run", "up to transposition", "source"], copy_rows)}
<h2>Pictures</h2>{images}
</body></html>
"""
