"""Bins: histograms on a fine grid, equal-mass and log cuts, and the manifest's edges and means."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines import bins
from pipelines.bins import Histogram
from pipelines.config import Sequences


def classes_of(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """The binning rule the manifest's edges are read with."""
    return np.searchsorted(np.asarray(edges), values, side="right")


def test_equal_mass_classes_hold_equal_shares_and_their_means() -> None:
    rng = np.random.default_rng(0)
    values = rng.uniform(0.1, 3.9, 40_000)
    hist = Histogram.for_range(4.0)
    hist.add(values)
    made = hist.bins(hist.equal_mass_cuts(8))
    assert len(made["edges"]) == 7 and np.all(np.diff(made["edges"]) > 0)
    classes = classes_of(values, made["edges"])
    shares = np.bincount(classes, minlength=8) / len(values)
    assert shares == pytest.approx(np.full(8, 1 / 8), abs=0.01)
    for k, mean in enumerate(made["values"]):
        assert mean == pytest.approx(values[classes == k].mean(), rel=1e-9)


def test_a_heavy_value_gets_a_class_of_its_own_and_no_class_is_empty() -> None:
    # most steps are an eighth note: equal shares would cut through it
    values = np.r_[np.full(700, 0.5), np.full(100, 0.25), np.full(100, 1.0), np.full(100, 2.0)]
    hist = Histogram.for_range(4.0)
    hist.add(values)
    made = hist.bins(hist.equal_mass_cuts(4))
    classes = classes_of(values, made["edges"])
    assert sorted(made["values"]) == made["values"] == [0.25, 0.5, 1.0, 2.0]
    assert np.bincount(classes).min() > 0
    assert len(set(classes[values == 0.5].tolist())) == 1


def test_log_cuts_are_spaced_evenly_in_log() -> None:
    values = np.geomspace(0.01, 4.0, 5000)
    hist = Histogram.for_range(4.0)
    hist.add(values)
    edges = hist.bins(hist.log_cuts(4))["edges"]
    assert len(edges) == 3
    ratios = np.diff(np.log(np.r_[0.01, edges, 4.0]))
    assert ratios == pytest.approx(np.full(4, ratios.mean()), rel=0.02)
    single = Histogram.for_range(4.0)
    single.add(np.full(10, 1.0))
    assert single.log_cuts(4) == []  # one value: nothing to cut


@pytest.mark.parametrize("bin_method", ["quantile", "log"])
def test_make_bins_keeps_chords_in_step_class_0(bin_method: str) -> None:
    p = Sequences(bins=6, velocity_bins=4, bin_method=bin_method)
    rng = np.random.default_rng(1)
    step = np.r_[np.zeros(3000), rng.choice([0.25, 0.5, 1.0, 1.5], 7000)]
    duration = rng.uniform(0.05, 6.0, 10_000)
    velocity = rng.integers(20, 120, 10_000)
    hists = (Histogram.for_range(p.max_step), Histogram.for_range(p.max_duration))
    hists[0].add(step)
    hists[1].add(duration)
    hist_velocity = Histogram.for_velocity()
    hist_velocity.add(velocity)
    made = bins.make_bins(*hists, hist_velocity, p)
    assert made["step"]["edges"][0] == bins.ZERO_STEP and made["step"]["values"][0] == 0.0
    assert (classes_of(step, made["step"]["edges"]) == 0).sum() == 3000
    for head, limit in (("step", 6), ("duration", 6), ("velocity", 4)):
        edges, values = made[head]["edges"], made[head]["values"]
        assert len(values) == len(edges) + 1 <= limit
        assert np.all(np.diff(edges) > 0)
    # velocities are integers: every edge lies between two of them
    assert all(edge % 1 == 0.5 for edge in made["velocity"]["edges"])


def test_an_empty_chord_class_takes_the_value_zero() -> None:
    hist = Histogram.for_range(4.0)
    hist.add(np.array([0.5, 1.0, 1.0, 2.0]))
    made = hist.bins([0, *hist.equal_mass_cuts(2, first_cell=1)])
    assert made["values"][0] == 0.0
    assert made["values"][1:] == pytest.approx([2.5 / 3, 2.0])  # the mass splits after the 1s
