"""The evaluate stage's pictures and report page, from figures made in memory: five PNGs, and
one HTML page that carries every table and picture in itself and says what each figure means."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from pipelines import controls, evaluate, report
from pipelines import music_metrics as mm


def judged() -> tuple[dict[str, Any], controls.Draw]:
    rng = np.random.default_rng(7)
    generated = [
        mm.Piece.from_steps(rng.integers(55, 80, 20), np.full(20, 0.5), np.full(20, 0.5))
        for _ in range(3)
    ]
    notes = {"step": np.full(40, 0.25), "duration": np.full(40, 1.0)}
    tracks = [
        controls.Track(f"f{i}", 0, {"pitch": rng.integers(50, 75, 40), **notes}) for i in range(4)
    ]
    judgement = controls.judge(generated, tracks, set_size=3, draws=2, seed=0,
                               seconds_per_beat=1.0, kde_points=32, ngrams=[2, 4])  # fmt: skip
    music = dict(judgement.summary)
    queries = [p.pitch for p in (*generated, *judgement.first.reference)]
    copies = evaluate.find_copies(queries, [], anchor=None)
    names = ["piece-000", "piece-001", "piece-002"]
    music["copying"] = evaluate.copying_summary(names, generated, copies, {}, 16)
    return music, judgement.first


def result_of(music: dict[str, Any], heads: dict[str, Any]) -> dict[str, Any]:
    return {
        "model_name": "lakhflow-<lstm>",
        "model_version": "3",
        "pitch_nll": 2.5,
        **evaluate.music_figures(music["sets"]),
        "model": {"heads_kind": "categorical", "windows": 300, "heads": heads,
                  "pitch_full_context": {"nll": 2.25, "accuracy": 0.5, "count": 10}},
        "baselines": {"pitch": {"unigram": {"nll": 3.0}, "bigram": {"nll": 2.75},
                                "bigram_full_context": {"nll": 2.7, "accuracy": 0.3}}},
        "music": music,
    }  # fmt: skip


def test_the_pictures_and_the_page_that_carries_them(tmp_path: Path) -> None:
    music, first = judged()
    pictures = report.plot_evaluation(first, music["sets"], tmp_path / "plots")
    assert sorted(p.name for p in pictures) == [
        "muspy_metrics.png", "overlap_by_feature.png", "piano_rolls.png", "piece_figures.png",
        "yang_lerch.png",
    ]  # fmt: skip
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pictures)

    heads = {"pitch": {"nll": 2.5, "accuracy": 0.25, "count": 10},
             "step": {"nll": -0.0, "accuracy": 1.0, "count": 10}}  # fmt: skip
    result = result_of(music, heads)
    page = report.report_html(result, pictures)
    assert page.count('<img src="data:image/png;base64,') == 5
    assert "lakhflow-&lt;lstm&gt; version 3" in page
    # A categorical model has no MSE: the column is left out; no figure reads "-0".
    assert "<th>MSE" not in page and ">-0<" not in page
    assert "<td>pitch</td><td>2.5</td><td>0.25</td><td>3</td><td>2.75</td>" in page
    assert "<td>pitch, full context</td><td>2.25</td><td>0.5</td>" in page
    for piece in ("piece-000", "piece-001", "piece-002"):
        assert f"<td>{piece}</td>" in page
    # Every figure of the sets table says what it measures, beside both controls.
    assert "<th>model</th><th>real</th><th>shuffled</th><th>better</th>" in page
    for name in ("longest_repeat", "scale_consistency", "overlap_pitch_class_histogram"):
        row = re.search(f"<tr><td>{name}</td><td>([^<]+)</td>(.*?)</tr>", page)
        assert row and len(row.group(1)) > 20, name
        assert row.group(2).count(" ± ") == 3, name
    verdict = "beats" if result["beats_shuffled"] else "does not beat"
    assert f"<b>{verdict}</b> the shuffled control" in page


def test_a_regression_model_shows_its_mse_column(tmp_path: Path) -> None:
    music, _ = judged()
    heads = {"pitch": {"nll": 2.5, "accuracy": 0.25, "count": 10},
             "step": {"mse": 0.125, "count": 10}}  # fmt: skip
    result = result_of(music, heads)
    page = report.report_html(result, [])
    assert "MSE (lower is better)" in page and "<td>0.125</td>" in page
    assert math.isfinite(result["overlap_ratio"])


def test_the_page_shows_the_part_figures_and_a_style_table() -> None:
    from test_style import N_PARTS, corpus

    rng = np.random.default_rng(2)
    notes = {"step": np.full(40, 0.5), "duration": np.full(40, 1.0)}
    tracks = [
        controls.Track(f"f{i}", 0, {"pitch": rng.integers(50, 75, 40),
                                    "part": np.full(40, i % 2), **notes}, "bach")
        for i in range(4)
    ]  # fmt: skip
    generated = [controls.excerpt_piece(t, 0, 20, 1.0) for t in tracks[:3]]
    ranges = {0: (55.0, 70.0), 1: (52.0, 72.0)}
    judgement = controls.judge(generated, tracks, set_size=3, draws=2, seed=0,
                               seconds_per_beat=1.0, kde_points=32, ngrams=[2],
                               part_ranges=ranges)  # fmt: skip
    music = dict(judgement.summary)
    queries = [p.pitch for p in (*generated, *judgement.first.reference)]
    copies = evaluate.find_copies(queries, [], anchor=None)
    music["copying"] = evaluate.copying_summary(["a", "b", "c"], generated, copies, {}, 16)
    music["part_ranges"] = {"piano-1": [55.0, 70.0], "piano-2": [52.0, 72.0]}
    heads = {"pitch": {"nll": 2.5, "accuracy": 0.25, "count": 10}}
    result = result_of(music, heads)
    plain = report.report_html(result, [])
    assert "Parts: voices in their registers" in plain and "piano-2 52.0-72.0" in plain
    for name in ("outside_range", "part_pitch_range", "parts_used"):
        row = re.search(f"<tr><td>{name}</td><td>([^<]+)</td>(.*?)</tr>", plain)
        assert row and len(row.group(1)) > 20, name
        assert row.group(2).count(" ± ") == 3, name
    outside = re.search("<tr><td>outside_range</td>.*?</tr>", plain)
    assert outside and "lower is better, down to real vs real" in outside.group(0)
    assert "Style:" not in plain  # a model without styles has no style table

    train, test = corpus(10, seed=0), corpus(4, seed=1)
    result["style"] = evaluate.style_accuracy(train, test, corpus(3, seed=2), N_PARTS) | {
        "eval_notes": 20
    }
    page = report.report_html(result, [])
    assert "Style: do the pieces sound like the style asked for?" in page
    for group in ("chorale", "etude", "folk"):
        row = re.search(f"<tr><td>{group}</td>((?:<td>[^<]*</td>){{5}})</tr>", page)
        assert row, group
        assert "<td>10</td><td>4</td>" in row.group(1) and "<td>3</td>" in row.group(1), group
    assert "<tr><td><b>all</b></td><td>30</td><td>12</td>" in page
