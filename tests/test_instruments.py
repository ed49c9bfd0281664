"""instruments: General MIDI program names, families and ranges, both ways, and the params
errors that name the item a user got wrong."""

from __future__ import annotations

import re

import pytest

from pipelines import instruments
from pipelines.errors import ParamsError
from pipelines.instruments import program_number, programs_of, select_programs


def test_the_written_out_names_are_pretty_midis_general_midi_tables() -> None:
    from pretty_midi.constants import INSTRUMENT_CLASSES, INSTRUMENT_MAP

    assert list(instruments.GM_PROGRAMS) == INSTRUMENT_MAP
    assert list(instruments.GM_FAMILIES) == INSTRUMENT_CLASSES


def test_every_program_name_round_trips() -> None:
    assert len(instruments.INSTRUMENTS) == instruments.N_PROGRAMS == 128  # no two names alike
    for program, name in enumerate(instruments.GM_PROGRAMS):
        assert program_number(name) == program, name
        assert program_number(instruments.normalise(name)) == program, name
        assert instruments.describe(program) == f"{program} ({name})"


@pytest.mark.parametrize(
    ("value", "program"),
    [
        ("violin", 40),
        ("Violin", 40),
        ("acoustic_grand_piano", 0),
        ("Acoustic Grand Piano", 0),
        ("acoustic-grand-piano", 0),
        ("Acoustic Guitar (nylon)", 24),
        ("acoustic_guitar_nylon", 24),
        ("Lead 8 (bass + lead)", 87),
        ("gunshot", 127),
        (0, 0),
        (127, 127),
        ("73", 73),
        (" 9 ", 9),
    ],
)
def test_program_number(value: int | str, program: int) -> None:
    assert program_number(value) == program


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (128, "program 128 is outside 0-127"),
        (-1, "program -1 is outside 0-127"),
        ("128", "program '128' is outside 0-127"),
        (True, "program True is not a number or an instrument name"),
        ("viol", "unknown General MIDI instrument 'viol'; did you mean violin, viola?"),
        ("kazoo", "unknown General MIDI instrument 'kazoo'"),
        ("", "unknown General MIDI instrument ''"),
    ],
)
def test_program_number_refuses(value: int | str, message: str) -> None:
    with pytest.raises(ParamsError) as refused:
        program_number(value)
    assert str(refused.value) == message
    assert refused.value.exit_code == 2


def test_families_are_sixteen_runs_of_eight_programs() -> None:
    families = instruments.FAMILIES
    assert list(families) == [
        "piano", "chromatic_percussion", "organ", "guitar", "bass", "strings", "ensemble",
        "brass", "reed", "pipe", "synth_lead", "synth_pad", "synth_effects", "ethnic",
        "percussive", "sound_effects",
    ]  # fmt: skip
    assert [p for programs in families.values() for p in programs] == list(range(128))
    assert all(len(programs) == 8 for programs in families.values())


@pytest.mark.parametrize(
    ("item", "programs"),
    [
        ("piano", range(8)),
        ("Piano", range(8)),
        ("strings", range(40, 48)),
        ("Synth Lead", range(80, 88)),
        ("synth-lead", range(80, 88)),
        ("sound_effects", range(120, 128)),
        ("percussive", range(112, 120)),  # the family, not "Percussive Organ"
        ("0-7", range(8)),
        (" 40 - 47 ", range(40, 48)),
        ("5-5", range(5, 6)),
        ("0-127", range(128)),
        ("violin", range(40, 41)),
        ("percussive organ", range(17, 18)),
        (73, range(73, 74)),
        ("73", range(73, 74)),
    ],
)
def test_programs_of(item: int | str, programs: range) -> None:
    assert programs_of(item) == programs


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("7-0", "program range '7-0' runs backwards"),
        ("0-128", "program '0-128' is outside 0-127"),
        ("200-300", "program '200-300' is outside 0-127"),
        (200, "program 200 is outside 0-127"),
        ("128", "program '128' is outside 0-127"),
    ],
)
def test_programs_of_refuses_ranges_outside_general_midi(item: int | str, message: str) -> None:
    with pytest.raises(ParamsError) as refused:
        programs_of(item)
    assert str(refused.value) == message


def test_an_unknown_item_is_named_with_the_families_to_choose_from() -> None:
    with pytest.raises(ParamsError) as refused:
        programs_of("woodwinds")
    families = ", ".join(instruments.FAMILIES)
    assert str(refused.value) == (
        f"unknown program or family 'woodwinds'; families: {families} "
        "(or a number 0-127, a range such as 0-7, or an instrument name)"
    )


def test_select_programs_unites_what_each_item_names() -> None:
    assert select_programs([]) is None  # all programs
    chosen = select_programs(["piano", "40-47", 73, "tuba"])
    assert chosen == frozenset([*range(8), *range(40, 48), 73, 58])
    assert select_programs(["0-3", "2-5", 2]) == frozenset(range(6))


@pytest.mark.parametrize(
    ("items", "named"),
    [
        (["piano", "kazoo"], "'kazoo'"),
        (["piano", "9-2"], "'9-2'"),
        ([0, 300], "300"),
        (["strings", "0-999"], "'0-999'"),
    ],
)
def test_select_programs_names_the_bad_item(items: list[int | str], named: str) -> None:
    with pytest.raises(ParamsError, match=rf"^[^']*{re.escape(named)}") as refused:
        select_programs(items)
    assert refused.value.exit_code == 2
