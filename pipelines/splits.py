"""Split keys: which files must land in the same split, and the split each key falls in.

Files that share their notes (in other bytes), a long run of any track's melody (in any key:
a re-harmonisation, a re-saved near duplicate), their tune (split_by tune: the opening of the
highest voice, in any key) or their folder group (split_by group) share one key; a key's split
is a hash of it and the seed, so it depends on no file order and no process.

Shared runs are found by winnowing (Schleimer, Wilkerson & Aiken 2003, the scheme of MOSS):
each track's pitch intervals are hashed KGRAM at a time, and of every window of consecutive
k-gram hashes only the smallest is kept. With k + w - 1 = shared_run - 1 intervals, two tracks
that share a run of shared_run notes share that run's windows, so they keep at least one equal
fingerprint; a track keeps about 2 / (w + 1) of its k-grams, which is what lets this scale to
Lakh's hundreds of millions of notes. Files that keep an equal fingerprint are linked: always
when they share shared_run notes, never when they share at most KGRAM notes, and sometimes in
between (on the chorales, 41 of the 227 links joined files whose longest shared run is 17-23
notes: versions of one tune, such as the Passion chorale's).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from pipelines import schema
from pipelines.shards import shard_ranges
from pipelines.streams import Notes

TUNE_INTERVALS = 16  # the opening of the highest voice that names a tune
# Intervals hashed together in a shared-run k-gram: long enough that a k-gram is rarely a
# commonplace formula (a cadence, a scale) that unrelated pieces share, short enough that the
# window, shared_run - KGRAM intervals, keeps few of them.
KGRAM = 16  # at most 16: kgram_hashes packs a k-gram into 16 bytes
# A k-gram with fewer distinct intervals than this (a repeated note, a trill, a two-interval
# figure) or that repeats a figure of at most MAX_FIGURE intervals (an ostinato, an Alberti bass,
# an arpeggiated chord) is music any two pieces may share, so it is never kept: see
# low_information for what the chorales showed.
MIN_DISTINCT_INTERVALS = 3  # low_information tests it as: all are the min or the max
MAX_FIGURE = 4
# shared_run_pairs sorts the fingerprints PAIRING_SLICES slices of their range at a time (the
# sequences stage takes more slices for more fingerprints: at most SLICE_FINGERPRINTS a slice,
# some 30 MB while sorted), so pairing all of Lakh's never holds them all.
PAIRING_SLICES = 16
SLICE_FINGERPRINTS = 1 << 19
NO_FINGERPRINT = np.uint64(np.iinfo(np.uint64).max)  # the hash a skipped k-gram gets


def content_hash(notes: Notes) -> str:
    """The file's notes, whatever its bytes: onset and length to the millisecond, pitch, drum."""
    start = np.round(notes["start"].astype(np.float64) * 1000).astype(np.int64)
    length = np.round((notes["end"] - notes["start"]).astype(np.float64) * 1000).astype(np.int64)
    pitch, drum = notes["pitch"].astype(np.int64), notes["is_drum"].astype(np.int64)
    # pitch (< 2**7), length (under 2**40 ms) and drum in one key: sorted by start, then it
    key = (pitch << 41) | (np.clip(length, 0, (1 << 40) - 1) << 1) | drum
    order = np.lexsort((key, start))
    rows = np.stack([start[order], key[order]])
    return hashlib.sha256(rows.tobytes()).hexdigest()[:20]


