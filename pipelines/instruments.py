"""General MIDI program selection: numbers, "a-b" ranges, family names and instrument names.

`select_programs(["piano", "40-47", 73])` gives the set of programs a params list names;
`program_number("acoustic_grand_piano")` gives one program. Unknown names raise `ParamsError`.
"""

from __future__ import annotations

import re

from pretty_midi import constants

from pipelines.errors import ParamsError

N_PROGRAMS = 128
# pretty_midi's 16 General MIDI families of 8 programs each, keyed by normalised name.
FAMILIES: dict[str, range] = {
    re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_"): range(8 * i, 8 * i + 8)
    for i, name in enumerate(constants.INSTRUMENT_CLASSES)
}
_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


def normalise(name: str) -> str:
    """ "Acoustic Grand Piano", "acoustic-grand-piano" and "acoustic_grand_piano" read alike."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


INSTRUMENTS: dict[str, int] = {
    normalise(name): program for program, name in enumerate(constants.INSTRUMENT_MAP)
}


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
    return f"{program} ({constants.INSTRUMENT_MAP[program]})"
