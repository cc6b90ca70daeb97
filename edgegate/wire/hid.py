"""Scanners in HID keyboard mode (PROTOCOLS.md §3) as a sans-I/O key-event decoder.

Owns the mapping from Linux key events to the text a US-layout scanner types. The caller
reads ``EV_KEY`` events (with python-evdev, or from a test) and feeds each one's ``code``
and ``value``; :meth:`HidDecoder.key_event` returns a code when a terminator key completes
one. Nothing here imports evdev, performs I/O or logs: key codes are defined below.

Invariants:
- a character is produced by a key going down (value 1); releases only end modifiers, and
  autorepeats (value 2) are ignored — a scanner types each character once, so a repeat is
  the kernel inventing characters while a key is held;
- left and right Shift / Ctrl / Alt are tracked separately, so releasing one while the
  other is held keeps the modifier; Caps Lock toggles the case of letters only;
- a key that maps to no character (and an Alt code that names none) becomes U+FFFD and is
  counted, never skipped: a code with a character missing could equal another valid key
  of the whitelist, one with U+FFFD cannot (see :mod:`edgegate.wire.lines`);
- a terminator (by default ENTER, keypad ENTER and TAB) ends the code; an empty code is not
  returned; a code longer than ``max_len`` characters is dropped whole and counted;
- after :meth:`events_lost` (the kernel's ``SYN_DROPPED``) the code being typed is marked
  with U+FFFD and every modifier is taken as released.

Control characters, chosen because scanners send them in HID mode and GS1 codes need GS:
- **Ctrl + key** gives the ASCII control character of the key's character, exactly as a
  terminal does: Ctrl+] = GS (``1D``), Ctrl+Shift+6 (``^``) = RS (``1E``), Ctrl+D = EOT,
  Ctrl+A..Z = ``01``..``1A``. This is how most scanners type GS with "control character
  output" enabled. Ctrl with a key outside ``@A-Z[\\]^_`` names nothing and is U+FFFD.
- **Alt + keypad digits** ("ALT mode" on Honeywell, Zebra, Newland scanners) gives the
  character with that number when Alt is released, as Windows does: with a leading 0 from
  code page 1252, else from code page 437 (both are ASCII below 128, so Alt+029 and Alt+29
  are GS).

Keypad digits are always digits (a scanner set to "emulate keypad" assumes Num Lock on).
"""

from __future__ import annotations

import string
from enum import IntEnum

REPLACEMENT = "\ufffd"
DEFAULT_MAX_CODE_CHARS = 8192
_ALT_CODE_MAX = 0xFF


class Key(IntEnum):
    """Key codes from the Linux kernel's ``include/uapi/linux/input-event-codes.h``.

    Only the keys a US-layout scanner types or that change how others are read.
    """

    KEY_1 = 2
    KEY_2 = 3
    KEY_3 = 4
    KEY_4 = 5
    KEY_5 = 6
    KEY_6 = 7
    KEY_7 = 8
    KEY_8 = 9
    KEY_9 = 10
    KEY_0 = 11
    KEY_MINUS = 12
    KEY_EQUAL = 13
    KEY_TAB = 15
    KEY_Q = 16
    KEY_W = 17
    KEY_E = 18
    KEY_R = 19
    KEY_T = 20
    KEY_Y = 21
    KEY_U = 22
    KEY_I = 23
    KEY_O = 24
    KEY_P = 25
    KEY_LEFTBRACE = 26
    KEY_RIGHTBRACE = 27
    KEY_ENTER = 28
    KEY_LEFTCTRL = 29
    KEY_A = 30
    KEY_S = 31
    KEY_D = 32
    KEY_F = 33
    KEY_G = 34
    KEY_H = 35
    KEY_J = 36
    KEY_K = 37
    KEY_L = 38
    KEY_SEMICOLON = 39
    KEY_APOSTROPHE = 40
    KEY_GRAVE = 41
    KEY_LEFTSHIFT = 42
    KEY_BACKSLASH = 43
    KEY_Z = 44
    KEY_X = 45
    KEY_C = 46
    KEY_V = 47
    KEY_B = 48
    KEY_N = 49
    KEY_M = 50
    KEY_COMMA = 51
    KEY_DOT = 52
    KEY_SLASH = 53
    KEY_RIGHTSHIFT = 54
    KEY_KPASTERISK = 55
    KEY_LEFTALT = 56
    KEY_SPACE = 57
    KEY_CAPSLOCK = 58
    KEY_NUMLOCK = 69
    KEY_KP7 = 71
    KEY_KP8 = 72
    KEY_KP9 = 73
    KEY_KPMINUS = 74
    KEY_KP4 = 75
    KEY_KP5 = 76
    KEY_KP6 = 77
    KEY_KPPLUS = 78
    KEY_KP1 = 79
    KEY_KP2 = 80
    KEY_KP3 = 81
    KEY_KP0 = 82
    KEY_KPDOT = 83
    KEY_KPENTER = 96
    KEY_RIGHTCTRL = 97
    KEY_KPSLASH = 98
    KEY_RIGHTALT = 100
    KEY_KPEQUAL = 117
    KEY_KPCOMMA = 121
    KEY_LEFTMETA = 125
    KEY_RIGHTMETA = 126