def highest_voice(
    notes: Notes, limit: int = TUNE_INTERVALS + 1, max_onsets: int = 4096
) -> list[int]:
    """The skyline: the highest sounding pitch at each onset, repeats merged, first `limit` pitches.

    Pitched notes of every track count, so a melody is found whether it has its own track
    (a chorale's soprano) or shares one with its accompaniment (a piano file).
    """
    pitched = ~notes["is_drum"]
    start = np.round(notes["start"][pitched].astype(np.float64) * 1000).astype(np.int64)
    end = np.round(notes["end"][pitched].astype(np.float64) * 1000).astype(np.int64)
    pitch = notes["pitch"][pitched].astype(np.int64)
    order = np.argsort(start, kind="stable")
    start, end, pitch = start[order], np.maximum(end[order], start[order]), pitch[order]
    melody: list[int] = []
    onsets = np.unique(start)[:max_onsets]
    for lo in range(0, len(onsets), 32):
        block = onsets[lo : lo + 32]
        upto = int(np.searchsorted(start, block[-1], side="right"))
        s, e, p = start[:upto], end[:upto], pitch[:upto]
        near = (e > block[0]) | (s >= block[0])
        s, e, p = s[near], e[near], p[near]
        t = block[:, None]
        # a note sounds at t from its onset until its end; a zero-length note at its onset only
        sounding = (s[None, :] <= t) & ((e[None, :] > t) | (s[None, :] == t))
        for top in np.where(sounding, p[None, :], -1).max(axis=1).tolist():
            if top >= 0 and (not melody or melody[-1] != top):
                melody.append(top)
        if len(melody) >= limit:
            break
    return melody[:limit]


def tune_fingerprint(notes: Notes) -> str | None:
    """The first 16 pitch intervals of the highest voice (key-independent), or None if shorter."""
    melody = highest_voice(notes)
    if len(melody) <= TUNE_INTERVALS:
        return None
    intervals = np.diff(np.asarray(melody, dtype=np.int16)).astype(np.int8)
    return hashlib.sha256(intervals.tobytes()).hexdigest()[:20]


def kgram_length(shared_run: int) -> int:
    """Intervals per k-gram: KGRAM, or the whole run when a run is shorter (at most 16, which
    kgram_hashes packs into two 64-bit words)."""
    return min(KGRAM, shared_run - 1)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every bit of the polynomial hash moves every bit of the result,
    so the smallest hash of a window is any of its k-grams with equal chance."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def kgram_hashes(intervals: np.ndarray, k: int) -> np.ndarray:
    """A 64-bit hash of every k consecutive pitch intervals (int8: so of every k+1 notes, in any
    key), whatever the k-gram says."""
    grams = sliding_window_view(intervals, k)
    # A k-gram of at most 16 intervals is 16 bytes (-127..127 -> 1..255, 0 pads): two words.
    packed = np.zeros((len(grams), 2 * 8), np.uint8)
    packed[:, :k] = grams.view(np.uint8) + np.uint8(128)
    words = packed.view(np.uint64)
    return mix64(words[:, 0] ^ mix64(words[:, 1] ^ np.uint64(0x9E3779B97F4A7C15)))


def low_information(
    intervals: np.ndarray, k: int, positions: np.ndarray | None = None
) -> np.ndarray:
    """Which k-grams of the intervals (those starting at `positions`, or all) have fewer than
    MIN_DISTINCT_INTERVALS distinct intervals, or repeat a figure of at most MAX_FIGURE intervals.

    Measured on the demo's 410 Bach chorales (k = 16), the share of distinct 16-grams found in
    two pieces that share no 24-note run: made of one repeated interval 1 of 1 (repeated notes:
    bwv79.3 shares 62 of them, a drum-like line on a pitched track, with bwv41.6 and bwv171.6),
    of 2 distinct intervals 1 of 48 (2.1%), of 3: 3 of 395 (0.8%), of 4 or more at most 0.6%.
    Figures repeating within 4 intervals are 4 of the chorales' 80,605 distinct 16-grams, so
    skipping them costs the chorales nothing; they are what pop and rock accompaniments share.
    """
    grams = sliding_window_view(intervals, k)
    if positions is not None:
        grams = grams[positions]
    # fewer than 3 distinct intervals: every one is the k-gram's smallest or its largest
    low = ((grams == grams.min(axis=1)[:, None]) | (grams == grams.max(axis=1)[:, None])).all(1)
    for figure in range(1, min(MAX_FIGURE, k - 1) + 1):
        # periodic with this figure: each interval repeats the one `figure` before it
        low |= (grams[:, figure:] == grams[:, :-figure]).all(axis=1)
    return low


