"""Scores and MIDI files gathered into a collection: the works of composers (or folk
collections) of the music21 corpus, or the music files of a folder, each score converted to MIDI
by music21 (cached per score).

A score that fails to convert is skipped and reported, never fatal; conversions run in a pool
of spawned processes, so one that crashes its worker costs only itself. An ABC file of several
tunes (the corpus's essenFolksong, oneills1850) is split into its tunes, one work each: every tune
starts at an `X:` line, and the file's header (what comes before the first `X:`) applies to all.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from pipelines import archive, storage

# In order of preference when one work exists in several encodings (bwv277.krn and .mxl).
SCORE_SUFFIXES = (".mxl", ".musicxml", ".xml", ".krn", ".abc")
FOLDER_SUFFIXES = archive.MIDI_SUFFIXES + SCORE_SUFFIXES


@dataclass(frozen=True)
class Item:
    """One file of a collection: its member name in the archive and the MIDI or score it is from;
    `tune` picks one tune (0-based) of an ABC file of several, None the whole file."""

    name: str
    path: Path
    tune: int | None = None

    @property
    def is_score(self) -> bool:
        return self.path.suffix.lower() in SCORE_SUFFIXES


def corpus_composers() -> list[str]:
    """The composers and collections of music21's corpus: its top folders holding scores."""
    import music21.corpus
    from music21.corpus import corpora

    root = Path(music21.corpus.__file__).parent
    return sorted(
        {
            path.relative_to(root).parts[0]
            for path in corpora.CoreCorpus().getPaths()
            if path.suffix.lower() in SCORE_SUFFIXES and path.is_relative_to(root)
        }
    )


def composer_items(composer: str) -> list[Item]:
    """The works of one composer (a top folder) of the music21 corpus, named
    `<composer>/<work>.mid`, sorted. A work in a subfolder (beethoven/opus18no1/movement1) is
    named `opus18no1-movement1`, so the folder holding every work, the parse stage's group, is
    the composer.

    The corpus's Roman-numeral analyses (.rntxt) are chord analyses, not works, and are left
    out; a work stored in two encodings is taken once, from its MusicXML. An ABC file of n > 1
    tunes gives n works, `<work>-<k>.mid`, k its tune's place in the file, zero-padded so names
    sort in the file's order.
    """
    import music21.corpus

    root = Path(music21.corpus.__file__).parent / composer
    chosen: dict[str, Item] = {}
    for found in sorted(Path(p) for p in music21.corpus.getComposer(composer)):
        if found.suffix.lower() not in SCORE_SUFFIXES:
            continue
        relative = found.relative_to(root) if found.is_relative_to(root) else Path(found.name)
        work = f"{composer}/{'-'.join(relative.with_suffix('').parts)}"
        tunes = len(abc_tunes(found.read_text(errors="replace"))) if _is_abc(found) else 1
        if tunes == 1:
            candidates = [Item(f"{work}.mid", found)]
        else:
            width = len(str(tunes))
            candidates = [Item(f"{work}-{k + 1:0{width}d}.mid", found, k) for k in range(tunes)]
        for item in candidates:
            if item.name not in chosen or _rank(found) < _rank(chosen[item.name].path):
                chosen[item.name] = item
    return [chosen[name] for name in sorted(chosen)]


def bach_items() -> list[Item]:
    """The Bach works of the music21 corpus (the `bach` source and the demo's data)."""
    return composer_items("bach")


def _rank(path: Path) -> int:
    return SCORE_SUFFIXES.index(path.suffix.lower())


def _is_abc(path: Path) -> bool:
    return path.suffix.lower() == ".abc"


