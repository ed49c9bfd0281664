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


# --------------------------------------------------------------------------- parts


def test_a_part_index_streams_give_is_named_by_its_class_and_rank() -> None:
    from pipelines import streams

    assert [instruments.part_name(streams.part_index(0, r, 4), 4) for r in (1, 4, 9)] == [
        "piano-1",
        "piano-4",
        "piano-4",  # ranks past max_rank share the last
    ]
    assert instruments.part_name(streams.part_index(streams.DRUMS, 1, 4), 4) == "drums-1"
    assert instruments.part_name(3, 4) == "piano-4" and instruments.part_name(64, 4) == "drums-1"


@pytest.mark.parametrize(
    ("key", "part"),
    [
        ("piano", (0, None)),
        ("piano-4", (0, 4)),
        ("Strings-2", (5, 2)),
        ("chromatic-percussion", (1, None)),
        ("chromatic_percussion-3", (1, 3)),
        ("Synth Lead-1", (10, 1)),
        ("drums", (16, None)),
        ("drums-1", (16, 1)),
        ("piano-12", (0, 12)),  # well formed; whether the model has rank 12 is part_programs'
    ],
)
def test_part_key(key: str, part: tuple[int, int | None]) -> None:
    assert instruments.part_key(key) == part


@pytest.mark.parametrize("key", ["piano-0", "kazoo", "kazoo-1", "piano-x", "", "4", "-1", "violin"])
def test_part_key_refuses_what_is_neither_a_family_nor_a_part(key: str) -> None:
    with pytest.raises(ParamsError) as refused:
        instruments.part_key(key)
    message = str(refused.value)
    assert message.startswith(f"{key!r} is neither a family (piano, chromatic_percussion, ")
    assert "drums) nor a part such as piano-4" in message and "\n" not in message


# A chorale's four voices on piano, a cello that was strings-1, and a drum kit.
CHORALE_MANIFEST = {
    "parts": {
        "max_rank": 4,
        "size": 68,
        "vocabulary": [
            *({"index": i, "name": f"piano-{i + 1}", "family": "piano", "rank": i + 1,
               "program": 0, "notes": 100 - i} for i in range(4)),
            {"index": 20, "name": "strings-1", "family": "strings", "rank": 1, "program": 42,
             "notes": 50},
            {"index": 64, "name": "drums-1", "family": "drums", "rank": 1, "program": 0,
             "notes": 10},
        ],
    }
}  # fmt: skip


def test_each_part_plays_its_training_program_and_an_unseen_part_its_familys_first() -> None:
    programs = instruments.part_programs(CHORALE_MANIFEST, None, {})
    assert sorted(programs) == list(range(68))
    assert [programs[i] for i in (0, 1, 2, 3, 20, 64)] == [0, 0, 0, 0, 42, 0]
    # unseen: chromatic_percussion-1 -> 8 (Celesta), strings-2 -> 40 (Violin), drums-4 -> 0
    assert (programs[4], programs[21], programs[67]) == (8, 40, 0)
    assert all(programs[i] == 8 * (i // 4) for i in range(64) if i not in (0, 1, 2, 3, 20))


@pytest.mark.parametrize(
    ("program", "by_name", "expected"),
    [
        # generate.program puts every part on it
        ("violin", {}, {0: 40, 3: 40, 20: 40, 64: 40, 30: 40}),
        # a family re-voices all its parts, over what they trained on
        (None, {"piano": "string_ensemble_1"}, {0: 48, 1: 48, 3: 48, 20: 42, 64: 0, 6: 8}),
        # a part's own entry over its family's, which is over generate.program
        ("flute", {"piano": 48, "piano-4": "cello"}, {0: 48, 2: 48, 3: 42, 20: 73, 64: 73}),
        (None, {"Piano-4": 42, "strings": "73", "drums": 25}, {3: 42, 0: 0, 20: 73, 64: 25}),
    ],
)
def test_programs_by_part_beat_family_beat_program_beat_the_manifest(
    program: str | None, by_name: dict[str, int | str], expected: dict[int, int]
) -> None:
    programs = instruments.part_programs(CHORALE_MANIFEST, program, by_name)
    assert {i: programs[i] for i in expected} == expected


def test_a_model_without_parts_has_no_part_programs() -> None:
    assert instruments.part_programs({"time_unit": "beats"}, "violin", {"piano": 48}) == {}


@pytest.mark.parametrize(
    ("program", "by_name", "message"),
    [
        (None, {"piano-5": 42},
         "generate.programs: 'piano-5' names rank 5, but the model's parts have ranks 1-4 "
         "(sequences.max_part_rank)"),
        (None, {"piano": "kazoo"}, "generate.programs: unknown General MIDI instrument 'kazoo'"),
        (None, {"lute": 24}, "generate.programs: 'lute' is neither a family (piano, "),
        ("kazoo", {}, "generate.program: unknown General MIDI instrument 'kazoo'"),
    ],
)  # fmt: skip
def test_part_programs_refuse_with_one_line(
    program: str | None, by_name: dict[str, int | str], message: str
) -> None:
    with pytest.raises(ParamsError) as refused:
        instruments.part_programs(CHORALE_MANIFEST, program, by_name)
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)