class KeyValue(IntEnum):
    """``value`` of an ``EV_KEY`` event (Linux ``Documentation/input/input.rst``)."""

    UP = 0
    DOWN = 1
    REPEAT = 2


DEFAULT_TERMINATORS = frozenset({Key.KEY_ENTER, Key.KEY_KPENTER, Key.KEY_TAB})

_LETTERS = frozenset(Key[f"KEY_{letter}"] for letter in string.ascii_uppercase)
_SHIFTS = frozenset({Key.KEY_LEFTSHIFT, Key.KEY_RIGHTSHIFT})
_CTRLS = frozenset({Key.KEY_LEFTCTRL, Key.KEY_RIGHTCTRL})
_ALTS = frozenset({Key.KEY_LEFTALT, Key.KEY_RIGHTALT})
_MODIFIERS = _SHIFTS | _CTRLS | _ALTS | {Key.KEY_LEFTMETA, Key.KEY_RIGHTMETA}
_KEYPAD_DIGITS: dict[int, str] = {Key[f"KEY_KP{d}"]: str(d) for d in range(10)}

# US layout: key -> (unshifted, shifted).
_US_LAYOUT: dict[int, tuple[str, str]] = {
    **{key: (key.name[-1].lower(), key.name[-1]) for key in _LETTERS},
    **{Key[f"KEY_{d}"]: (str(d), ")!@#$%^&*("[d]) for d in range(10)},
    **{key: (digit, digit) for key, digit in _KEYPAD_DIGITS.items()},
    Key.KEY_MINUS: ("-", "_"),
    Key.KEY_EQUAL: ("=", "+"),
    Key.KEY_LEFTBRACE: ("[", "{"),
    Key.KEY_RIGHTBRACE: ("]", "}"),
    Key.KEY_SEMICOLON: (";", ":"),
    Key.KEY_APOSTROPHE: ("'", '"'),
    Key.KEY_GRAVE: ("`", "~"),
    Key.KEY_BACKSLASH: ("\\", "|"),
    Key.KEY_COMMA: (",", "<"),
    Key.KEY_DOT: (".", ">"),
    Key.KEY_SLASH: ("/", "?"),
    Key.KEY_SPACE: (" ", " "),
    Key.KEY_KPASTERISK: ("*", "*"),
    Key.KEY_KPMINUS: ("-", "-"),
    Key.KEY_KPPLUS: ("+", "+"),
    Key.KEY_KPDOT: (".", "."),
    Key.KEY_KPSLASH: ("/", "/"),
    Key.KEY_KPEQUAL: ("=", "="),
    Key.KEY_KPCOMMA: (",", ","),
}


