"""A simulated Impinj Indy R2000 reader (PROTOCOLS.md §1), served on a pty or a TCP port.

Owns a field of tags and the reader behaviour the daemon relies on: real-time (89), session
(8B) and fast-switch (8A) inventory rounds, set/get work antenna (74/75), set/get RF power
(76/77) and firmware version (72), on 4- or 8-port readers, with antenna ports that can be
marked faulty. Bytes are produced by :mod:`edgegate.wire.r2000`'s device role, so the
simulator and the daemon can only disagree about the protocol if the codec disagrees with
PROTOCOLS.md. It is served through :mod:`simulators.endpoints` (pty or TCP) like every
other simulator; faults come from :mod:`simulators.faults`.

Invariants:
- an 89 / 8B round answers one tag frame per field tag on the current work antenna, then
  exactly one end-of-round frame whose ``AntID`` is that antenna (§1, table) — or, when that
  port is faulty, only the error frame 22 (antenna missing);
- an 8A round visits its enabled slots in order, ``Repeat`` times, each ``stay`` times:
  tag frames for a working port, one antenna fault frame (``AntID`` 22) per visit of a
  faulty or missing one; then exactly one closing frame ``TotalRead CommandDuration``;
- ports 5-8 of an 8-port reader are reported with RSSI bit 7 set (§1);
- replies carry the simulator's own address; a request for another address gets no answer;
- the frequency index of every tag frame is fixed (default 7 = 902.0 MHz), so a known tag
  yields a byte-exact frame, e.g. the §1 golden vector;
- requests on one connection are answered strictly in order, one at a time, like the
  device, and every frame is written on its own, as the reader emits it — unless
  ``reply_as_one_write``: then a reply's frames (a whole round) go out in one write, as a
  USB-serial adapter hands a burst at line rate to the host in full packets; a paced fault
  layer then cuts it into back-to-back pieces, so a round leaves at exactly line rate;
- a hung reader ignores every request that arrives while it is hung (the round it is
  sending goes out whole), like a wedged reader whose port stays open.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from edgegate.wire.r2000 import (
    BROADCAST,
    INVENTORY_COMMANDS,
    MAX_RF_POWER_DBM,
    Cmd,
    R2000Device,
    R2000Error,
    Request,
    Status,
    decode_fast_switch_request,
    encode_antenna_fault,
    encode_error,
    encode_fast_switch_end,
    encode_frame,
    encode_round_end,
    encode_tag,
    pc_for_epc,
)
from simulators.endpoints import PtyEndpoint, TcpEndpoint
from simulators.faults import (
    Receive,
    Send,
)

_READ_SIZE = 4096
# Data length of 89 / 8B requests (§1): 89 carries Repeat; 8B Session, Target, Repeat.
_ROUND_DATA_LEN = {Cmd.REAL_TIME_INVENTORY: 1, Cmd.SESSION_INVENTORY: 3}
_DEFAULT_RF_POWER_DBM = 30


@dataclass(frozen=True, slots=True)
class FieldTag:
    """A tag in front of one antenna port (1-based, as labelled on the reader)."""

    epc: bytes
    antenna_port: int
    rssi_dbm: int

    @property
    def epc_hex(self) -> str:
        return self.epc.hex().upper()


class R2000Simulator:
    """The reader's state and behaviour, independent of how it is connected."""

    def __init__(
        self,
        *,
        address: int = 0x01,
        antenna_ports: int = 4,
        freq_index: int = 7,
        firmware: tuple[int, int] = (0x01, 0x08),
        round_delay_s: float = 0.02,
        reply_as_one_write: bool = False,
    ) -> None:
        if not 0 <= address < BROADCAST:
            raise ValueError(f"a reader address is 00-FE, got {address:#04x}")
        if not 1 <= antenna_ports <= 8:
            raise ValueError(f"antenna_ports must be 1-8, got {antenna_ports}")
        if not 0 <= freq_index <= 0x3F:
            raise ValueError(f"freq_index must be 0-63, got {freq_index}")
        if round_delay_s < 0:
            raise ValueError(f"round_delay_s must not be negative, got {round_delay_s}")
        self._address = address
        self._antenna_ports = antenna_ports
        self._freq_index = freq_index
        self._firmware = bytes(firmware)
        self._round_delay_s = round_delay_s
        self._reply_as_one_write = reply_as_one_write
        self._work_antenna = 0
        self._rf_power_dbm = _DEFAULT_RF_POWER_DBM
        self._field: dict[tuple[bytes, int], FieldTag] = {}
        self._faulty_ports: set[int] = set()
        self.hung = False
        self.frames_sent = 0
        self.tags_sent = 0
        self.rounds = 0

    @property
    def tags(self) -> tuple[FieldTag, ...]:
        """The tags in the field, in the order they were placed."""
        return tuple(self._field.values())

    @property
    def work_antenna(self) -> int:
        """The 0-based wire antenna the next round reads on (set by command 74)."""
        return self._work_antenna

    @property
    def rf_power_dbm(self) -> int:
        """The output power set by command 76 (30 dBm at power-on)."""
        return self._rf_power_dbm

    @property
    def faulty_ports(self) -> frozenset[int]:
        """1-based ports marked faulty by :meth:`set_antenna_fault`."""
        return frozenset(self._faulty_ports)

    def set_antenna_fault(self, antenna_port: int, faulty: bool = True) -> None:
        """Mark a port's antenna as missing (a cut cable) or repair it.

        A faulty port still accepts 74, as the reader only finds the antenna missing when
        it transmits: its 89 / 8B rounds end in error 22, its 8A slots in fault frames.
        """
        self._require_port(antenna_port)
        if faulty:
            self._faulty_ports.add(antenna_port)
        else:
            self._faulty_ports.discard(antenna_port)

    def add_tag(self, epc_hex: str, antenna_port: int = 1, rssi_dbm: int = -55) -> None:
        """Place a tag in front of ``antenna_port`` (or change its RSSI there).

        A tag may sit in front of several ports at once, as in overlapping fields.
        """
        epc = _parse_epc(epc_hex)
        pc_for_epc(epc)  # validates the length before the tag can reach a round
        self._require_port(antenna_port)
        if not -129 <= rssi_dbm <= -2:
            raise ValueError(f"RSSI must be -129..-2 dBm, got {rssi_dbm}")
        self._field[epc, antenna_port] = FieldTag(epc, antenna_port, rssi_dbm)

    def remove_tag(self, epc_hex: str) -> None:
        """Take a tag out of the field, in front of every port (no-op if it is not there)."""
        epc = _parse_epc(epc_hex)
        self._field = {key: tag for key, tag in self._field.items() if tag.epc != epc}

    def clear(self) -> None:
        """Empty the field."""
        self._field.clear()

    def hang(self) -> None:
        """Wedge the reader: requests are ignored from now on, the port stays open."""
        self.hung = True

    def recover(self) -> None:
        """Un-wedge the reader: it answers the next request again."""
        self.hung = False

    def answer(self, request: Request) -> list[bytes]:
        """The frames the reader sends back for ``request``, updating its state."""
        if request.address not in (self._address, BROADCAST):
            return []
        cmd = request.cmd
        if cmd == Cmd.FAST_SWITCH_INVENTORY:
            frames = self._fast_switch_round(request.data)
        elif cmd in INVENTORY_COMMANDS:
            frames = self._round(request)
        elif cmd == Cmd.SET_WORK_ANTENNA:
            frames = [self._set_work_antenna(request.data)]
        elif cmd == Cmd.GET_WORK_ANTENNA:
            frames = [encode_frame(self._address, cmd, bytes((self._work_antenna,)))]
        elif cmd == Cmd.SET_RF_POWER:
            frames = [self._set_rf_power(request.data)]
        elif cmd == Cmd.GET_RF_POWER:
            frames = [encode_frame(self._address, cmd, bytes((self._rf_power_dbm,)))]
        elif cmd == Cmd.GET_FIRMWARE_VERSION:
            frames = [encode_frame(self._address, cmd, self._firmware)]
        else:
            frames = [encode_error(self._address, cmd, Status.FAIL)]
        self.frames_sent += len(frames)
        return frames

    async def reply(self, request: Request) -> list[bytes]:
        """:meth:`answer`, after the time an inventory round takes on air.

        The delay is what keeps a host that re-issues 89 after every round (§1: there is
        no stream-forever mode) from spinning both processes at 100 % CPU.
        """
        if request.cmd in INVENTORY_COMMANDS and self._round_delay_s:
            await asyncio.sleep(self._round_delay_s)
        return self.answer(request)

    async def converse(self, receive: Receive, send: Send) -> None:
        """Answer requests read by ``receive`` until it returns ``b""`` (end of stream).

        Each frame is a write of its own, as the reader emits frames while it reads tags;
        a fault layer in front of ``send`` therefore sees frame boundaries. With
        ``reply_as_one_write`` each reply is one write instead (see the module invariants).
        """
        device = R2000Device()
        while data := await receive():
            for request in device.receive_data(data):
                if self.hung:
                    continue
                frames = await self.reply(request)
                if self._reply_as_one_write and frames:
                    await send(b"".join(frames))
                    continue
                for frame in frames:
                    await send(frame)

    def open_pty(self) -> PtyEndpoint:
        """A new pseudo-terminal for this reader; ``path`` is its serial port."""
        return PtyEndpoint(self.converse)

    async def open_tcp(self, host: str = "127.0.0.1", port: int = 0) -> TcpEndpoint:
        """Listen on ``host:port`` (0 = any free port, see ``TcpEndpoint.port``)."""
        return await TcpEndpoint.listen(self.converse, host, port)

    def _round(self, request: Request) -> list[bytes]:
        cmd = request.cmd
        if len(request.data) != _ROUND_DATA_LEN[Cmd(cmd)]:
            return [encode_error(self._address, cmd, Status.INVALID_PARAMETER)]
        self.rounds += 1
        antenna = self._work_antenna
        if antenna + 1 in self._faulty_ports:
            return [encode_error(self._address, cmd, Status.ANTENNA_MISSING)]
        frames = self._tag_frames(cmd, antenna)
        frames.append(
            encode_round_end(self._address, cmd, antenna, self._read_rate(len(frames)), len(frames))
        )
        return frames

    def _fast_switch_round(self, data: bytes) -> list[bytes]:
        cmd = Cmd.FAST_SWITCH_INVENTORY
        try:
            request = decode_fast_switch_request(data)
        except R2000Error:
            return [encode_error(self._address, cmd, Status.INVALID_PARAMETER)]
        if not request.slots:
            return [encode_error(self._address, cmd, Status.INVALID_PARAMETER)]
        self.rounds += 1
        frames: list[bytes] = []
        reads = 0
        for _ in range(max(request.repeat, 1)):
            for antenna, stay in request.slots:
                if antenna >= self._antenna_ports or antenna + 1 in self._faulty_ports:
                    frames.append(
                        encode_antenna_fault(self._address, antenna, Status.ANTENNA_MISSING)
                    )
                    continue
                for _ in range(stay):
                    tags = self._tag_frames(cmd, antenna)
                    reads += len(tags)
                    frames += tags
        duration_ms = round(self._round_delay_s * 1000)
        frames.append(encode_fast_switch_end(self._address, min(reads, 0xFFFFFF), duration_ms))
        return frames

    def _tag_frames(self, cmd: int, antenna: int) -> list[bytes]:
        """One tag frame per field tag in front of wire ``antenna``."""
        reads = [tag for tag in self._field.values() if tag.antenna_port == antenna + 1]
        self.tags_sent += len(reads)
        return [
            encode_tag(
                self._address,
                cmd,
                self._freq_index,
                antenna,
                pc_for_epc(tag.epc),
                tag.epc,
                tag.rssi_dbm,
            )
            for tag in reads
        ]

    def _read_rate(self, reads: int) -> int:
        # ReadRate is reads per second (§1); a simulated round lasts round_delay_s.
        if not self._round_delay_s:
            return 0
        return min(0xFFFF, round(reads / self._round_delay_s))

    def _set_work_antenna(self, data: bytes) -> bytes:
        cmd = Cmd.SET_WORK_ANTENNA
        if len(data) != 1:
            return encode_error(self._address, cmd, Status.INVALID_PARAMETER)
        if data[0] >= self._antenna_ports:
            return encode_error(self._address, cmd, Status.ANTENNA_MISSING)
        self._work_antenna = data[0]
        return encode_frame(self._address, cmd, bytes((Status.SUCCESS,)))

    def _set_rf_power(self, data: bytes) -> bytes:
        cmd = Cmd.SET_RF_POWER
        if len(data) != 1 or data[0] > MAX_RF_POWER_DBM:
            return encode_error(self._address, cmd, Status.INVALID_PARAMETER)
        self._rf_power_dbm = data[0]
        return encode_frame(self._address, cmd, bytes((Status.SUCCESS,)))

    def _require_port(self, antenna_port: int) -> None:
        if not 1 <= antenna_port <= self._antenna_ports:
            raise ValueError(f"antenna port must be 1-{self._antenna_ports}, got {antenna_port}")


def _parse_epc(epc_hex: str) -> bytes:
    try:
        return bytes.fromhex(epc_hex)
    except ValueError:
        raise ValueError(f"an EPC is hex digits, got {epc_hex!r}") from None
