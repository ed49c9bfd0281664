"""The parse stage's plots: note histograms, instruments and a piano roll, drawn in a process of
their own while the stage parses (pitch.png, step.png, duration.png, programs.png,
piano_roll.png)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.errors import LakhflowError
from pipelines.note_histograms import DURATION_EDGES, STEP_EDGES, NoteHistograms, program_names
from pipelines.parts import read_file_notes
from pipelines.workers import read_frame, write_frame


class Plotter:
    """Draws the plots in a process of its own, started with the stage: matplotlib's import and
    the piano roll overlap the parsing; only the histograms wait for the last counts.

    It draws into a folder of the work folder: write_outputs copies the pictures out.
    """

    PICTURES = ("pitch.png", "step.png", "duration.png", "programs.png", "piano_roll.png")

    def __init__(self) -> None:
        self.rolled = False
        code = "from pipelines.parse_plots import plotter_main; plotter_main()"
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, start_new_session=True, env=env
        )

    def _send(self, request: tuple) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):  # it died: wait() says so
            write_frame(self.proc.stdin, request)

    def roll(self, folder: Path, part: Path | None, file_id: str, title: str) -> None:
        """Draw the piano roll of `file_id`'s notes in `part` (None: an empty roll)."""
        self.rolled = True
        self._send(("roll", str(folder), part and str(part), file_id, title))

    def histograms(self, folder: Path, counts: NoteHistograms) -> None:
        """Draw the histograms of the final counts, and end."""
        if not self.rolled:
            self.roll(folder, None, "", "no notes")
        self._send(("histograms", str(folder), counts.to_json()))
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()

    def wait(self) -> None:
        if self.proc.wait() != 0:
            raise LakhflowError(
                f"drawing the parse plots failed (exit status {self.proc.returncode})"
            )

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def plotter_main() -> None:
    """The plotting process: imports matplotlib at once, then draws what arrives on stdin."""
    from pipelines import plots  # noqa: F401  (the slow import, done while the stage parses)

    while (request := read_frame(sys.stdin.buffer)) is not None:
        kind, folder, *args = request
        if kind == "roll":
            part, file_id, title = args
            notes = None
            if part is not None:
                notes = read_file_notes(Path(part), file_id, ["pitch", "start", "end", "velocity"])
            draw_roll(Path(folder) / "piano_roll.png", notes, title)
        else:
            jobs = histogram_jobs(Path(folder), NoteHistograms(args[0]))
            # The workers are done by now: half the pictures are drawn in a fork.
            child = os.fork()
            if child == 0:
                try:
                    for job in jobs[1::2]:
                        job()
                except BaseException:
                    import traceback

                    traceback.print_exc()
                    os._exit(1)
                os._exit(0)
            for job in jobs[::2]:
                job()
            _, status = os.waitpid(child, 0)
            if status != 0:
                raise SystemExit(f"drawing the plots failed in the forked plotter ({status})")


def draw_roll(path: Path, notes: dict[str, np.ndarray] | None, title: str) -> None:
    from pipelines import plots

    if notes is None:
        empty = np.zeros(0)
        plots.piano_roll(empty, empty, empty, path, title)
        return
    order = np.argsort(notes["start"], kind="stable")[:1000]  # the first 1000 in time
    plots.piano_roll(
        notes["pitch"][order], notes["start"][order], notes["end"][order], path,
        f"{title}: first {len(order)} notes", velocity=notes["velocity"][order],
    )  # fmt: skip


def histogram_jobs(folder: Path, hist: NoteHistograms) -> list[Callable[[], Any]]:
    """The parse stage's histograms and instrument counts, one callable each."""
    from functools import partial

    from pipelines import plots

    # The plotter draws the odd ones in a fork: the bars (the slowest) pair with the pitches.
    return [
        partial(plots.bar_counts, program_names(hist), folder / "programs.png",
                "Notes per instrument"),
        partial(
            plots.histogram, hist.step, STEP_EDGES, folder / "step.png",
            "Step (onset to onset in a track)", "quarter notes", log_x=True,
        ),
        partial(
            plots.histogram, hist.pitch, np.arange(129) - 0.5, folder / "pitch.png", "Pitch",
            "pitch (MIDI)",
        ),
        partial(
            plots.histogram, hist.duration, DURATION_EDGES, folder / "duration.png", "Duration",
            "quarter notes", log_x=True,
        ),
    ]  # fmt: skip