def window_argmin(values: np.ndarray, window: int) -> np.ndarray:
    """Where each window of `window` consecutive values has its smallest (the first, on ties):
    by doubling, two spans of a power of two covering each window, a few passes over the array
    instead of one per element of the window."""
    at = np.arange(len(values))
    span = 1
    while span * 2 <= window:
        left, right = at[:-span], at[span:]
        at = np.where(values[right] < values[left], right, left)
        span *= 2
    n = len(values) - window + 1
    left, right = at[:n], at[window - span : window - span + n]
    return np.where(values[right] < values[left], right, left)


def shared_run_fingerprints(tracks: Sequence[np.ndarray], shared_run: int) -> np.ndarray:
    """A file's fingerprints: those of each of its pitched tracks' pitches, sorted, each once.

    Any run of shared_run notes holds one whole window of w = shared_run - k k-grams; its
    smallest hash that is not low_information is kept here and in every other track holding the
    same run, in any key. Only the k-grams that win a window are looked at: a winner that says
    too little is set aside and its windows are won again, until every winner says enough (the
    same fingerprints as setting every such k-gram aside first, for a fifth of the work). The
    tracks go through together, end to end; no k-gram or window across two tracks counts.
    shared_run 0 keeps none, which turns the link off.
    """
    tracks = [t for t in tracks if len(t) >= shared_run] if shared_run else []
    if not tracks:
        return np.empty(0, np.uint64)
    k = kgram_length(shared_run)
    window = shared_run - k  # k + window - 1 = shared_run - 1 intervals
    pitches = np.concatenate(tracks).astype(np.int16)
    track = np.repeat(np.arange(len(tracks)), [len(t) for t in tracks])
    intervals = np.diff(pitches).astype(np.int8)  # pitches are 0..127
    hashes = kgram_hashes(intervals, k)
    hashes[track[k:] != track[:-k]] = NO_FINGERPRINT  # a k-gram across two tracks
    inside = track[shared_run - 1 :] == track[: len(track) - shared_run + 1]  # windows in a track
    looked = np.zeros(len(hashes), bool)
    while True:
        winners = window_argmin(hashes, window)[inside]
        new = np.unique(winners[~looked[winners] & (hashes[winners] != NO_FINGERPRINT)])
        looked[new] = True
        poor = new[low_information(intervals, k, new)]
        if not len(poor):
            break
        hashes[poor] = NO_FINGERPRINT
    kept = hashes[winners]
    return np.unique(kept[kept != NO_FINGERPRINT])


