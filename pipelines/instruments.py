"""General MIDI program selection: numbers, "a-b" ranges, family names and instrument names;
and the program each part of a model plays.

`select_programs(["piano", "40-47", 73])` gives the set of programs a params list names;
`program_number("acoustic_grand_piano")` gives one program; `part_programs(manifest, program,
programs)` gives the program of every part of a model's vocabulary, from `generate.program` and
`generate.programs`. Unknown names raise `ParamsError`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pipelines.errors import ParamsError

N_PROGRAMS = 128
# General MIDI level 1 program names (the GM 1 sound set; pretty_midi's INSTRUMENT_MAP),
# written out so that naming a program does not import pretty_midi and its FluidSynth probe.
# fmt: off
GM_PROGRAMS: tuple[str, ...] = (
    "Acoustic Grand Piano", "Bright Acoustic Piano", "Electric Grand Piano", "Honky-tonk Piano",
    "Electric Piano 1", "Electric Piano 2", "Harpsichord", "Clavinet", "Celesta", "Glockenspiel",
    "Music Box", "Vibraphone", "Marimba", "Xylophone", "Tubular Bells", "Dulcimer",
    "Drawbar Organ", "Percussive Organ", "Rock Organ", "Church Organ", "Reed Organ", "Accordion",
    "Harmonica", "Tango Accordion", "Acoustic Guitar (nylon)", "Acoustic Guitar (steel)",
    "Electric Guitar (jazz)", "Electric Guitar (clean)", "Electric Guitar (muted)",
    "Overdriven Guitar", "Distortion Guitar", "Guitar Harmonics", "Acoustic Bass",
    "Electric Bass (finger)", "Electric Bass (pick)", "Fretless Bass", "Slap Bass 1",
    "Slap Bass 2", "Synth Bass 1", "Synth Bass 2", "Violin", "Viola", "Cello", "Contrabass",
    "Tremolo Strings", "Pizzicato Strings", "Orchestral Harp", "Timpani", "String Ensemble 1",
    "String Ensemble 2", "Synth Strings 1", "Synth Strings 2", "Choir Aahs", "Voice Oohs",
    "Synth Choir", "Orchestra Hit", "Trumpet", "Trombone", "Tuba", "Muted Trumpet", "French Horn",
    "Brass Section", "Synth Brass 1", "Synth Brass 2", "Soprano Sax", "Alto Sax", "Tenor Sax",
    "Baritone Sax", "Oboe", "English Horn", "Bassoon", "Clarinet", "Piccolo", "Flute", "Recorder",
    "Pan Flute", "Blown bottle", "Shakuhachi", "Whistle", "Ocarina", "Lead 1 (square)",
    "Lead 2 (sawtooth)", "Lead 3 (calliope)", "Lead 4 chiff", "Lead 5 (charang)", "Lead 6 (voice)",
    "Lead 7 (fifths)", "Lead 8 (bass + lead)", "Pad 1 (new age)", "Pad 2 (warm)",
    "Pad 3 (polysynth)", "Pad 4 (choir)", "Pad 5 (bowed)", "Pad 6 (metallic)", "Pad 7 (halo)",
    "Pad 8 (sweep)", "FX 1 (rain)", "FX 2 (soundtrack)", "FX 3 (crystal)", "FX 4 (atmosphere)",
    "FX 5 (brightness)", "FX 6 (goblins)", "FX 7 (echoes)", "FX 8 (sci-fi)", "Sitar", "Banjo",
    "Shamisen", "Koto", "Kalimba", "Bagpipe", "Fiddle", "Shanai", "Tinkle Bell", "Agogo",
    "Steel Drums", "Woodblock", "Taiko Drum", "Melodic Tom", "Synth Drum", "Reverse Cymbal",
    "Guitar Fret Noise", "Breath Noise", "Seashore", "Bird Tweet", "Telephone Ring", "Helicopter",
    "Applause", "Gunshot",
)
GM_FAMILIES: tuple[str, ...] = (
    "Piano", "Chromatic Percussion", "Organ", "Guitar", "Bass", "Strings", "Ensemble", "Brass",
    "Reed", "Pipe", "Synth Lead", "Synth Pad", "Synth Effects", "Ethnic", "Percussive",
    "Sound Effects",
)  # 8 programs each, in order
# fmt: on
# pretty_midi's 16 General MIDI families of 8 programs each, keyed by normalised name.
FAMILIES: dict[str, range] = {
    re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_"): range(8 * i, 8 * i + 8)
    for i, name in enumerate(GM_FAMILIES)
}
_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


def normalise(name: str) -> str:
    """ "Acoustic Grand Piano", "acoustic-grand-piano" and "acoustic_grand_piano" read alike."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


INSTRUMENTS: dict[str, int] = {normalise(name): program for program, name in enumerate(GM_PROGRAMS)}


def _check(program: int, given: object) -> int:
    if not 0 <= program < N_PROGRAMS:
        raise ParamsError(f"program {given!r} is outside 0-127")
    return program


