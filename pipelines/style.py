"""Style: which group (composer, artist, collection) a piece sounds like, told by a small
classifier fitted on real pieces' features, so that generated pieces can be labelled with the
group they sound like and compared with the group they were generated for.

The features are those a listener tells composers apart by that survive transposition: the
model trains on randomly transposed windows and generates in any key, so a key must not count
as a style. The pitch-class histogram enters as the magnitudes of its discrete Fourier
transform, exactly the same in every key (rotating the histogram only changes the phases), with
the mode and scale kept: coefficient 5 measures how diatonic the notes are, 6 how whole-tone,
3 how much of the augmented triad, and so on (Quinn; Amiot). Rotating the histogram to its most
common pitch class would do almost as well but breaks its ties arbitrarily, and the most common
pitch class is the dominant as often as the tonic. Register (range and mean pitch), rhythm (note
lengths and the time between onsets, in Yang & Lerch's 12 classes), polyphony and the parts'
shares of the notes complete the vector. Pure numpy and scikit-learn: no TensorFlow, no files.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from pipelines import music_metrics as mm

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

# scikit-learn is imported inside the functions that fit: it (and SciPy under it) takes a second
# to import, which every importer of this module would pay for its features alone.

PITCH_CLASS_SPECTRUM = 6  # |DFT| coefficients 1..6 of the histogram (0 is always 1)
LENGTH_CLASSES = len(mm.NOTE_LENGTH_CLASSES)


def feature_names(n_parts: int) -> list[str]:
    """The name of each entry of `style_features(piece, n_parts)`, in order."""
    return [
        *(f"pitch_class_spectrum_{k}" for k in range(1, PITCH_CLASS_SPECTRUM + 1)),
        "pitch_range",
        "mean_pitch",
        *(f"note_length_{c:.3g}" for c in mm.NOTE_LENGTH_CLASSES),
        *(f"inter_onset_{c:.3g}" for c in mm.NOTE_LENGTH_CLASSES),
        "polyphony",
        "polyphony_rate",
        *(f"part_share_{i}" for i in range(n_parts)),
    ]


def pitch_class_spectrum(piece: mm.Piece) -> np.ndarray:
    """The magnitudes of the DFT of the pitch-class histogram, coefficients 1 to 6: the same
    whatever the key (zeros for a piece without notes)."""
    spectrum = np.abs(np.fft.rfft(mm.pitch_class_histogram(piece)))
    return spectrum[1 : PITCH_CLASS_SPECTRUM + 1]


def _length_classes(lengths: np.ndarray) -> np.ndarray:
    """Lengths in beats assigned to the nearest of the 12 note-length classes (in log time),
    as shares (zeros for none)."""
    if not len(lengths):
        return np.zeros(LENGTH_CLASSES)
    classes = np.log2(np.asarray(mm.NOTE_LENGTH_CLASSES))
    nearest = np.abs(np.log2(np.maximum(lengths, 1e-6))[:, None] - classes[None, :]).argmin(1)
    counts = np.bincount(nearest, minlength=LENGTH_CLASSES).astype(np.float64)
    return counts / counts.sum()


def inter_onset_histogram(piece: mm.Piece) -> np.ndarray:
    """The times between consecutive distinct onsets (a chord's notes share one), in the
    note-length classes, as shares."""
    return _length_classes(np.diff(np.unique(piece.start)))


def part_shares(piece: mm.Piece, n_parts: int) -> np.ndarray:
    """Each part's share of the piece's notes, over the vocabulary's `n_parts` parts (zeros
    where notes carry no part)."""
    if piece.part is None or not len(piece):
        return np.zeros(n_parts)
    if piece.part.min() < 0 or piece.part.max() >= n_parts:
        msg = f"a note's part lies outside the vocabulary of {n_parts} parts"
        raise ValueError(msg)
    return np.bincount(piece.part, minlength=n_parts) / len(piece)


def _finite(value: float) -> float:
    """A figure undefined for this piece (a piece without notes) as 0, for the classifier."""
    return value if math.isfinite(value) else 0.0


def style_features(piece: mm.Piece, n_parts: int) -> np.ndarray:
    """The piece's style features, `len(feature_names(n_parts))` of them (see the module's
    docstring); a piece without notes gives zeros where a figure is undefined."""
    register = [mm.pitch_range(piece), float(piece.pitch.mean()) if len(piece) else 0.0]
    texture = [_finite(mm.polyphony(piece)), _finite(mm.polyphony_rate(piece))]
    return np.concatenate(
        [
            pitch_class_spectrum(piece),
            register,
            mm.note_length_histogram(piece),
            inter_onset_histogram(piece),
            texture,
            part_shares(piece, n_parts),
        ]
    ).astype(np.float64)


def feature_matrix(pieces: Sequence[mm.Piece], n_parts: int) -> np.ndarray:
    """The style features of each piece, [pieces, features]."""
    width = len(feature_names(n_parts))
    rows = [style_features(p, n_parts) for p in pieces]
    return np.stack(rows) if rows else np.empty((0, width))


class StyleClassifier:
    """Standardised features into a multinomial logistic regression, its classes weighted by
    the inverse of their counts so that a group with many pieces does not win by its size.

    Small and deterministic (lbfgs has no randomness; the seed is passed on anyway): it is a
    measuring instrument, to be as good on held-out real pieces as it can be while staying
    simple enough that its errors on generated ones mean something.
    """

    def __init__(self, regularisation: float = 1.0) -> None:
        self.regularisation = regularisation  # scikit-learn's C: smaller is stronger
        self.pipeline: Pipeline | None = None

    def fit(self, features: np.ndarray, labels: Sequence[str], seed: int = 0) -> StyleClassifier:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        features = np.asarray(features, dtype=np.float64)
        if len(features) != len(labels):
            msg = f"{len(features)} feature rows for {len(labels)} labels"
            raise ValueError(msg)
        if len(set(labels)) < 2:
            msg = "a style classifier needs pieces of at least two groups"
            raise ValueError(msg)
        model = LogisticRegression(
            C=self.regularisation, class_weight="balanced", max_iter=5000, random_state=seed
        )
        self.pipeline = make_pipeline(StandardScaler(), model).fit(features, list(labels))
        return self

    def _fitted(self) -> Pipeline:
        if self.pipeline is None:
            raise RuntimeError("the style classifier is not fitted")
        return self.pipeline

    @property
    def classes(self) -> list[str]:
        """The groups, in the order of predict_proba's columns."""
        return [str(c) for c in self._fitted().classes_]

    def predict(self, features: np.ndarray) -> list[str]:
        predicted = self._fitted().predict(np.asarray(features, dtype=np.float64))
        return [str(c) for c in predicted]

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Each piece's probability of each group in `classes`, [pieces, groups]."""
        return self._fitted().predict_proba(np.asarray(features, dtype=np.float64))


