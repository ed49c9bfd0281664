"""plots: the PNGs are read back (PIL) and measured: their size in pixels, where the notes,
the primer's shading and the bars fall, and in which colours."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from pipelines import plots

BAR = (0x44, 0x77, 0xAA)  # the histogram's and bar chart's fill
PRIMER = (230, 230, 230)  # axvspan's colour "0.9"


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB")).astype(np.int64)


def blues(value: float) -> tuple[int, ...]:
    """The colour of a bar shaded `value` (0-1) in the piano roll's colour map, as 8-bit RGB."""
    return tuple(round(255 * c) for c in matplotlib.colormaps["Blues"](value)[:3])


def extent(image: np.ndarray, colour: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) pixel of everything in exactly `colour`."""
    mask = (image == colour).all(axis=2)
    xs, ys = np.nonzero(mask.any(axis=0))[0], np.nonzero(mask.any(axis=1))[0]
    assert len(xs), f"no pixel of colour {colour}"
    return int(xs[0]), int(xs[-1]), int(ys[0]), int(ys[-1])


def runs(counts: np.ndarray) -> list[tuple[int, int]]:
    """(value, length) of each run of equal nonzero values in `counts`, in order."""
    found: list[tuple[int, int]] = []
    for i, value in enumerate(counts.tolist()):
        if value and i and counts[i - 1] == value:
            found[-1] = (value, found[-1][1] + 1)
        elif value:
            found.append((value, 1))
    return found


def roll(tmp_path: Path, **kwargs: object) -> np.ndarray:
    """A loud note at 0-2 s and a soft one at 6-8 s an octave up."""
    path = plots.piano_roll(
        np.array([60, 72]),
        np.array([0.0, 6.0]),
        np.array([2.0, 8.0]),
        tmp_path / "rolls" / "roll.png",  # the folder is made
        "a roll",
        **kwargs,  # type: ignore[arg-type]
    )
    assert path == tmp_path / "rolls" / "roll.png"
    return pixels(path)


def test_piano_roll_is_1100_by_440_and_shades_louder_notes_darker(tmp_path: Path) -> None:
    image = roll(tmp_path, velocity=np.array([127, 20]))
    assert image.shape == (440, 1100, 3)  # 10 x 4 inches at 110 dpi
    loud = extent(image, blues(0.25 + 0.75 * 127 / 127))
    soft = extent(image, blues(0.25 + 0.75 * 20 / 127))
    assert sum(blues(1.0)) < sum(blues(0.25 + 0.75 * 20 / 127))
    assert loud[1] < soft[0] and loud[2] > soft[3]  # earlier, and lower in pitch
    # seconds across: at the scale the starts 6 s apart give, each note is 2 s long (the edge
    # pixels are blended with the background, hence the slack)
    px_per_s = (soft[0] - loud[0]) / 6
    assert loud[1] - loud[0] == pytest.approx(2 * px_per_s, abs=3)
    assert soft[1] - soft[0] == pytest.approx(2 * px_per_s, abs=3)
    # pitch up: the bars are 0.8 semitone tall, 12 semitones apart
    px_per_semitone = (loud[2] - soft[2]) / 12
    assert loud[3] - loud[2] + 1 == pytest.approx(0.8 * px_per_semitone, abs=2)
    assert (image == PRIMER).all(axis=2).sum() < 50  # no primer: no shading


def test_piano_roll_without_velocity_shades_every_note_alike(tmp_path: Path) -> None:
    image = roll(tmp_path)
    even = extent(image, blues(0.25 + 0.75 * 0.8))
    assert even[0] < 300 and even[1] > 800  # both notes


def test_piano_roll_shades_the_primer_up_to_its_end(tmp_path: Path) -> None:
    image = roll(tmp_path, velocity=np.array([127, 20]), primer_end=4.0)
    assert image.shape == (440, 1100, 3)
    loud = extent(image, blues(1.0))
    soft = extent(image, blues(0.25 + 0.75 * 20 / 127))
    px_per_s = (soft[0] - loud[0]) / 6
    between = (loud[2] + soft[3]) // 2  # a row between the two notes
    shaded = np.nonzero((image[between] == PRIMER).all(axis=1))[0]
    # from the left edge (the first note's start, 0 s) to 4 s, unbroken
    assert shaded[0] == pytest.approx(loud[0], abs=1)
    assert shaded[-1] == pytest.approx(loud[0] + 4 * px_per_s, abs=2)
    assert len(shaded) == shaded[-1] - shaded[0] + 1
    unshaded = roll(tmp_path, velocity=np.array([127, 20]))
    assert not (unshaded[between] == PRIMER).all(axis=1).any()


def test_piano_roll_of_no_notes_still_draws(tmp_path: Path) -> None:
    empty = np.zeros(0)
    path = plots.piano_roll(empty, empty, empty, tmp_path / "empty.png", "nothing", primer_end=0.5)
    image = pixels(path)
    assert image.shape == (440, 1100, 3)
    assert not (image[..., 2] > image[..., 0] + 40).any()  # no blue note anywhere


def test_histogram_bars_are_as_high_as_their_counts(tmp_path: Path) -> None:
    path = plots.histogram([2, 0, 4], [0, 1, 2, 3], tmp_path / "h.png", "pitches", "pitch")
    image = pixels(path)
    assert image.shape == (440, 770, 3)  # 7 x 4 inches
    heights = (image == BAR).all(axis=2).sum(axis=0)
    (low, low_width), (high, high_width) = runs(heights)  # the empty bin draws nothing
    assert high == pytest.approx(2 * low, abs=1)
    assert high_width == pytest.approx(low_width, abs=1)
    drawn = np.nonzero(heights)[0]
    gap = drawn[-1] - drawn[0] + 1 - low_width - high_width
    assert gap == pytest.approx(low_width, abs=2)  # the empty bin is as wide as the others


def test_histogram_on_a_log_axis_gives_each_decade_the_same_width(tmp_path: Path) -> None:
    edges = [0, 1, 10, 100]  # the first bin starts at 0: linear up to 1, then log
    counts = [1, 2, 4]  # unlike heights, to tell the bins apart
    linear = pixels(plots.histogram(counts, edges, tmp_path / "lin.png", "t", "s"))
    logged = pixels(plots.histogram(counts, edges, tmp_path / "log.png", "t", "s", log_x=True))
    assert linear.shape == logged.shape == (440, 770, 3)
    lin = [width for _, width in runs((linear == BAR).all(axis=2).sum(axis=0))]
    log = [width for _, width in runs((logged == BAR).all(axis=2).sum(axis=0))]
    assert lin[2] == pytest.approx(10 * lin[1], abs=5)  # 10-100 is ten times 1-10
    assert log[2] == pytest.approx(log[1], abs=1)  # a decade each
    assert sum(lin) == pytest.approx(sum(log), abs=2)  # the same plot area


def test_bar_counts_draws_the_largest_on_top_and_leaves_out_the_rest(tmp_path: Path) -> None:
    counts = {"a": 3, "b": 1, "c": 2, "d": 2}
    image = pixels(plots.bar_counts(counts, tmp_path / "bars.png", "programs", top=3))
    assert image.shape == (231, 880, 3)  # 8 x (0.3 * 3 + 1.2) inches
    bars = runs((image == BAR).all(axis=2).sum(axis=1))  # (length, thickness), top to bottom
    assert len(bars) == 3  # "b", the smallest, left out
    (a, _), (c, _), (d, _) = bars
    assert a == pytest.approx(1.5 * c, abs=2)
    assert c == d


@pytest.mark.parametrize(("n", "height"), [(1, 231), (3, 231), (20, 792), (30, 792)])
def test_bar_counts_grows_with_the_bars_up_to_top(tmp_path: Path, n: int, height: int) -> None:
    counts = {f"program {i}": float(i + 1) for i in range(n)}
    image = pixels(plots.bar_counts(counts, tmp_path / "bars.png", "programs"))
    assert image.shape == (height, 880, 3)
    bars = runs((image == BAR).all(axis=2).sum(axis=1))
    assert len(bars) == min(n, 20)
    assert [length for length, _ in bars] == sorted(length for length, _ in bars)[::-1]


def near(image: np.ndarray, colour: tuple[int, ...], tolerance: int = 2) -> np.ndarray:
    """The mask of pixels within `tolerance` of `colour` in every channel (blending rounds)."""
    return (np.abs(image - np.array(colour)) <= tolerance).all(axis=2)


def tab10(i: int, alpha: float = 1.0) -> tuple[int, ...]:
    """tab10's colour i as 8-bit RGB, drawn at `alpha` over white."""
    rgb = matplotlib.colormaps["tab10"](i)[:3]
    return tuple(round(255 * (alpha * c + 1 - alpha)) for c in rgb)


