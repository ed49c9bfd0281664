"""Pictures shared by the stages: piano rolls, histograms and bar charts, saved as PNG.

Every function takes plain numpy arrays or counts and a path, so the parse, generate and
evaluate stages draw the same way. Matplotlib runs headless (Agg).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.collections import PatchCollection
from matplotlib.patches import Patch, Rectangle

DPI = 110


def save_figure(fig: plt.Figure, path: Path, *, tight: bool = True) -> Path:
    """Save as PNG; `tight=False` for a figure whose margins are set (tight_layout draws the
    figure once more to measure it: a third of a simple chart's time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def piano_roll(
    pitch: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    path: Path,
    title: str,
    velocity: np.ndarray | None = None,
    primer_end: float | None = None,
    part: np.ndarray | None = None,
    part_names: Mapping[int, str] | None = None,
) -> Path:
    """Notes as bars (seconds across, pitch up); darker bars are louder when velocity is given.

    `primer_end` shades the primer, so the generated continuation stands apart from it. With
    `part`, each part's bars have their own colour (louder: more opaque), and a legend beside
    the roll names the parts (`part_names`, else "part N").
    """
    fig, ax = plt.subplots(figsize=(10, 4))
    handles = draw_notes(ax, pitch, start, end, velocity, part=part, part_names=part_names)
    if primer_end is not None:
        ax.axvspan(ax.get_xlim()[0], primer_end, color="0.9", zorder=0, label="primer")
        ax.axvline(primer_end, color="0.4", linestyle="--", linewidth=1)
        if not handles:
            ax.legend(loc="upper right", frameon=False)
    if handles:
        # beside the roll, not on it: a four-part legend would hide a voice's notes
        primer = [Patch(color="0.9", label="primer")] if primer_end is not None else []
        ax.legend(
            handles=handles + primer, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False
        )
    ax.set_xlabel("seconds")
    ax.set_ylabel("pitch (MIDI)")
    ax.set_title(title)
    return save_figure(fig, path)


def part_colours(parts: Sequence[int]) -> dict[int, tuple[float, float, float]]:
    """A colour for each part, in the order given (tab10's, then tab20's lighter shades): the
    parts of a piece, sorted, so that a chorale's four voices have the same colours in every
    piece."""
    # integer arguments index a listed colour map's colours
    palette = [
        *matplotlib.colormaps["tab10"](np.arange(10)),
        *matplotlib.colormaps["tab20"](np.arange(1, 20, 2)),
    ]
    colours = {}
    for i, p in enumerate(parts):
        red, green, blue = (float(c) for c in palette[i % len(palette)][:3])
        colours[p] = (red, green, blue)
    return colours


def draw_notes(
    ax: plt.Axes,
    pitch: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    velocity: np.ndarray | None = None,
    cmap: str = "Blues",
    *,
    part: np.ndarray | None = None,
    part_names: Mapping[int, str] | None = None,
) -> list[Patch]:
    """A piano roll's bars on one axes (one picture may hold several rolls); shades of `cmap`
    by velocity, or with `part` a colour per part. Returns the parts' legend handles (none
    without `part`)."""
    pitch = np.asarray(pitch, dtype=np.float64)
    start = np.asarray(start, dtype=np.float64)
    end = np.asarray(end, dtype=np.float64)
    if not len(pitch):
        return []
    # Zero-length notes still get a sliver so they show.
    width = np.maximum(end - start, (end.max() - start.min()) * 1e-3 + 1e-9)
    bars = [Rectangle((s, p - 0.4), w, 0.8) for s, p, w in zip(start, pitch, width, strict=True)]
    shade = (
        np.asarray(velocity, dtype=np.float64) / 127.0
        if velocity is not None
        else np.full(len(pitch), 0.8)
    )
    handles: list[Patch] = []
    if part is None:
        collection = PatchCollection(bars, cmap=cmap, edgecolor="none")
        collection.set_array(0.25 + 0.75 * shade)
        collection.set_clim(0.0, 1.0)
    else:
        part = np.asarray(part, dtype=np.int64)
        colours = part_colours(np.unique(part).tolist())
        faces = np.array([(*colours[p], 0.25 + 0.75 * s) for p, s in zip(part, shade, strict=True)])
        collection = PatchCollection(bars, facecolors=faces, edgecolor="none")
        names = part_names or {}
        handles = [Patch(color=c, label=names.get(p, f"part {p}")) for p, c in colours.items()]
    ax.add_collection(collection)
    ax.set_xlim(start.min(), max(end.max(), start.min() + 1e-6))
    ax.set_ylim(pitch.min() - 2, pitch.max() + 2)
    return handles


def histogram(
    counts: Sequence[float] | np.ndarray,
    edges: Sequence[float] | np.ndarray,
    path: Path,
    title: str,
    xlabel: str,
    *,
    log_x: bool = False,
) -> Path:
    """A histogram already counted: `counts[i]` values fell in [edges[i], edges[i+1])."""
    counts = np.asarray(counts, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(7, 4))
    # One filled outline, not a patch per bin: half the drawing time of ax.bar.
    ax.stairs(counts, edges, fill=True, color="#4477aa")
    if log_x:
        # linear from 0 to the first positive edge, so a bin starting at 0 still shows
        ax.set_xscale("symlog", linthresh=float(edges[edges > 0].min()))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("notes")
    ax.set_title(title)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.13, top=0.9)  # ticks up to 999,999
    return save_figure(fig, path, tight=False)


def bar_counts(
    counts: Mapping[str, float], path: Path, title: str, xlabel: str = "notes", top: int = 20
) -> Path:
    """Horizontal bars of the `top` largest counts, largest first, with their names."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    fig, ax = plt.subplots(figsize=(8, 0.3 * max(len(items), 3) + 1.2))
    names = [name for name, _ in items][::-1]
    values = [value for _, value in items][::-1]
    ax.barh(names, values, color="#4477aa")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return save_figure(fig, path)
