"""The evaluate stage's style figures: the style classifier's accuracy on generated pieces
against its accuracy on held-out real ones, on hand-made styles (what the figures can tell), and
the whole stage on a score-mode project of two composers' folders with a style-conditioned model
(what the stage writes, and that nothing is written for a model without styles)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    CHORALES,
    SEQUENCES_TEST_PARAMS,
    bach_midi,
    make_project,
    mlflow_store,
    write_note_tables,
)
from test_evaluate import TINY_EVALUATE, TINY_GENERATE, TINY_TRAIN
from test_style import GROUPS, MAKERS, N_PARTS, corpus, transposed

from pipelines import config, evaluate, report
from pipelines import music_metrics as mm

# --------------------------------------------------------------------------- on hand-made styles


def test_pieces_in_their_style_score_near_the_ceiling_and_unconditioned_ones_near_chance() -> None:
    """The classifier tells three clearly different styles apart on held-out real pieces (a
    high ceiling). Pieces made in the style asked for score near it; pieces made without regard
    to the style asked for, as an unconditioned model makes them (here: each piece drawn from a
    random style, its label the styles in turn), score near chance, 1/3: the figure is not
    trivially high. 150 such pieces: a guess at chance has a standard deviation of
    sqrt(1/3 * 2/3 / 150) = 0.038, so 0.12 is over 3 of them."""
    train = corpus(40, seed=0)
    test = corpus(20, seed=1)
    in_style = corpus(20, seed=2)
    rng = np.random.default_rng(3)
    makers = list(MAKERS.values())
    unconditioned = [
        transposed(makers[int(rng.integers(0, 3))](rng), int(rng.integers(-6, 6)))
        for _ in range(150)
    ]
    in_turn = [GROUPS[i % len(GROUPS)] for i in range(len(unconditioned))]

    good = evaluate.style_accuracy(train, test, in_style, N_PARTS, seed=0)
    assert good["styles"] == sorted(GROUPS)
    assert good["train_excerpts"] == dict.fromkeys(sorted(GROUPS), 40)
    assert good["ceiling"]["accuracy"] > 0.9
    assert good["model"]["accuracy"] > 0.9
    assert good["ratio"] == pytest.approx(good["model"]["accuracy"] / good["ceiling"]["accuracy"])
    assert set(good["ceiling"]["by_style"]) == set(GROUPS)
    assert good["model"]["pieces"] == dict.fromkeys(sorted(GROUPS), 20)
    assert good["ceiling"]["chance"] == {"uniform": pytest.approx(1 / 3),
                                         "majority": pytest.approx(1 / 3)}  # fmt: skip

    bad = evaluate.style_accuracy(train, test, (unconditioned, in_turn), N_PARTS, seed=0)
    assert bad["ceiling"] == good["ceiling"]  # the same classifier, the same real pieces
    chance = bad["model"]["chance"]["uniform"]
    assert chance == pytest.approx(1 / 3)
    assert abs(bad["model"]["accuracy"] - chance) < 0.12, bad["model"]["accuracy"]
    assert bad["ratio"] < 0.5  # far from the target of 0.8


def test_pieces_of_styles_without_real_pieces_and_unknown_parts_are_handled() -> None:
    """A piece asked for a style the classifier was never fitted on (no real train excerpts of
    it) cannot be right: left out and counted. A note of a track no part is named (-1) is
    its own column, not an error; fewer than two styles to fit on is an error."""
    train = corpus(20, seed=0)
    test = corpus(5, seed=1)
    pieces, labels = corpus(5, seed=2)
    stray = mm.Piece([60, 64, 67], [0.0, 0.0, 1.0], [1.0, 1.0, 2.0], [-1, 4, -1])
    result = evaluate.style_accuracy(
        train, test, ([*pieces, stray, stray], [*labels, "chorale", "other"]), N_PARTS, seed=0
    )
    assert result["model"]["left_out"] == 1
    assert result["model"]["pieces"]["chorale"] == 6
    assert sum(result["model"]["pieces"].values()) == len(pieces) + 1
    assert 0 <= result["model"]["accuracy"] <= 1
    one = ([p for p, g in zip(*train, strict=True) if g == "etude"], ["etude"] * 20)
    with pytest.raises(ValueError, match="at least two groups"):
        evaluate.style_accuracy(one, test, test, N_PARTS)


def test_style_applies_only_to_a_group_conditioned_model_with_two_styles_of_train_files() -> None:
    def manifest(condition: str, files: dict[str, int]) -> dict:
        groups = [{"name": g, "train_files": n} for g, n in files.items()]
        return {"style": {"condition": condition, "groups": groups}}

    assert evaluate.style_vocabulary({}) == []
    assert evaluate.style_vocabulary(manifest("none", {})) == []
    styled = manifest("group", {"other": 0, "bach": 5, "etude": 3})
    assert evaluate.style_vocabulary(styled) == ["other", "bach", "etude"]
    assert evaluate.style_vocabulary(manifest("group", {"other": 0, "bach": 5})) == []
    assert evaluate.style_of("bach", ["other", "bach"]) == "bach"
    assert evaluate.style_of("palestrina", ["other", "bach"]) == "other"
    generated = {"pieces": [{"midi": "piece-000.mid", "style": "bach"},
                            {"midi": "piece-001.mid", "style": None}]}  # fmt: skip
    assert evaluate.requested_styles(generated) == {"piece-000": "bach", "piece-001": None}


def test_style_excerpts_are_cut_per_track_labelled_and_capped() -> None:
    from pipelines.controls import Track

    def track(file_id: str, group: str, n: int) -> Track:
        notes = {"pitch": np.arange(n) % 128, "step": np.ones(n), "duration": np.ones(n),
                 "part": np.zeros(n, np.int64)}  # fmt: skip
        return Track(file_id, -1, notes, group)

    tracks = [track("a", "bach", 50), track("b", "bach", 20), track("c", "palestrina", 35)]
    rng = np.random.default_rng(0)
    pieces, labels = evaluate.style_excerpts(tracks, ["other", "bach"], 10, 1.0, rng)
    assert labels == ["bach"] * 7 + ["other"] * 3  # 5 + 2 excerpts; palestrina pooled as other
    assert all(len(p) == 10 and p.start[0] == 0 for p in pieces)
    assert sorted(int(p.pitch[0]) for p in pieces[:7]) == [0, 0, 10, 10, 20, 30, 40]
    _, capped_labels = evaluate.style_excerpts(tracks, ["other", "bach"], 10, 1.0, rng, 2)
    assert capped_labels == ["bach", "bach", "other", "other"]


# --------------------------------------------------------------------------- the stage


def etudes(dest: Path, count: int) -> list[Path]:
    """Piano etudes: one line of running sixteenths over a wide chromatic range."""
    import pretty_midi

    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(17)
    out = []
    for i in range(count):
        midi = pretty_midi.PrettyMIDI(initial_tempo=120)
        piano = pretty_midi.Instrument(program=0)
        for k, pitch in enumerate(rng.integers(45, 90, 160).tolist()):
            piano.notes.append(pretty_midi.Note(80, int(pitch), k * 0.125, (k + 1) * 0.125))
        midi.instruments.append(piano)
        path = dest / f"etude{i}.mid"
        midi.write(str(path))
        out.append(path)
    return out


STYLED_TRAIN = ["train.condition=group", "train.min_group_files=1"]


@pytest.fixture(scope="module")
def styled(
    mlflow_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, dict]]:
    """A score-mode project of two folders, bach (chorales) and etude, a tiny style-conditioned
    model trained on it, pieces generated without primers (the styles in turn), evaluated."""

    from pipelines import generate, sequences, train

    root = tmp_path_factory.mktemp("evaluate-style")
    midis = [(p, "bach") for p in bach_midi(root / "bach", CHORALES)]
    midis += [(p, "etude") for p in etudes(root / "etude", 12)]  # 12: two land in the test split
    split = {"train": 0.5, "val": 0.25, "test": 0.25}
    params = {"sequences": {**SEQUENCES_TEST_PARAMS, "mode": "score", "split": split}}
    project = make_project(root / "project", params)
    write_note_tables(project / "data" / "notes", midis)
    sequences.run(config.load(project))
    with mlflow_store(project, mlflow_template):
        train.run(config.load(project, [*TINY_TRAIN, *STYLED_TRAIN]))
        generate.run(config.load(project, [*TINY_GENERATE, "generate.count=6",
                                           "generate.primer_notes=0"]))  # fmt: skip
        result = evaluate.run(config.load(project, [*STYLED_TRAIN, *TINY_EVALUATE]))
        yield project, result


@pytest.mark.slow
def test_a_style_conditioned_model_gets_its_style_figures(styled: tuple[Path, dict]) -> None:
    from mlflow import MlflowClient

    project, result = styled
    model = json.loads((project / "data" / "model" / "manifest.json").read_text())
    assert [g["name"] for g in model["style"]["groups"]] == ["other", "bach", "etude"]
    generated = json.loads((project / "data" / "generated" / "manifest.json").read_text())
    # in turn over the styles learned from files: `other` pooled none here
    assert [p["style"] for p in generated["pieces"]] == ["bach", "etude"] * 3

    data = json.loads((project / "data" / "metrics" / "eval.json").read_text())
    found = data["style"]
    assert found["styles"] == ["bach", "etude"]  # `other` had no train files: nothing to fit
    assert found["train_excerpts"]["bach"] > 0 and found["train_excerpts"]["etude"] > 0
    assert found["eval_notes"] == data["eval_notes"]
    assert found["model"]["left_out"] == 0 and found["model"]["pieces"] == {"bach": 3, "etude": 3}
    assert set(found["ceiling"]["pieces"]) == {"bach", "etude"}  # real test excerpts of both
    for name in ("ceiling", "model"):
        assert 0 <= found[name]["accuracy"] <= 1
        assert found[name]["chance"]["uniform"] == 0.5
        assert all(0 <= a <= 1 for a in found[name]["by_style"].values())
    # Four-voice chorales against one-line etudes: real excerpts of both are told apart.
    assert found["ceiling"]["accuracy"] > 0.8
    assert all(a > 0.8 for a in found["ceiling"]["by_style"].values())
    assert data["style_accuracy"] == found["model"]["accuracy"]
    assert data["style_ceiling"] == found["ceiling"]["accuracy"]
    assert data["style_ratio"] == pytest.approx(data["style_accuracy"] / data["style_ceiling"])
    headline = json.loads((project / "data" / "metrics" / "headline.json").read_text())
    assert set(headline) == {*evaluate.HEADLINE, *evaluate.STYLE_HEADLINE}
    assert headline["style_ratio"] == data["style_ratio"]
    assert result["style_ceiling"] == data["style_ceiling"]

    # Score mode: the parts of four-voice chorales are scored, in the sets and flat.
    assert data["model"]["heads"]["part"]["count"] > 0
    assert data["baselines"]["part"]["bigram"]["count"] > 0
    assert data["polyphony_real"] >= 1 and data["parts_used_real"] >= 1
    assert 0 <= data["outside_range"] <= 1 and 0 <= data["outside_range_real"] <= 1
    assert set(data["music"]["part_ranges"]) >= {"piano-1", "piano-2", "piano-3", "piano-4"}

    page = (project / "data" / "evaluation" / "report.html").read_text()
    assert "Style: do the pieces sound like the style asked for?" in page
    assert "<td>etude</td>" in page and "ceiling: accuracy on them" in page
    assert "Parts: voices in their registers" in page

    info = json.loads((project / "data" / "model" / "run.json").read_text())
    metrics = MlflowClient().get_run(info["run_id"]).data.metrics
    assert metrics["eval.style_ceiling"] == pytest.approx(data["style_ceiling"])
    assert metrics["eval.outside_range"] == pytest.approx(data["outside_range"])


@pytest.mark.slow
def test_without_styles_the_style_figures_are_absent(
    styled: tuple[Path, dict], tmp_path: Path
) -> None:
    """The same project with the model's manifest of an unconditioned model, or pieces generated
    for no style: no style figure at all (not zeros), and the headline without them."""
    project, _ = styled
    copy = tmp_path / "project"
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns("*.db", "mlartifacts"))
    cfg = config.load(copy, TINY_EVALUATE)
    inputs = evaluate.read_inputs(cfg)
    generated = evaluate.generated_continuations(cfg, inputs)
    test = evaluate.split_tracks(cfg, "test")
    assert evaluate.evaluate_style(cfg, inputs, generated, test, 16) is not None
    unconditioned = {**inputs.manifest, "style": {"condition": "none", "groups": []}}
    plain = evaluate.Inputs(inputs.model_dir, unconditioned, inputs.run_info, inputs.generated)
    assert evaluate.evaluate_style(cfg, plain, generated, test, 16) is None
    pieces = [{**piece, "style": None} for piece in inputs.generated["pieces"]]
    unasked = evaluate.Inputs(inputs.model_dir, inputs.manifest, inputs.run_info,
                              {**inputs.generated, "pieces": pieces})  # fmt: skip
    assert evaluate.evaluate_style(cfg, unasked, generated, test, 16) is None
    assert "Style:" not in report._style_section({"music": {}})