def test_piano_roll_in_parts_gives_each_part_its_colour_and_a_legend(tmp_path: Path) -> None:
    """The low note is part 20, the high one part 3: colours go by sorted part (3 first)."""
    image = roll(tmp_path, part=np.array([20, 3]), part_names={3: "piano-4", 20: "strings-1"})
    assert image.shape == (440, 1100, 3)
    even = 0.25 + 0.75 * 0.8  # no velocity: every bar equally opaque
    low, high = near(image, tab10(1, even)), near(image, tab10(0, even))
    assert low.sum() > 500 and high.sum() > 500
    low_x, low_y = np.nonzero(low.any(axis=0))[0], np.nonzero(low.any(axis=1))[0]
    high_x, high_y = np.nonzero(high.any(axis=0))[0], np.nonzero(high.any(axis=1))[0]
    assert low_x[-1] < high_x[0] and low_y[0] > high_y[-1]  # earlier and lower: part 20's note
    # the legend's swatches, full colour, right of the roll; no Blues shading anywhere
    for i in (0, 1):
        swatch = np.nonzero(near(image, tab10(i)).any(axis=0))[0]
        assert len(swatch) > 10 and swatch[0] > high_x[-1], i
    assert near(image, blues(even)).sum() == 0


def test_draw_notes_in_parts_colours_by_part_and_velocity_sets_the_opacity() -> None:
    fig, ax = matplotlib.pyplot.subplots()
    handles = plots.draw_notes(
        ax, np.array([60, 64, 67, 48]), np.zeros(4), np.ones(4), np.array([127, 0, 127, 64]),
        part=np.array([2, 0, 0, 64]), part_names={0: "piano-1", 2: "piano-3"},
    )  # fmt: skip
    faces = ax.collections[0].get_facecolors()
    matplotlib.pyplot.close(fig)
    colours = [matplotlib.colormaps["tab10"](i)[:3] for i in range(3)]
    assert [h.get_label() for h in handles] == ["piano-1", "piano-3", "part 64"]
    np.testing.assert_allclose([h.get_facecolor()[:3] for h in handles], colours)
    np.testing.assert_allclose(faces[:, :3], [colours[1], colours[0], colours[0], colours[2]])
    assert faces[:, 3].tolist() == pytest.approx([1.0, 0.25, 1.0, 0.25 + 0.75 * 64 / 127])
    assert plots.draw_notes(ax, np.zeros(0), np.zeros(0), np.zeros(0), part=np.zeros(0)) == []
