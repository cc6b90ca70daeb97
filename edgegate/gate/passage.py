"""The passage tracker: turns a stream of observations into closed passages (event cycles).

Owns the open passage, the de-duplication of reads, the lingering-tag rule and the
bookkeeping of readers that are down. Pure: no I/O, no clock of its own — the caller passes
every observation (which carries its own monotonic time) and calls :meth:`PassageTracker.tick`
with the current monotonic time; :meth:`PassageTracker.next_deadline` says when the next
tick can change anything.

Invariants (DESIGN.md §8):
- at most one passage is open at a time; it opens on the first tag read (beams come later);
- an EPC is counted once per passage (reads, peak RSSI, antennas, first/last seen);
- a read weaker than ``min_rssi_dbm`` is ignored entirely;
- a passage closes when no new EPC has arrived for ``stable_set_s``, or at ``max_open_s``;
- an EPC of a closed passage neither opens nor joins a passage until it has been out of the
  field for ``depart_s`` (one pallet is one decision, however long it sits at the antennas);
- a reader that was down at any moment of a passage is listed in ``readers_down``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from edgegate.gate.model import (
    ClosedPassage,
    CodeScanned,
    Direction,
    Observation,
    ReaderDown,
    ReaderUp,
    TagSeen,
    TagSummary,
)


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
    # First read on an outside / inside antenna: the direction evidence (DESIGN.md §8).
    first_outside_mono_s: float | None = None
    first_inside_mono_s: float | None = None


class PassageTracker:
    """Feed it observations and ticks; it hands back passages as they close."""

    def __init__(self, settings: TrackerSettings, new_id: Callable[[], str]) -> None:
        self._settings = settings
        self._new_id = new_id
        self._open: _OpenPassage | None = None
        self._lingering: dict[str, float] = {}
        self._down: set[str] = set()

    @property
    def open_passage_id(self) -> str | None:
        return self._open.passage_id if self._open else None

    @property
    def readers_down(self) -> frozenset[str]:
        return frozenset(self._down)

    def observe(self, observation: Observation) -> list[ClosedPassage]:
        """Account for one observation; returns passages that closed before it applied."""
        closed = self.tick(observation.at_mono_s)
        match observation:
            case TagSeen():
                self._on_tag(observation)
            case CodeScanned():
                if self._open is not None:
                    self._open.codes.append(observation)
            case ReaderDown(reader=reader):
                self._down.add(reader)
                if self._open is not None:
                    self._open.readers_down.add(reader)
            case ReaderUp(reader=reader):
                self._down.discard(reader)
            case _:
                pass
        return closed

    def tick(self, now_mono_s: float) -> list[ClosedPassage]:
        """Close the open passage if its time has come; forget tags that have departed."""
        settings = self._settings
        self._lingering = {
            epc: seen
            for epc, seen in self._lingering.items()
            if now_mono_s - seen < settings.depart_s
        }
        passage = self._open
        if passage is None:
            return []
        if now_mono_s - passage.opened_at_mono_s >= settings.max_open_s:
            return [self._close(now_mono_s, "max_open")]
        if now_mono_s - passage.last_new_epc_mono_s >= settings.stable_set_s:
            return [self._close(now_mono_s, "stable_set")]
        return []

    def next_deadline(self) -> float | None:
        """The monotonic time at which :meth:`tick` would next change state, if any."""
        deadlines: list[float] = []
        if self._open is not None:
            deadlines.append(self._open.opened_at_mono_s + self._settings.max_open_s)
            deadlines.append(self._open.last_new_epc_mono_s + self._settings.stable_set_s)
        if self._lingering:
            deadlines.append(min(self._lingering.values()) + self._settings.depart_s)
        return min(deadlines) if deadlines else None

    def flush(self, now_mono_s: float) -> list[ClosedPassage]:
        """Close the open passage now (shutdown: its decision must not be lost)."""
        return [self._close(now_mono_s, "shutdown")] if self._open is not None else []

    def _on_tag(self, read: TagSeen) -> None:
        if read.rssi_dbm < self._settings.min_rssi_dbm:
            return
        if read.epc in self._lingering:
            self._lingering[read.epc] = max(self._lingering[read.epc], read.at_mono_s)
            return
        passage = self._open
        if passage is None:
            passage = self._open = _OpenPassage(
                passage_id=self._new_id(),
                opened_at_mono_s=read.at_mono_s,
                last_new_epc_mono_s=read.at_mono_s,
                readers_down=set(self._down),
            )
        self._note_direction_evidence(passage, read)
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

    def _note_direction_evidence(self, passage: _OpenPassage, read: TagSeen) -> None:
        if read.antenna in self._settings.outside_antennas and passage.first_outside_mono_s is None:
            passage.first_outside_mono_s = read.at_mono_s
        if read.antenna in self._settings.inside_antennas and passage.first_inside_mono_s is None:
            passage.first_inside_mono_s = read.at_mono_s

    def _direction(self, passage: _OpenPassage) -> Direction:
        if self._settings.direction is not None:
            return self._settings.direction
        outside, inside = passage.first_outside_mono_s, passage.first_inside_mono_s
        if outside is not None and inside is not None and outside != inside:
            return Direction.IN if outside < inside else Direction.OUT
        return Direction.UNKNOWN

    def _close(self, now_mono_s: float, cause: str) -> ClosedPassage:
        passage = self._open
        assert passage is not None
        self._open = None
        self._linger(passage.tags.values(), now_mono_s)
        return ClosedPassage(
            passage_id=passage.passage_id,
            opened_at_mono_s=passage.opened_at_mono_s,
            closed_at_mono_s=now_mono_s,
            close_cause=cause,
            direction=self._direction(passage),
            tags=tuple(acc.summary() for acc in passage.tags.values()),
            codes=tuple(passage.codes),
            readers_down=tuple(sorted(passage.readers_down)),
        )

    def _linger(self, tags: Iterable[_TagAccumulator], now_mono_s: float) -> None:
        for acc in tags:
            # Start the departure clock at the last read; a tag still in the field keeps
            # refreshing it through _on_tag until it has really gone.
            self._lingering[acc.epc] = min(acc.last_seen_mono_s, now_mono_s)
