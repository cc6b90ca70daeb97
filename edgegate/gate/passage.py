"""The passage tracker: turns a stream of observations into passages (event cycles).

Owns the open passage, the de-duplication of reads, the beams, the lingering-tag rule and the
bookkeeping of readers that are down. Pure: no I/O, no clock of its own — the caller passes
every observation (which carries its own monotonic time) and calls :meth:`PassageTracker.tick`
with the current monotonic time; :meth:`PassageTracker.next_deadline` says when the next
tick can change anything.

Invariants (DESIGN.md §8):
- at most one passage is open at a time; it opens on a beam break, or on the first tag read;
- an EPC is counted once per passage (reads, peak RSSI, antennas, first/last seen);
- a read weaker than ``min_rssi_dbm`` is ignored entirely;
- portal mode: a passage closes when no new EPC has arrived for ``stable_set_s`` and the
  beams are clear; barrier mode: once the set is stable and a code has been scanned, or
  ``pass_wait_s`` after it became stable without one, or at once when the vehicle backs out
  (beams clear before the decision); in both modes at ``max_open_s`` at the latest;
- an empty passage (beams broke, nothing read) is still a passage and is decided;
- in barrier mode a decided passage *ends* (:class:`PassageEnded`, the barrier closes) when
  both beams are clear;
- an EPC of a closed passage neither opens nor joins a passage until it has been out of the
  field for ``depart_s`` (one pallet is one decision, however long it sits at the antennas);
- a reader that was down at any moment of a passage is listed in ``readers_down``;
- the direction and the evidence for it are recorded: config, else beam order (A = outside
  first = in), else antenna order (outside antennas first = in), else unknown.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from edgegate.gate.model import (
    BeamChanged,
    ClosedPassage,
    CodeScanned,
    Direction,
    Observation,
    ReaderDown,
    ReaderUp,
    TagSeen,
    TagSummary,
)

OUTSIDE_BEAM, INSIDE_BEAM = "A", "B"


@dataclass(frozen=True, slots=True)
class TrackerSettings:
    """The tracker's share of the configuration, in seconds."""

    stable_set_s: float = 0.8
    max_open_s: float = 30.0
    min_rssi_dbm: float = -90.0
    depart_s: float = 2.0
    direction: Direction | None = None
    outside_antennas: frozenset[int] = frozenset()
    inside_antennas: frozenset[int] = frozenset()
    barrier_mode: bool = False
    pass_wait_s: float = 5.0


@dataclass(frozen=True, slots=True)
class PassageEnded:
    """Barrier mode: the vehicle of a decided passage has cleared both beams."""

    passage_id: str
    at_mono_s: float


TrackerEvent = ClosedPassage | PassageEnded


@dataclass(slots=True)
class _TagAccumulator:
    epc: str
    reads: int
    rssi_max_dbm: float
    antennas: set[int]
    first_seen_mono_s: float
    last_seen_mono_s: float
    tid: str | None

    def add(self, read: TagSeen) -> None:
        self.reads += 1
        self.rssi_max_dbm = max(self.rssi_max_dbm, read.rssi_dbm)
        self.antennas.add(read.antenna)
        self.last_seen_mono_s = max(self.last_seen_mono_s, read.at_mono_s)
        self.tid = self.tid or read.tid

    def summary(self) -> TagSummary:
        return TagSummary(
            epc=self.epc,
            reads=self.reads,
            rssi_max_dbm=self.rssi_max_dbm,
            antennas=tuple(sorted(self.antennas)),
            first_seen_mono_s=self.first_seen_mono_s,
            last_seen_mono_s=self.last_seen_mono_s,
            tid=self.tid,
        )


@dataclass(slots=True)
class _OpenPassage:
    passage_id: str
    opened_at_mono_s: float
    last_new_epc_mono_s: float
    tags: dict[str, _TagAccumulator] = field(default_factory=dict)
    codes: list[CodeScanned] = field(default_factory=list)
    readers_down: set[str] = field(default_factory=set)
    first_beam: str | None = None
    beams_seen: bool = False
    # First read on an outside / inside antenna: direction evidence (DESIGN.md §8).
    first_outside_mono_s: float | None = None
    first_inside_mono_s: float | None = None