class UnionFind:
    """Labels joined into groups; each group's root is its smallest label."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, label: str) -> str:
        root = label
        while (up := self.parent.setdefault(root, root)) != root:
            root = up
        while label != root:  # path compression
            self.parent[label], label = root, self.parent[label]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass(frozen=True, eq=False)
class FileSurvey:
    """What pass 1 keeps of a file to link it: its notes' hash, its tune, its tracks' runs."""

    content: str
    tune: str | None
    # shared_run_fingerprints: uint64, sorted, unique; 8 bytes each, about 2 / (w + 1) per note
    runs: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))


def shared_run_pairs(file_ids: list[str], survey: dict[str, FileSurvey]) -> list[tuple[str, str]]:
    """Pairs of files that keep an equal fingerprint, each pair once, in file_ids order.

    The fingerprints go into one array with their file's index and are sorted: equal ones sit
    next to each other, and each is paired with the first file holding it, which links them
    all. One PAIRING_SLICES-th of the fingerprint range at a time (each file's are sorted, so a
    slice is a cut of each), so the sort's 28 bytes per fingerprint are paid on a slice only.
    """
    runs = [survey[f].runs if f in survey else np.empty(0, np.uint64) for f in file_ids]
    cuts = [np.r_[0, np.searchsorted(r, slice_bounds()), len(r)] for r in runs]
    found = []
    for s in range(PAIRING_SLICES):
        pieces = [r[c[s] : c[s + 1]] for r, c in zip(runs, cuts, strict=True)]
        hashes = np.concatenate([np.empty(0, np.uint64), *pieces])
        owners = np.repeat(np.arange(len(runs), dtype=np.int64), [len(x) for x in pieces])
        found.append(slice_pairs(hashes, owners))
    return pairs_of(found, file_ids)


def slice_bounds(slices: int = PAIRING_SLICES) -> np.ndarray:
    """Where `slices` equal slices of the fingerprint range meet (slices - 1 bounds). Equal
    fingerprints always share a slice, so the pairs do not depend on how many there are."""
    return np.array([lo for lo, _ in shard_ranges(slices)[1:]], dtype=np.uint64)


def slice_pairs(hashes: np.ndarray, owners: np.ndarray) -> np.ndarray:
    """Links on one slice: (first file << 32 | other file) for each, once; `owners` are the
    fingerprints' files, as indices in file order (a file's fingerprints are unique)."""
    order = np.lexsort((owners, hashes))  # by hash, then file: the first holder comes first
    hashes, owners = hashes[order], owners[order].astype(np.uint64)
    del order
    opens = np.ones(len(hashes), bool)  # the first of each run of equal fingerprints
    opens[1:] = hashes[1:] != hashes[:-1]
    first = owners[opens][np.cumsum(opens) - 1]
    linked = first != owners
    return np.unique((first[linked] << np.uint64(32)) | owners[linked])


def pairs_of(found: list[np.ndarray], file_ids: list[str]) -> list[tuple[str, str]]:
    """slice_pairs' links of every slice as (file id, file id) pairs, each once, in order."""
    pairs = np.unique(np.concatenate([np.empty(0, np.uint64), *found]))
    low = np.uint64(0xFFFFFFFF)
    return [(file_ids[int(p >> np.uint64(32))], file_ids[int(p & low)]) for p in pairs]


def split_keys(
    file_ids: list[str],
    groups: dict[str, str],
    survey: dict[str, FileSurvey],
    split_by: str,
    run_pairs: Sequence[tuple[str, str]] | None = None,
) -> dict[str, str]:
    """Each file's split key: files sharing notes or a long run (whatever split_by says), a tune
    (split_by tune) or a group (split_by group) share one; run_pairs: shared_run_pairs, if the
    caller has them already."""
    links = UnionFind()
    for a, b in shared_run_pairs(file_ids, survey) if run_pairs is None else run_pairs:
        links.union(f"file:{a}", f"file:{b}")
    for file_id in file_ids:
        label = f"file:{file_id}"
        links.find(label)
        info = survey.get(file_id)
        if info is not None:
            # the same notes in other bytes always travel together, whatever split_by says
            links.union(label, f"notes:{info.content}")
            if split_by == "tune" and info.tune is not None:
                links.union(label, f"tune:{info.tune}")
        if split_by == "group" and groups.get(file_id):
            links.union(label, f"group:{groups[file_id]}")
    named: dict[str, str] = {}
    for file_id in file_ids:
        group = groups.get(file_id) if split_by == "group" else None
        if group:
            root = links.find(f"file:{file_id}")
            named[root] = min(named.get(root, f"group:{group}"), f"group:{group}")
    # the root is the group's smallest label, "file:<smallest file_id>"
    return {
        f: named.get(links.find(f"file:{f}"), links.find(f"file:{f}").removeprefix("file:"))
        for f in file_ids
    }


def split_of(key: str, seed: int, ratios: dict[str, float]) -> str:
    """train/val/test from a hash of the split key and the seed."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    edge = 0.0
    chosen = ""
    for name in schema.SPLIT_NAMES:
        if ratios[name] <= 0:
            continue
        chosen = name
        edge += ratios[name]
        if u < edge:
            return name
    return chosen