def accuracy(predicted: Sequence[str], requested: Sequence[str]) -> float:
    """The share of pieces labelled with the group they were asked for (nan for none)."""
    if len(predicted) != len(requested):
        msg = f"{len(predicted)} predictions for {len(requested)} pieces"
        raise ValueError(msg)
    if not len(predicted):
        return math.nan
    return sum(p == r for p, r in zip(predicted, requested, strict=True)) / len(predicted)


def accuracy_by_group(predicted: Sequence[str], requested: Sequence[str]) -> dict[str, float]:
    """For each requested group, the share of its pieces labelled with it (by group name)."""
    if len(predicted) != len(requested):
        msg = f"{len(predicted)} predictions for {len(requested)} pieces"
        raise ValueError(msg)
    hits: Counter[str] = Counter()
    counts = Counter(requested)
    for p, r in zip(predicted, requested, strict=True):
        hits[r] += p == r
    return {group: hits[group] / counts[group] for group in sorted(counts)}


def chance_levels(labels: Sequence[str], classes: Sequence[str] | None = None) -> dict[str, float]:
    """What guessing scores: `uniform`, one over the number of groups (a guess at random, and
    what the balanced classifier tends to on features that say nothing); `majority`, the
    largest group's share of `labels` (always guessing it)."""
    groups = set(classes) if classes is not None else set(labels)
    counts = Counter(labels)
    return {
        "uniform": 1.0 / len(groups) if groups else math.nan,
        "majority": max(counts.values()) / len(labels) if labels else math.nan,
    }


def held_out_predictions(
    features: np.ndarray,
    labels: Sequence[str],
    files: Sequence[str] | None = None,
    folds: int = 5,
    seed: int = 0,
    regularisation: float = 1.0,
) -> list[str]:
    """Each piece's group as predicted by a classifier fitted without it: `folds`-fold
    cross-validation, stratified by group and, where `files` are given, never splitting one
    file's pieces between fitting and testing (excerpts of one work would give it away)."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    features = np.asarray(features, dtype=np.float64)
    labels = list(labels)
    if files is None:
        splits = StratifiedKFold(folds, shuffle=True, random_state=seed).split(features, labels)
    else:
        splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
        splits = splitter.split(features, labels, groups=list(files))
    predicted: list[str] = [""] * len(labels)
    for fit_rows, test_rows in splits:
        classifier = StyleClassifier(regularisation).fit(
            features[fit_rows], [labels[i] for i in fit_rows], seed
        )
        for i, label in zip(test_rows, classifier.predict(features[test_rows]), strict=True):
            predicted[i] = label
    return predicted


def held_out_accuracy(
    features: np.ndarray,
    labels: Sequence[str],
    files: Sequence[str] | None = None,
    folds: int = 5,
    seed: int = 0,
) -> float:
    """The classifier's accuracy on real pieces it was not fitted on (see held_out_predictions):
    the ceiling that generated pieces are measured against."""
    return accuracy(held_out_predictions(features, labels, files, folds, seed), labels)