class HidDecoder:
    """Turns one keyboard-mode scanner's key events into codes."""

    def __init__(
        self,
        terminators: frozenset[Key] = DEFAULT_TERMINATORS,
        max_len: int = DEFAULT_MAX_CODE_CHARS,
    ) -> None:
        if not terminators:
            raise ValueError("at least one terminator key is needed")
        if max_len < 1:
            raise ValueError(f"max_len must be at least 1, got {max_len}")
        self._terminators = terminators
        self._max_len = max_len
        self._held: set[int] = set()
        self._caps_lock = False
        self._chars: list[str] = []
        self._alt_digits = ""
        self._discarding = False  # inside an overlong code: drop up to its terminator
        self._codes = 0
        self._unmapped = 0
        self._overlong = 0
        self._lost = 0

    @property
    def codes(self) -> int:
        """Codes returned so far."""
        return self._codes

    @property
    def unmapped(self) -> int:
        """Keys (or Alt codes) that name no character and were typed as U+FFFD."""
        return self._unmapped

    @property
    def overlong(self) -> int:
        """Codes dropped because they exceeded ``max_len`` characters."""
        return self._overlong

    @property
    def lost(self) -> int:
        """Times the kernel reported dropped events (:meth:`events_lost`)."""
        return self._lost

    def key_event(self, code: int, value: int) -> str | None:
        """Feed one ``EV_KEY`` event; return the code it completes, if any."""
        if value == KeyValue.UP:
            self._release(code)
            return None
        if value != KeyValue.DOWN:
            return None
        if code in _MODIFIERS:
            self._held.add(code)
        elif code == Key.KEY_CAPSLOCK:
            self._caps_lock = not self._caps_lock
        elif code in self._terminators:
            return self._finish()
        elif code in _KEYPAD_DIGITS and self._held & _ALTS:
            self._alt_digits += _KEYPAD_DIGITS[code]
        elif code != Key.KEY_NUMLOCK:
            self._append(self._character(code))
        return None

    def events_lost(self) -> None:
        """The kernel dropped events (``SYN_DROPPED``): state and the current code are unsure."""
        self._lost += 1
        self._held.clear()
        self._alt_digits = ""
        self._append(REPLACEMENT)

    def _release(self, code: int) -> None:
        if code not in self._held:
            return
        self._held.discard(code)
        if code in _ALTS and not self._held & _ALTS and self._alt_digits:
            self._append(self._alt_code(self._alt_digits))
            self._alt_digits = ""

    def _character(self, code: int) -> str:
        pair = _US_LAYOUT.get(code)
        if pair is None:
            self._unmapped += 1
            return REPLACEMENT
        shifted = bool(self._held & _SHIFTS) != (self._caps_lock and code in _LETTERS)
        char = pair[1] if shifted else pair[0]
        if not self._held & _CTRLS:
            return char
        # ASCII control characters are @ A-Z [ \ ] ^ _ with bit 6 cleared (0x40-0x5F).
        upper = char.upper()
        if "@" <= upper <= "_":
            return chr(ord(upper) & 0x1F)
        self._unmapped += 1
        return REPLACEMENT

    def _alt_code(self, digits: str) -> str:
        number = int(digits)
        if number <= _ALT_CODE_MAX:
            code_page = "cp1252" if digits.startswith("0") else "cp437"
            char = bytes((number,)).decode(code_page, errors="replace")
            if char != REPLACEMENT:
                return char
        self._unmapped += 1
        return REPLACEMENT

    def _append(self, char: str) -> None:
        if self._discarding:
            return
        if len(self._chars) >= self._max_len:
            self._overlong += 1
            self._discarding = True
            self._chars.clear()
            return
        self._chars.append(char)

    def _finish(self) -> str | None:
        if self._alt_digits:  # a terminator while Alt is still held: the Alt code is cut short
            self._alt_digits = ""
            self._unmapped += 1
            self._append(REPLACEMENT)
        code = "".join(self._chars)
        self._chars.clear()
        if self._discarding:
            self._discarding = False
            return None
        if not code:
            return None
        self._codes += 1
        return code