def program_number(value: int | str) -> int:
    """One General MIDI program (0-127) from a number or an instrument name."""
    if isinstance(value, bool):
        raise ParamsError(f"program {value!r} is not a number or an instrument name")
    if isinstance(value, int):
        return _check(value, value)
    text = str(value).strip()
    if text.isdigit():
        return _check(int(text), value)
    key = normalise(text)
    if key in INSTRUMENTS:
        return INSTRUMENTS[key]
    close = [name for name in INSTRUMENTS if key and key in name][:3]
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ParamsError(f"unknown General MIDI instrument {value!r}{hint}")


def programs_of(item: int | str) -> range:
    """The programs one params item names: a number, "a-b", a family or an instrument name."""
    if isinstance(item, str):
        match = _RANGE.match(item)
        if match:
            lo, hi = (_check(int(g), item) for g in match.groups())
            if lo > hi:
                raise ParamsError(f"program range {item!r} runs backwards")
            return range(lo, hi + 1)
        key = normalise(item)
        if key in FAMILIES:
            return FAMILIES[key]
        if key not in INSTRUMENTS and not key.isdigit():
            families = ", ".join(FAMILIES)
            raise ParamsError(
                f"unknown program or family {item!r}; families: {families} "
                "(or a number 0-127, a range such as 0-7, or an instrument name)"
            )
    program = program_number(item)
    return range(program, program + 1)


def select_programs(items: list[int | str]) -> frozenset[int] | None:
    """The set of programs a params list selects; None when the list is empty (all programs)."""
    if not items:
        return None
    return frozenset(p for item in items for p in programs_of(item))


def describe(program: int) -> str:
    """ "0 (Acoustic Grand Piano)", for logs and reports."""
    return f"{program} ({GM_PROGRAMS[program]})"


# --------------------------------------------------------------------------- parts

# A part is (class, rank): the class is a GM family or drums, the rank 1 the highest voice of
# that class in its file (the sequences stage's vocabulary; its index is class * max_rank +
# rank - 1 and its name "piano-1").
DRUMS = "drums"
PART_CLASSES: tuple[str, ...] = (*FAMILIES, DRUMS)
_PART_NAME = re.compile(r"^(.*\D)-(\d+)$")


def part_name(index: int, max_rank: int) -> str:
    """ "piano-1": the class, and the rank (1: the highest voice of that class in its file)."""
    return f"{PART_CLASSES[index // max_rank]}-{index % max_rank + 1}"


def part_key(key: str) -> tuple[int, int | None]:
    """(class, rank) that a `generate.programs` key names: a family or drums ("piano",
    rank None: every rank) or one part ("piano-4")."""
    text = str(key).strip()
    match = _PART_NAME.match(text)
    family, rank = (match.group(1), int(match.group(2))) if match else (text, None)
    klass = normalise(family)
    if klass not in PART_CLASSES or rank == 0:
        raise ParamsError(
            f"{key!r} is neither a family ({', '.join(PART_CLASSES)}) nor a part such as "
            "piano-4 (a family and a rank from 1)"
        )
    return PART_CLASSES.index(klass), rank


def part_programs(
    manifest: Mapping[str, Any],
    program: int | str | None,
    programs: Mapping[str, int | str],
) -> dict[int, int]:
    """The General MIDI program of every part index 0..size-1 of the model's manifest
    (`manifest["parts"]`; none without it: a model from before parts).

    Precedence: `programs[part name]` > `programs[family]` > `program` (every part) > the
    program most of the part's training notes had > the family's first program (drums: 0).
    Drum parts are written as drum tracks whatever their program, which picks only the kit.
    """
    parts = manifest.get("parts")
    if not parts:
        return {}
    max_rank, size = int(parts["max_rank"]), int(parts["size"])
    trained = {int(v["index"]): int(v["program"]) for v in parts.get("vocabulary", [])}
    try:
        every = None if program is None else program_number(program)
    except ParamsError as exc:
        raise ParamsError(f"generate.program: {exc}") from None
    by_family: dict[int, int] = {}
    by_part: dict[int, int] = {}
    for key, value in programs.items():
        try:
            klass, rank = part_key(key)
            number = program_number(value)
        except ParamsError as exc:
            raise ParamsError(f"generate.programs: {exc}") from None
        if rank is None:
            by_family[klass] = number
        elif rank > max_rank:
            raise ParamsError(
                f"generate.programs: {key!r} names rank {rank}, but the model's parts have "
                f"ranks 1-{max_rank} (sequences.max_part_rank)"
            )
        else:
            by_part[klass * max_rank + rank - 1] = number
    resolved: dict[int, int] = {}
    for index in range(size):
        klass = index // max_rank
        first = 0 if PART_CLASSES[klass] == DRUMS else 8 * klass
        fallback = trained.get(index, first) if every is None else every
        resolved[index] = by_part.get(index, by_family.get(klass, fallback))
    return resolved
