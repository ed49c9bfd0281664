"""The evaluate stage's pictures and report page, from figures made in memory: four PNGs, and one
HTML page that carries every table and picture in itself."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from pipelines import evaluate, report
from pipelines import music_metrics as mm


def compared() -> tuple[dict[str, Any], Any, list[mm.Piece], list[mm.Piece]]:
    rng = np.random.default_rng(7)
    generated = {
        f"piece-{i:03d}": mm.Piece.from_steps(
            rng.integers(55, 80, 20), np.full(20, 0.5), np.full(20, 0.5)
        )
        for i in range(3)
    }
    notes = {"step": np.full(40, 0.25), "duration": np.full(40, 1.0)}
    tracks = [
        evaluate.Track("f", i, {"pitch": rng.integers(50, 75, 40), **notes}) for i in range(3)
    ]
    music, comparisons, gen, real = evaluate.compare_music(
        generated, tracks, seed=0, spb=1.0, kde_points=32, ngrams=[2, 4]
    )
    copies = evaluate.find_copies([p.pitch for p in (*gen, *real)], [], anchor=None)
    music["copying"] = evaluate.copying_summary(list(generated), gen, copies, {}, 16)
    return music, comparisons, gen, real


def test_the_pictures_and_the_page_that_carries_them(tmp_path: Path) -> None:
    music, comparisons, gen, real = compared()
    ngrams = {int(n): v for n, v in music["distinct_ngrams"].items()}
    pictures = report.plot_distributions(comparisons, gen, real, ngrams, tmp_path / "plots")
    assert sorted(p.name for p in pictures) == [
        "distinct_ngrams.png", "muspy_metrics.png", "pitch_and_length.png", "yang_lerch.png",
    ]  # fmt: skip
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pictures)

    result = {
        "model_name": "lakhflow-<lstm>",
        "model_version": "3",
        "pitch_nll": 2.5,
        "bigram_pitch_nll": math.nan,
        "model": {
            "heads_kind": "categorical",
            "windows": 300,
            "heads": {"pitch": {"nll": 2.5, "accuracy": 0.25, "count": 10}},
        },
        "baselines": {"pitch": {"unigram": {"nll": 3.0}, "bigram": {"nll": 2.75}}},
        "music": music,
    }
    page = report.report_html(result, pictures)
    assert page.count('<img src="data:image/png;base64,') == 4
    # The model name is escaped; a figure that is not a number reads nan.
    assert "lakhflow-&lt;lstm&gt; version 3" in page and "<td>nan</td>" in page
    assert "<td>pitch</td><td>2.5</td><td>0.25</td><td>nan</td><td>3</td><td>2.75</td>" in page
    for piece in ("piece-000", "piece-001", "piece-002"):
        assert f"<td>{piece}</td>" in page
    assert "scale_consistency" in page and "pitch_class_histogram" in page