class PassageTracker:
    """Feed it observations and ticks; it hands back passages as they close and end."""

    def __init__(self, settings: TrackerSettings, new_id: Callable[[], str]) -> None:
        self._settings = settings
        self._new_id = new_id
        self._open: _OpenPassage | None = None
        # Tags of closed passages still in the field: EPC → last read. A read of one is not a
        # new passage (DESIGN.md §8). Departures are found through a min-heap of (last read,
        # EPC) holding one entry per lingering tag, refreshed lazily: a tick costs nothing
        # until the oldest entry is due, however many thousand reads a second arrive.
        self._lingering: dict[str, float] = {}
        self._departures: list[tuple[float, str]] = []
        self._down: set[str] = set()
        self._broken: set[str] = set()
        self._awaiting_clear: str | None = None

    @property
    def open_passage_id(self) -> str | None:
        return self._open.passage_id if self._open else None

    @property
    def readers_down(self) -> frozenset[str]:
        return frozenset(self._down)

    @property
    def beams_clear(self) -> bool:
        return not self._broken & {OUTSIDE_BEAM, INSIDE_BEAM}

    def observe(self, observation: Observation) -> list[TrackerEvent]:
        """Account for one observation; returns what closed or ended because of it."""
        events = self.tick(observation.at_mono_s)
        match observation:
            case TagSeen():
                self._on_tag(observation)
            case CodeScanned():
                if self._open is not None:
                    self._open.codes.append(observation)
            case BeamChanged():
                events += self._on_beam(observation)
            case ReaderDown(reader=reader):
                self._down.add(reader)
                if self._open is not None:
                    self._open.readers_down.add(reader)
            case ReaderUp(reader=reader):
                self._down.discard(reader)
        # A code or a beam can complete the close condition at this very instant.
        return events + self.tick(observation.at_mono_s)

    def tick(self, now_mono_s: float) -> list[TrackerEvent]:
        """Close the open passage if its time has come; forget tags that have departed."""
        settings = self._settings
        self._forget_departed(now_mono_s)
        passage = self._open
        if passage is None:
            return []
        if now_mono_s - passage.opened_at_mono_s >= settings.max_open_s:
            return [self._close(now_mono_s, "max_open")]
        stable_since = passage.last_new_epc_mono_s + settings.stable_set_s
        if now_mono_s < stable_since:
            return []
        if not settings.barrier_mode:
            return [self._close(now_mono_s, "stable_set")] if self.beams_clear else []
        if passage.codes:
            return [self._close(now_mono_s, "pass_scanned")]
        if now_mono_s >= stable_since + settings.pass_wait_s:
            return [self._close(now_mono_s, "pass_wait")]
        return []

    def next_deadline(self) -> float | None:
        """The monotonic time at which :meth:`tick` would next change state, if any."""
        settings = self._settings
        deadlines: list[float] = []
        passage = self._open
        if passage is not None:
            deadlines.append(passage.opened_at_mono_s + settings.max_open_s)
            stable_since = passage.last_new_epc_mono_s + settings.stable_set_s
            # Only the close that time alone can bring: a beam clearing or a code arriving
            # is an observation, and observe() ticks after it. A deadline that has passed
            # without closing would have the caller tick in a busy loop until it does.
            if not settings.barrier_mode:
                if self.beams_clear:
                    deadlines.append(stable_since)
            elif passage.codes:
                deadlines.append(stable_since)
            else:
                deadlines.append(stable_since + settings.pass_wait_s)
        if self._departures:
            # The heap's top may be older than its tag's last read: then this is early, and
            # the tick it causes only refreshes the entry.
            deadlines.append(self._departures[0][0] + settings.depart_s)
        return min(deadlines) if deadlines else None

    def flush(self, now_mono_s: float) -> list[TrackerEvent]:
        """Close the open passage now (shutdown: its decision must not be lost)."""
        return [self._close(now_mono_s, "shutdown")] if self._open is not None else []

    def forget_reader(self, reader: str) -> None:
        """A reader left the configuration: it can no longer be down. An open passage keeps
        it in ``readers_down`` if it was down meanwhile — those reads stay untrusted."""
        self._down.discard(reader)

    def _on_beam(self, change: BeamChanged) -> list[TrackerEvent]:
        was_clear = self.beams_clear
        if change.broken:
            self._broken.add(change.beam)
        else:
            self._broken.discard(change.beam)
        if change.beam not in (OUTSIDE_BEAM, INSIDE_BEAM):
            return []  # a loop detector is evidence of a vehicle, not of its direction
        passage = self._open
        if change.broken:
            if passage is None and self._awaiting_clear is None:
                passage = self._open = self._start(change.at_mono_s)
            if passage is not None:
                passage.beams_seen = True
                passage.first_beam = passage.first_beam or change.beam
            return []
        if not self.beams_clear or was_clear:
            return []
        if passage is not None and self._settings.barrier_mode and passage.beams_seen:
            # The vehicle left before it was decided (backed out): decide it as it stands.
            return [self._close(change.at_mono_s, "backed_out")]
        if self._awaiting_clear is not None:
            ended = PassageEnded(self._awaiting_clear, change.at_mono_s)
            self._awaiting_clear = None
            return [ended]
        return []

    def _start(self, at_mono_s: float) -> _OpenPassage:
        return _OpenPassage(
            passage_id=self._new_id(),
            opened_at_mono_s=at_mono_s,
            last_new_epc_mono_s=at_mono_s,
            readers_down=set(self._down),
        )

    def _on_tag(self, read: TagSeen) -> None:
        if read.rssi_dbm < self._settings.min_rssi_dbm:
            return
        if read.epc in self._lingering:
            self._lingering[read.epc] = max(self._lingering[read.epc], read.at_mono_s)
            return
        passage = self._open
        if passage is None:
            passage = self._open = self._start(read.at_mono_s)
        self._note_antenna_evidence(passage, read)
        known = passage.tags.get(read.epc)
        if known is not None:
            known.add(read)
            return
        passage.tags[read.epc] = _TagAccumulator(
            epc=read.epc,
            reads=1,
            rssi_max_dbm=read.rssi_dbm,
            antennas={read.antenna},
            first_seen_mono_s=read.at_mono_s,
            last_seen_mono_s=read.at_mono_s,
            tid=read.tid,
        )
        passage.last_new_epc_mono_s = read.at_mono_s

    def _note_antenna_evidence(self, passage: _OpenPassage, read: TagSeen) -> None:
        if read.antenna in self._settings.outside_antennas and passage.first_outside_mono_s is None:
            passage.first_outside_mono_s = read.at_mono_s
        if read.antenna in self._settings.inside_antennas and passage.first_inside_mono_s is None:
            passage.first_inside_mono_s = read.at_mono_s

    def _direction(self, passage: _OpenPassage) -> tuple[Direction, str]:
        if self._settings.direction is not None:
            return self._settings.direction, "config"
        if passage.first_beam is not None:
            first = passage.first_beam
            direction = Direction.IN if first == OUTSIDE_BEAM else Direction.OUT
            return direction, f"beam {first} broke first"
        outside, inside = passage.first_outside_mono_s, passage.first_inside_mono_s
        if outside is not None and inside is not None and outside != inside:
            direction = Direction.IN if outside < inside else Direction.OUT
            order = "outside then inside" if outside < inside else "inside then outside"
            return direction, f"antennas {order}"
        return Direction.UNKNOWN, "no evidence"

    def _close(self, now_mono_s: float, cause: str) -> ClosedPassage:
        passage = self._open
        assert passage is not None
        self._open = None
        self._linger(passage.tags.values(), now_mono_s)
        if self._settings.barrier_mode and not self.beams_clear:
            self._awaiting_clear = passage.passage_id
        direction, evidence = self._direction(passage)
        return ClosedPassage(
            passage_id=passage.passage_id,
            opened_at_mono_s=passage.opened_at_mono_s,
            closed_at_mono_s=now_mono_s,
            close_cause=cause,
            direction=direction,
            direction_evidence=evidence,
            tags=tuple(acc.summary() for acc in passage.tags.values()),
            codes=tuple(passage.codes),
            readers_down=tuple(sorted(passage.readers_down)),
        )

    def _linger(self, tags: Iterable[_TagAccumulator], now_mono_s: float) -> None:
        for acc in tags:
            # Start the departure clock at the last read; a tag still in the field keeps
            # refreshing it through _on_tag until it has really gone.
            seen = min(acc.last_seen_mono_s, now_mono_s)
            if acc.epc not in self._lingering:
                heapq.heappush(self._departures, (seen, acc.epc))
            self._lingering[acc.epc] = max(seen, self._lingering.get(acc.epc, seen))

    def _forget_departed(self, now_mono_s: float) -> None:
        depart_s = self._settings.depart_s
        departures, lingering = self._departures, self._lingering
        while departures and now_mono_s - departures[0][0] >= depart_s:
            _, epc = heapq.heappop(departures)
            seen = lingering[epc]
            if now_mono_s - seen >= depart_s:
                del lingering[epc]
            else:  # read again since: back in the heap at its last read
                heapq.heappush(departures, (seen, epc))
