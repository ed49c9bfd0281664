"""Bins of the step, duration and velocity heads, cut from histograms of the training split.

Values are counted on a fine grid in bounded memory, then cut into classes of equal mass (or
spaced evenly in log); a value's class is `searchsorted(edges, x, side="right")`. The edges and
each class's mean value go into the shards' manifest, which the model and generator read.
"""

from __future__ import annotations

import itertools

import numpy as np

from pipelines.config import Sequences

ZERO_STEP = 1e-6  # steps below this are simultaneous onsets (chords): the step bins' class 0
HIST_CELLS = 1 << 15  # fine grid under the quantile bins: bounded memory however large the corpus


class Histogram:
    """Counts and sums of values on a fine grid: quantile bins and class means in bounded memory.

    A value's cell is `searchsorted(boundaries, x, side="right")`, the rule the manifest's edges
    use, and every edge is one of these boundaries, so a class is exactly a run of cells.
    """

    def __init__(self, boundaries: np.ndarray) -> None:
        self.boundaries = boundaries
        self.counts = np.zeros(len(boundaries) + 1, dtype=np.int64)
        self.sums = np.zeros(len(boundaries) + 1, dtype=np.float64)

    @classmethod
    def for_range(cls, maximum: float) -> Histogram:
        width = maximum / HIST_CELLS
        # cell boundaries at half-cells, so musical values (0.5, 1.0 beat) never sit on an edge
        grid = (np.arange(HIST_CELLS) + 0.5) * width
        return cls(np.concatenate([[ZERO_STEP], grid[grid > ZERO_STEP]]))

    @classmethod
    def for_velocity(cls) -> Histogram:
        return cls(np.arange(127, dtype=np.float64) + 0.5)

    def add(self, values: np.ndarray) -> None:
        # music repeats its values (steps of 0.5 beat, velocity 80): each distinct one is
        # placed once, which is what lets this keep up with a stream's notes
        distinct, counts = np.unique(values.astype(np.float64), return_counts=True)
        cells = np.searchsorted(self.boundaries, distinct, side="right")
        np.add.at(self.counts, cells, counts)
        np.add.at(self.sums, cells, distinct * counts)

    def merge(self, other: Histogram) -> None:
        """Add another histogram's counts and sums (of the same boundaries)."""
        self.counts += other.counts
        self.sums += other.sums

    def equal_mass_cuts(self, classes: int, first_cell: int = 0) -> list[int]:
        """Cells after which a class ends: each class takes an equal share of the mass still left,
        so a value that alone outweighs a share (0.5 beat) gets its own class and no class is empty.
        """
        cuts: list[int] = []
        counts = self.counts[first_cell:].tolist()
        remaining = sum(counts)
        acc = prev = 0
        for i, c in enumerate(counts):
            if c == 0:
                continue
            left = classes - len(cuts)
            share = remaining / left if left > 1 else float("inf")
            # a heavy value (0.5 beat) overshooting the share by more than the class so far
            # falls short of it starts a class of its own, rather than swallowing the 0.25s
            if 0 < acc < share < acc + c and acc + c - share > share - acc:
                cuts.append(first_cell + prev)
                remaining -= acc
                acc = 0
                left = classes - len(cuts)
                share = remaining / left if left > 1 else float("inf")
            acc += c
            prev = i
            if acc >= share and remaining - acc > 0:
                cuts.append(first_cell + i)
                remaining -= acc
                acc = 0
        return cuts

    def log_cuts(self, classes: int, first_cell: int = 0) -> list[int]:
        """Cells after which a class ends, for edges spaced evenly in log over the values' range."""
        used = np.flatnonzero(self.counts[first_cell:]) + first_cell
        if len(used) < 2 or classes < 2:
            return []
        lo = self.sums[used[0]] / self.counts[used[0]]
        hi = self.sums[used[-1]] / self.counts[used[-1]]
        if lo <= 0:
            lo = self.boundaries[min(used[0], len(self.boundaries) - 1)]
        targets = np.geomspace(lo, hi, classes + 1)[1:-1]
        cells = np.searchsorted(self.boundaries, targets, side="right")
        cuts: list[int] = []
        for cell in sorted(set(cells.tolist())):
            cell = min(max(cell, first_cell), len(self.boundaries) - 1)
            prev = cuts[-1] + 1 if cuts else first_cell
            # drop an edge that would leave a class empty
            if self.counts[prev : cell + 1].sum() > 0 and self.counts[cell + 1 :].sum() > 0:
                cuts.append(cell)
        return cuts

    def bins(self, cuts: list[int]) -> dict[str, list[float]]:
        """Edges (the boundaries after the cut cells) and each class's mean value."""
        edges = [float(self.boundaries[c]) for c in cuts]
        bounds = [0, *(c + 1 for c in cuts), len(self.counts)]
        values = []
        for lo, hi in itertools.pairwise(bounds):
            n = int(self.counts[lo:hi].sum())
            if n:
                values.append(float(self.sums[lo:hi].sum() / n))
            else:  # only the step's zero class can be empty
                values.append(0.0 if lo == 0 else float(self.boundaries[lo - 1]))
        return {"edges": edges, "values": values}


def make_bins(
    step: Histogram, duration: Histogram, velocity: Histogram, p: Sequences
) -> dict[str, dict[str, list[float]]]:
    cuts = step.equal_mass_cuts if p.bin_method == "quantile" else step.log_cuts
    step_cuts = [0, *cuts(p.bins - 1, first_cell=1)]  # class 0 holds exactly-zero steps (chords)
    dur_cuts = (
        duration.equal_mass_cuts(p.bins)
        if p.bin_method == "quantile"
        else duration.log_cuts(p.bins)
    )
    return {
        "step": step.bins(step_cuts),
        "duration": duration.bins(dur_cuts),
        # velocities are 127 integers: equal-mass classes whatever bin_method says
        "velocity": velocity.bins(velocity.equal_mass_cuts(p.velocity_bins)),
    }
