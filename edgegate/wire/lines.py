"""Scanner framing in USB CDC-ACM mode (PROTOCOLS.md §3) as a sans-I/O codec.

Owns the byte format of a serial scanner: raw code bytes followed by a configured suffix,
CR (``0D``), CR LF (``0D 0A``) or LF (``0A``). :class:`LineDecoder` is fed whatever bytes
arrived and returns the codes they complete, as text. Nothing here performs I/O, reads a
clock or logs.

Invariants:
- the codes returned and every counter do not depend on where the chunks split, and
  ``receive_data`` never raises;
- the configured suffix, and only it, ends a code: a CR LF decoder keeps a lone CR as data
  (a QR code may hold several lines) and never emits an empty code for it;
- every other byte is kept, GS (``1D``) separators of GS1 codes included, as are RS / EOT of
  ISO/IEC 15434 envelopes;
- at most ``max_len + len(suffix) - 1`` bytes are ever buffered: a line whose content
  exceeds ``max_len`` bytes is dropped whole, counted once in :attr:`overlong`, and decoding
  resumes after its suffix;
- an empty line (a suffix right after a suffix) is not a code and is dropped silently.

Two choices, with their reasons:

- **Tolerating the other line ending.** Scanners are often left at CR LF while the gate is
  configured for CR (or the reverse). Read strictly, every code after the first would then
  start with LF (or end with CR), and every scanned gate pass would fail its lookup — a
  false hold on every vehicle. A CR decoder therefore drops one LF that directly follows a
  terminating CR, and an LF decoder drops one CR that directly precedes the LF. Neither can
  change what a correctly configured scanner sends: no real code starts with LF or ends
  with CR.
- **Bytes that are not UTF-8 are replaced, not dropped.** A code is only ever looked up;
  a code holding U+FFFD can never equal a whitelist key, so it fails closed. Keeping it
  puts the evidence into the decision event (``codes``) instead of letting the vehicle
  wait out ``pass_wait_ms`` for a pass that silently vanished; :attr:`undecodable` counts
  such codes, which usually means a scanner set to a legacy code page (GBK, Latin-1).
"""

from __future__ import annotations

from enum import IntEnum


class Ctl(IntEnum):
    """Control bytes that matter to scanner framing (PROTOCOLS.md §3)."""

    LF = 0x0A
    CR = 0x0D
    GS = 0x1D  # GS1 group separator, kept inside codes


CR_SUFFIX = bytes((Ctl.CR,))
LF_SUFFIX = bytes((Ctl.LF,))
CRLF_SUFFIX = CR_SUFFIX + LF_SUFFIX
SUFFIXES = (CR_SUFFIX, CRLF_SUFFIX, LF_SUFFIX)

DEFAULT_MAX_CODE_BYTES = 8192
"""Room for the largest QR code (7,089 numeric characters at version 40-L) and then some."""


class LineDecoder:
    """Splits a scanner's byte stream into codes at a fixed suffix."""

    def __init__(self, suffix: bytes, max_len: int = DEFAULT_MAX_CODE_BYTES) -> None:
        if suffix not in SUFFIXES:
            raise ValueError(f"suffix must be CR, CR LF or LF, got {suffix!r}")
        if max_len < 1:
            raise ValueError(f"max_len must be at least 1, got {max_len}")
        self._suffix = suffix
        self._max_len = max_len
        # Bytes at the end of the buffer that may be the first part of a split suffix.
        self._partial = len(suffix) - 1
        self._buffer = bytearray()
        self._searched = 0  # leading bytes of _buffer known to hold no suffix
        self._discarding = False  # inside an overlong line: drop up to its suffix
        self._drop_lf = False  # CR mode: a terminating CR was the last byte consumed
        self._codes = 0
        self._overlong = 0
        self._undecodable = 0

    @property
    def suffix(self) -> bytes:
        return self._suffix

    @property
    def codes(self) -> int:
        """Codes returned so far."""
        return self._codes

    @property
    def overlong(self) -> int:
        """Lines dropped because their content exceeded ``max_len`` bytes."""
        return self._overlong

    @property
    def undecodable(self) -> int:
        """Codes returned with U+FFFD in place of bytes that were not UTF-8."""
        return self._undecodable

    @property
    def buffered(self) -> int:
        """Bytes held back until their suffix arrives."""
        return len(self._buffer)

    def receive_data(self, data: bytes) -> list[str]:
        """Feed received bytes; return the codes they complete, in order."""
        buf = self._buffer
        buf += data
        codes: list[str] = []
        while True:
            if self._drop_lf and buf:
                self._drop_lf = False
                if buf[0] == Ctl.LF:
                    del buf[0]
            end = buf.find(self._suffix, self._searched)
            if end < 0:
                break
            line = bytes(buf[:end])
            del buf[: end + len(self._suffix)]
            self._searched = 0
            self._drop_lf = self._suffix == CR_SUFFIX
            if self._discarding:
                self._discarding = False  # that suffix ended the overlong line
                continue
            code = self._decode(line)
            if code is not None:
                codes.append(code)
        # No suffix in the buffer. Once it holds more than max_len bytes besides a possibly
        # split suffix, its line is overlong whatever comes next: drop it now, so the buffer
        # stays bounded, and skip the rest of it up to its suffix.
        if len(buf) > self._max_len + self._partial:
            if not self._discarding:
                self._discarding = True
                self._overlong += 1
            del buf[: len(buf) - self._partial]
        self._searched = max(0, len(buf) - self._partial)
        return codes

    def _decode(self, line: bytes) -> str | None:
        if len(line) > self._max_len:
            self._overlong += 1
            return None
        if self._suffix == LF_SUFFIX and line.endswith(CR_SUFFIX):
            line = line[:-1]  # CR LF sent to an LF decoder, see the module docstring
        if not line:
            return None
        self._codes += 1
        try:
            return line.decode("utf-8")
        except UnicodeDecodeError:
            self._undecodable += 1
            return line.decode("utf-8", errors="replace")