def abc_tunes(text: str) -> list[str]:
    """The tunes of an ABC file, each with the file's header before it; the whole text where
    it has no `X:` line (one tune). A tune runs from its `X:` line to the next one."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.lstrip().startswith("X:")]
    if not starts:
        return [text]
    header = "".join(lines[: starts[0]])
    ends = [*starts[1:], len(lines)]
    return [header + "".join(lines[start:end]) for start, end in zip(starts, ends, strict=True)]


@dataclass
class Folder:
    """The music files found in a folder, and how many links leading out of it were skipped."""

    files: dict[str, Path]  # name in the archive (the file's real path in the folder) -> path
    links_outside: int = 0


def walk_folder(folder: Path) -> Folder:
    """MIDI files and scores under `folder`, without leaving it through a link.

    A link (to a file or a folder) that resolves outside `folder` is skipped and counted: a
    `leak.mid -> /etc/shadow` must not be packed into the archive. A link that stays inside is
    followed, and each file is taken once, under its real path, so neither a second link to
    it nor a link loop adds anything. Hidden files and folders are left out.
    """
    root = folder.resolve()
    found = Folder({})
    walked: set[Path] = set()
    pending = [root]
    while pending:
        directory = pending.pop()
        if directory in walked:
            continue
        walked.add(directory)
        for entry in sorted(directory.iterdir()):
            if entry.name.startswith("."):
                continue
            real = Path(os.path.realpath(entry))  # unlike Path.resolve, no raise on a link loop
            if not real.is_relative_to(root):
                found.links_outside += 1
                continue
            if any(part.startswith(".") for part in real.relative_to(root).parts):
                continue
            if real.is_dir():
                pending.append(real)
            elif real.is_file() and real.suffix.lower() in FOLDER_SUFFIXES:
                found.files[real.relative_to(root).as_posix()] = real
    return found


def folder_items(found: dict[str, Path]) -> list[Item]:
    """The files of a folder as items named by their path in it (`Chopin/piece1.mid`).

    A score becomes `<name>.mid`, or `<name>.<suffix>.mid` where a MIDI file or another score
    already has that name.
    """
    items = {
        name: Item(name, path) for name, path in found.items() if not Item(name, path).is_score
    }
    for name, path in sorted(found.items()):
        if Item(name, path).is_score:
            midi_name = str(PurePosixPath(name).with_suffix(".mid"))
            if midi_name in items:
                midi_name = f"{name}.mid"
            items[midi_name] = Item(midi_name, path)
    return [items[name] for name in sorted(items)]


def gather(
    items: list[Item], cache: Path, *, workers: int, limit: int, max_bytes: int
) -> tuple[dict[str, Path], dict[str, str], dict[str, int]]:
    """The MIDI file for each item (the item itself, or its converted score in `cache`).

    Takes items in order until `limit` have MIDI (0: all); a score that fails to convert is
    skipped and reported, never fatal, and its failure is cached like a success.
    Returns (name -> MIDI path, name -> error, counts of converted and cached scores).
    """
    ready: dict[str, Path] = {}
    failed: dict[str, str] = {}
    counts = {"converted": 0, "cached": 0}
    want = limit or len(items)
    position = 0
    while len(ready) < want and position < len(items):
        batch = items[position : position + want - len(ready)]
        position += len(batch)
        todo: list[tuple[Item, str]] = []
        for item in batch:
            if item.path.stat().st_size > max_bytes:
                raise archive.UnsafeMember(
                    f"{item.path} is {item.path.stat().st_size / 1e6:.1f} MB, over the cap of "
                    f"{max_bytes / 1e6:g} MB (download.max_member_mb)"
                )
            if not item.is_score:
                ready[item.name] = item.path
                continue
            key = _score_key(item)
            if (cache / f"{key}.mid").exists():
                ready[item.name] = cache / f"{key}.mid"
                counts["cached"] += 1
            elif (cache / f"{key}.failed").exists():
                failed[item.name] = (cache / f"{key}.failed").read_text()
            else:
                todo.append((item, key))
        scores = [(item.path, item.tune) for item, _ in todo]
        for index, midi, error in _convert_all(scores, workers):
            item, key = todo[index]
            if midi is not None:
                with storage.atomic_path(cache / f"{key}.mid") as tmp:
                    tmp.write_bytes(midi)
                ready[item.name] = cache / f"{key}.mid"
                counts["converted"] += 1
            else:
                failed[item.name] = error or "unknown error"
                if error and not error.startswith("worker died"):
                    (cache / f"{key}.failed").write_text(error)
    return ready, failed, counts


def _score_key(item: Item) -> str:
    if item.tune is None:
        h = hashlib.sha256(item.path.read_bytes())
    else:  # the tune's own text: another tune of its file changing leaves it cached
        h = hashlib.sha256(_tune_text(item.path, item.tune).encode())
    h.update(item.path.suffix.lower().encode())  # music21 picks its reader by the suffix
    return h.hexdigest()[:32]


def _tune_text(path: Path, tune: int) -> str:
    return abc_tunes(path.read_text(errors="replace"))[tune]


def score_to_midi(path: Path, tune: int | None = None) -> bytes:
    """A music21-readable score (MusicXML, Kern, ABC), or one tune of an ABC file, as Standard
    MIDI File bytes."""
    from music21 import converter
    from music21.midi import translate

    if tune is None:
        score = converter.parse(path, forceSource=True)
    else:
        score = converter.parseData(_tune_text(path, tune), format="abc")
    return bytes(translate.music21ObjectToMidiFile(score).writestr())


def _convert_one(path: str, tune: int | None) -> tuple[bytes | None, str | None]:
    try:
        return score_to_midi(Path(path), tune), None
    except Exception as exc:  # music21 raises many kinds; one bad score costs only itself
        text = str(exc).splitlines()[0] if str(exc) else ""
        return None, f"{type(exc).__name__}: {text}"[:200].rstrip(": ")


def _convert_all(
    scores: list[tuple[Path, int | None]], workers: int
) -> Iterator[tuple[int, bytes | None, str | None]]:
    """(index, MIDI bytes or None, error) per score (a file, or one tune of it), converted in a
    process pool."""
    if not scores:
        return
    workers = min(workers or os.cpu_count() or 1, len(scores))
    bar = tqdm(total=len(scores), unit="score", desc="converting to MIDI", dynamic_ncols=True)
    try:
        if workers <= 1:
            for index, (path, tune) in enumerate(scores):
                yield index, *_convert_one(str(path), tune)
                bar.update()
            return
        # spawn, not fork: the caller may hold threads (Prefect, a test server)
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        try:
            futures = {
                pool.submit(_convert_one, str(path), tune): i
                for i, (path, tune) in enumerate(scores)
            }
            for future in as_completed(futures):
                try:
                    midi, error = future.result()
                except BrokenProcessPool:
                    midi, error = None, "worker died while converting it"
                yield futures[future], midi, error
                bar.update()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()
