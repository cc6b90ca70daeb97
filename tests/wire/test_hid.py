"""The HID keyboard-mode decoder fed injected key events (PROTOCOLS.md §3; CI has no uinput).

Key codes here are written out from linux/input-event-codes.h rather than taken from the
module under test, so a wrong code in :class:`edgegate.wire.hid.Key` fails these tests.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgegate.wire.hid import REPLACEMENT, HidDecoder, Key

DOWN, UP, REPEAT = 1, 0, 2
LEFTSHIFT, RIGHTSHIFT, LEFTCTRL, RIGHTCTRL, LEFTALT, RIGHTALT = 42, 54, 29, 97, 56, 100
ENTER, KPENTER, TAB, CAPSLOCK, F1 = 28, 96, 15, 58, 59
KP = {"0": 82, "1": 79, "2": 80, "3": 81, "4": 75, "5": 76, "6": 77, "7": 71, "8": 72, "9": 73}
RIGHTBRACE, KEY_6 = 27, 7

_LETTER_ROWS = {"qwertyuiop": 16, "asdfghjkl": 30, "zxcvbnm": 44}
_LETTERS = {c: row + i for letters, row in _LETTER_ROWS.items() for i, c in enumerate(letters)}
_US: dict[str, tuple[int, bool]] = {
    **{c: (code, False) for c, code in _LETTERS.items()},
    **{c.upper(): (code, True) for c, code in _LETTERS.items()},
    **{d: (2 + i, False) for i, d in enumerate("1234567890")},
    **{s: (2 + i, True) for i, s in enumerate("!@#$%^&*()")},
    "-": (12, False), "_": (12, True), "=": (13, False), "+": (13, True),
    "[": (26, False), "{": (26, True), "]": (27, False), "}": (27, True),
    ";": (39, False), ":": (39, True), "'": (40, False), '"': (40, True),
    "`": (41, False), "~": (41, True), "\\": (43, False), "|": (43, True),
    ",": (51, False), "<": (51, True), ".": (52, False), ">": (52, True),
    "/": (53, False), "?": (53, True), " ": (57, False),
}  # fmt: skip
PASS_NO = "HP4601202611250001"


def tap(code: int) -> list[tuple[int, int]]:
    return [(code, DOWN), (code, UP)]


def typed(text: str, shift: int = LEFTSHIFT) -> list[tuple[int, int]]:
    """The key events of a US-layout scanner typing ``text`` (shift held per character)."""
    events: list[tuple[int, int]] = []
    for char in text:
        code, shifted = _US[char]
        if shifted:
            events.append((shift, DOWN))
        events += tap(code)
        if shifted:
            events.append((shift, UP))
    return events


def with_held(modifier: int, events: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [(modifier, DOWN), *events, (modifier, UP)]


def feed(decoder: HidDecoder, events: Iterable[tuple[int, int]]) -> list[str]:
    codes = (decoder.key_event(code, value) for code, value in events)
    return [code for code in codes if code is not None]


def test_a_typed_pass_number_ends_at_enter() -> None:
    decoder = HidDecoder()

    assert feed(decoder, typed(PASS_NO) + tap(ENTER)) == [PASS_NO]
    assert decoder.codes == 1


@pytest.mark.parametrize("shift", [LEFTSHIFT, RIGHTSHIFT], ids=["left", "right"])
def test_every_us_layout_character_is_decoded_with_either_shift(shift: int) -> None:
    text = "".join(_US)

    assert feed(HidDecoder(), typed(text, shift) + tap(ENTER)) == [text]


def test_releasing_one_shift_keeps_shift_while_the_other_is_held() -> None:
    events = [(LEFTSHIFT, DOWN), (RIGHTSHIFT, DOWN), (LEFTSHIFT, UP), *tap(30), (RIGHTSHIFT, UP)]

    assert feed(HidDecoder(), events + tap(30) + tap(ENTER)) == ["Aa"]


@pytest.mark.parametrize("terminator", [ENTER, KPENTER, TAB], ids=["enter", "kpenter", "tab"])
def test_enter_keypad_enter_and_tab_end_a_code(terminator: int) -> None:
    assert feed(HidDecoder(), typed("AB12") + tap(terminator) + typed("cd") + tap(ENTER)) == [
        "AB12",
        "cd",
    ]


def test_terminators_can_be_chosen() -> None:
    decoder = HidDecoder(terminators=frozenset({Key.KEY_ENTER}))

    assert feed(decoder, typed("a") + tap(TAB) + typed("b") + tap(ENTER)) == [f"a{REPLACEMENT}b"]


def test_a_terminator_with_nothing_typed_emits_nothing() -> None:
    assert feed(HidDecoder(), tap(ENTER) + tap(TAB) + tap(KPENTER)) == []


def test_autorepeat_and_key_releases_type_nothing() -> None:
    events = [(30, DOWN), (30, REPEAT), (30, REPEAT), (30, UP), (ENTER, DOWN), (ENTER, REPEAT)]

    assert feed(HidDecoder(), events) == ["a"]


def test_keypad_digits_and_operators_type_their_characters() -> None:
    keypad = [KP[d] for d in "0123456789"] + [83, 98, 55, 74, 78]  # . / * - +

    assert feed(HidDecoder(), [e for k in keypad for e in tap(k)] + tap(KPENTER)) == [
        "0123456789./*-+"
    ]


def test_ctrl_right_bracket_types_gs_as_scanners_send_it() -> None:
    events = typed("0106141411234567") + with_held(LEFTCTRL, tap(RIGHTBRACE)) + typed("10ABC")

    assert feed(HidDecoder(), events + tap(ENTER)) == ["0106141411234567\x1d10ABC"]


def test_ctrl_with_letters_and_shifted_keys_types_ascii_control_characters() -> None:
    ctrl_d = with_held(RIGHTCTRL, tap(32))  # EOT
    ctrl_caret = with_held(RIGHTCTRL, [(LEFTSHIFT, DOWN), *tap(KEY_6), (LEFTSHIFT, UP)])  # RS

    assert feed(HidDecoder(), ctrl_caret + ctrl_d + tap(ENTER)) == ["\x1e\x04"]


def test_ctrl_with_a_key_that_has_no_control_character_is_a_replacement() -> None:
    decoder = HidDecoder()

    assert feed(decoder, with_held(LEFTCTRL, tap(2)) + tap(ENTER)) == [REPLACEMENT]
    assert decoder.unmapped == 1


@pytest.mark.parametrize("digits", ["029", "29", "0029"])
def test_alt_with_keypad_digits_types_the_character_on_alt_release(digits: str) -> None:
    alt_code = with_held(LEFTALT, [e for d in digits for e in tap(KP[d])])

    assert feed(HidDecoder(), typed("01") + alt_code + typed("10") + tap(ENTER)) == ["01\x1d10"]


def test_alt_codes_above_127_follow_the_windows_code_pages() -> None:
    cp1252 = with_held(RIGHTALT, [e for d in "0128" for e in tap(KP[d])])  # euro sign
    cp437 = with_held(RIGHTALT, [e for d in "130" for e in tap(KP[d])])  # e acute

    assert feed(HidDecoder(), cp1252 + cp437 + tap(ENTER)) == ["€é"]


@pytest.mark.parametrize("digits", ["256", "0129"])
def test_alt_codes_that_name_no_character_are_replacements(digits: str) -> None:
    decoder = HidDecoder()
    alt_code = with_held(LEFTALT, [e for d in digits for e in tap(KP[d])])

    assert feed(decoder, alt_code + tap(ENTER)) == [REPLACEMENT]
    assert decoder.unmapped == 1


def test_an_alt_code_cut_short_by_a_terminator_is_a_replacement() -> None:
    events = [(LEFTALT, DOWN), *tap(KP["2"]), *tap(ENTER), (LEFTALT, UP)]

    assert feed(HidDecoder(), events) == [REPLACEMENT]


def test_caps_lock_inverts_the_case_of_letters_only() -> None:
    events = tap(CAPSLOCK) + typed("ab1") + typed("C") + tap(CAPSLOCK) + typed("d")

    assert feed(HidDecoder(), events + tap(ENTER)) == ["AB1cd"]


def test_a_key_that_types_nothing_on_a_us_layout_becomes_a_replacement() -> None:
    decoder = HidDecoder()

    codes = feed(decoder, typed("HP46") + tap(F1) + typed("01") + tap(ENTER))

    assert codes == [f"HP46{REPLACEMENT}01"]
    assert decoder.unmapped == 1


def test_lost_events_mark_the_code_and_release_every_modifier() -> None:
    decoder = HidDecoder()
    feed(decoder, [(LEFTSHIFT, DOWN), *tap(30)])

    decoder.events_lost()

    assert feed(decoder, tap(30) + tap(ENTER)) == [f"A{REPLACEMENT}a"]
    assert decoder.lost == 1


def test_an_overlong_code_is_dropped_and_the_next_is_read() -> None:
    decoder = HidDecoder(max_len=4)

    assert feed(decoder, typed("ABCDE") + tap(ENTER) + typed("ABCD") + tap(ENTER)) == ["ABCD"]
    assert decoder.overlong == 1


def test_events_of_unknown_keys_and_values_are_harmless() -> None:
    decoder = HidDecoder()

    assert feed(decoder, [(9999, UP), (30, 7), (LEFTALT, UP), *typed("a"), *tap(ENTER)]) == ["a"]


@given(st.text(st.sampled_from(sorted(_US)), min_size=1, max_size=40))
def test_any_typed_text_comes_back_as_typed(text: str) -> None:
    assert feed(HidDecoder(), typed(text) + tap(ENTER)) == [text]
