"""EPC Gen2 air-protocol facts that every reader protocol reports the same way.

Owns the tag side of a read, whichever reader framed it: the PC word's EPC length field, the
XPC words announced by PC bit 0x0200, and the tag's CRC-16 (CRC-16/GENIBUS: poly 0x1021,
init 0xFFFF, output inverted — the StoredCRC / PacketCRC of Gen2). PROTOCOLS.md §1 and §2
both cite it: the R2000 buffer record carries it (✔ ``4DD4``), every ThingMagic tag record
carries it (✔ ``F313`` and ``E94A`` in the captures).

Invariants: pure functions of their arguments, standard library only.
"""

from __future__ import annotations

PC_XI = 0x0200
"""PC bit 0x0200 (XI): an XPC_W1 word follows the PC (PROTOCOLS.md §2)."""
XPC_XEB = 0x8000
"""XPC_W1 bit 0x8000 (XEB): an XPC_W2 word follows XPC_W1."""
MAX_EPC_BYTES = 0x1F * 2
"""The PC's 5-bit length field counts EPC words: at most 31 words."""

_POLY = 0x1021


def epc_length(pc: int) -> int:
    """EPC length in bytes from the PC word: ``((PC >> 11) & 0x1F) * 2``."""
    return ((pc >> 11) & 0x1F) * 2


def pc_for_epc(epc: bytes) -> int:
    """A PC word whose length bits announce ``epc`` (other PC bits zero)."""
    if len(epc) % 2 or len(epc) > MAX_EPC_BYTES:
        raise ValueError(f"an EPC is 0-{MAX_EPC_BYTES} bytes in whole words, got {len(epc)}")
    return (len(epc) // 2) << 11


def _crc16_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = (crc << 1) ^ _POLY if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return tuple(table)


_CRC16_TABLE = _crc16_table()


def crc16(data: bytes) -> int:
    """CRC-16/GENIBUS of ``data``: the Gen2 tag CRC over PC (+ XPC) + EPC."""
    crc = 0xFFFF
    table = _CRC16_TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[(crc >> 8) ^ byte]
    return crc ^ 0xFFFF
