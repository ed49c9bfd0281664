"""Split keys: which files must land in the same split, and the split each key falls in.

Files that share their notes (in other bytes), their tune (split_by tune: the opening of the
highest voice, in any key) or their folder group (split_by group) share one key; a key's split
is a hash of it and the seed, so it depends on no file order and no process.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from pipelines import schema

TUNE_INTERVALS = 16  # the opening of the highest voice that names a tune

Notes = dict[str, np.ndarray]  # one file's notes: a numpy array per column of schema.NOTES


def content_hash(notes: Notes) -> str:
    """The file's notes, whatever its bytes: onset and length to the millisecond, pitch, drum."""
    start = np.round(notes["start"].astype(np.float64) * 1000).astype(np.int64)
    length = np.round((notes["end"] - notes["start"]).astype(np.float64) * 1000).astype(np.int64)
    rows = np.stack(
        [start, notes["pitch"].astype(np.int64), length, notes["is_drum"].astype(np.int64)]
    )
    order = np.lexsort(rows[::-1])
    return hashlib.sha256(np.ascontiguousarray(rows[:, order]).tobytes()).hexdigest()[:20]


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


@dataclass(frozen=True)
class FileSurvey:
    content: str
    tune: str | None


def split_keys(
    file_ids: list[str],
    groups: dict[str, str],
    survey: dict[str, FileSurvey],
    split_by: str,
) -> dict[str, str]:
    """Each file's split key: files sharing notes, a tune (split_by tune) or a group share one."""
    links = UnionFind()
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
