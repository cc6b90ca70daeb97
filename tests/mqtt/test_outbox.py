"""The durable outbox on a real SQLite file."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from edgegate.mqtt.alarms import AlarmKind, Alarms, overflow_alarm
from edgegate.mqtt.outbox import Appended, AsyncOutbox, NewEvent, Outbox, OutboxLimits
from edgegate.mqtt.topics import Topics


def test_append_commits_and_survives_reopening(tmp_path: Path) -> None:
    box = Outbox.open(tmp_path / "outbox.db", clock=lambda: 100.0)
    box.append("t/decision", "e1", lambda seq: b'{"seq":%d}' % seq, counter="decision")
    box.close()
    reopened = Outbox.open(tmp_path / "outbox.db", clock=lambda: 107.5)
    [row] = reopened.pending(10)
    assert (row.event_id, row.topic, row.payload, row.qos) == ("e1", "t/decision", b'{"seq":1}', 1)
    assert reopened.stats().depth == 1
    assert reopened.stats().oldest_age_s == 7.5


def test_the_database_runs_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    box = Outbox.open(tmp_path / "outbox.db")
    assert box._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert box._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_seq_only_grows_even_after_rows_are_retired_and_the_file_reopened(tmp_path: Path) -> None:
    box = Outbox.open(tmp_path / "outbox.db")
    seqs = [box.append("t", f"e{n}", lambda s: b"x", counter="decision") for n in range(3)]
    box.retire([row.id for row in box.pending(10)])
    box.close()
    box = Outbox.open(tmp_path / "outbox.db")
    assert seqs == [1, 2, 3]
    assert box.append("t", "e9", lambda s: b"x", counter="decision") == 4
    assert box.counter("decision") == 4


def test_pending_is_oldest_first_and_retire_removes_only_the_named_rows(tmp_path: Path) -> None:
    box = Outbox.open(tmp_path / "outbox.db")
    for n in range(5):
        box.append("t", f"e{n}", lambda s: str(s).encode(), counter="decision")
    rows = box.pending(3)
    assert [r.event_id for r in rows] == ["e0", "e1", "e2"]
    box.retire([rows[1].id])
    assert [r.event_id for r in box.pending(10)] == ["e0", "e2", "e3", "e4"]
    assert [r.event_id for r in box.pending(10, after_id=rows[2].id)] == ["e3", "e4"]


def test_a_failing_payload_builder_stores_nothing_and_burns_no_seq(tmp_path: Path) -> None:
    box = Outbox.open(tmp_path / "outbox.db")

    def broken(seq: int) -> bytes:
        raise ValueError("cannot serialise")

    with pytest.raises(ValueError, match="cannot serialise"):
        box.append("t", "e1", broken, counter="decision")
    assert box.stats().depth == 0
    assert box.append("t", "e2", lambda s: b"x", counter="decision") == 1


def test_the_same_event_id_cannot_be_stored_twice(tmp_path: Path) -> None:
    box = Outbox.open(tmp_path / "outbox.db")
    box.append("t", "e1", lambda s: b"x", counter="decision")
    with pytest.raises(sqlite3.IntegrityError):
        box.append("t", "e1", lambda s: b"y", counter="decision")
    assert [r.payload for r in box.pending(10)] == [b"x"]
    assert box.counter("decision") == 1


async def test_async_outbox_wakes_its_reader_after_each_append(tmp_path: Path) -> None:
    box = await AsyncOutbox.open(tmp_path / "outbox.db")
    assert not box.appended.is_set()
    seq = await box.append("t", "e1", lambda s: b"x", counter="decision")
    assert seq == 1
    assert box.appended.is_set()
    assert (await box.stats()).depth == 1
    await box.close()


async def test_an_alarm_is_committed_to_the_outbox_as_an_alarm_event(tmp_path: Path) -> None:
    box = await AsyncOutbox.open(tmp_path / "outbox.db")
    topics = Topics("edgegate/v1", "HAK-CBZ", "G01")
    event_id = await Alarms(box, topics).raise_alarm(
        AlarmKind.WHITELIST_REJECTED, "warning", "bad_signature: snapshot seq 9"
    )
    [row] = await box.pending(10)
    payload = json.loads(row.payload)
    assert row.topic == "edgegate/v1/HAK-CBZ/G01/alarm"
    assert payload["event_id"] == event_id == row.event_id
    assert (payload["kind"], payload["severity"]) == ("whitelist_rejected", "warning")
    assert payload["detail"] == "bad_signature: snapshot seq 9"
    assert payload["at"].endswith("Z")
    await box.close()


TOPICS = Topics("edgegate/v1", "HAK-CBZ", "G01")


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def bounded(tmp_path: Path, clock: Clock, max_rows: int = 100, max_age_s: float = 3600) -> Outbox:
    return Outbox.open(
        tmp_path / "outbox.db",
        clock,
        limits=OutboxLimits(max_rows=max_rows, max_age_s=max_age_s),
        overflow_event=overflow_alarm(TOPICS, wall=clock),
    )


def decision(box: Outbox, n: int) -> int:
    return box.append(TOPICS.decision, f"e{n}", lambda seq: b'{"seq":%d}' % seq, counter="decision")


def test_past_max_rows_the_oldest_go_together_with_an_alarm_naming_them(tmp_path: Path) -> None:
    box = bounded(tmp_path, Clock(), max_rows=100)
    for n in range(100):
        decision(box, n)
    assert box.stats().depth == 100
    assert box.stats().dropped == 0

    decision(box, 100)

    rows = box.pending(1000)
    # 1 row over the limit, 1 for the alarm, 1 % headroom: the three oldest decisions go.
    assert [r.event_id for r in rows[:2]] == ["e3", "e4"]
    alarm = json.loads(rows[-1].payload)
    assert rows[-1].topic == TOPICS.alarm
    assert (alarm["kind"], alarm["severity"]) == ("outbox_overflow", "critical")
    assert alarm["dropped"]["reason"] == "max_rows"
    assert alarm["dropped"]["count"] == 3
    assert alarm["dropped"]["ranges"] == [
        {"counter": "decision", "first": 1, "last": 3, "count": 3}
    ]
    assert (alarm["dropped"]["first_event_id"], alarm["dropped"]["last_event_id"]) == ("e0", "e2")
    assert "decision seq 1-3 (3)" in alarm["detail"]
    assert box.stats().depth == len(rows) == 99
    assert box.stats().dropped == 3
    assert box.counter("alarm") == 1


def test_a_later_overflow_names_an_earlier_overflow_alarm_it_drops(tmp_path: Path) -> None:
    box = bounded(tmp_path, Clock(), max_rows=100)
    n = 0
    while box.counter("alarm") < 2:
        decision(box, n)
        n += 1
        assert box.stats().depth <= 100
    alarms = [json.loads(r.payload) for r in box.pending(1000) if r.topic == TOPICS.alarm]
    # Both alarms still there: the first was newer than anything the second dropped.
    assert [a["dropped"]["count"] for a in alarms] == [3, 3]
    assert alarms[1]["dropped"]["ranges"] == [
        {"counter": "decision", "first": 4, "last": 6, "count": 3}
    ]


def test_rows_older_than_max_age_are_dropped_with_an_alarm_even_without_appends(
    tmp_path: Path,
) -> None:
    clock = Clock()
    box = bounded(tmp_path, clock, max_age_s=3600)
    for n in range(3):
        decision(box, n)
        clock.now += 1
    clock.now += 1800
    decision(box, 3)
    clock.now += 1800  # the first three are now older than an hour, the fourth is not

    expired = box.expire()

    assert expired.dropped is not None
    assert (expired.dropped.reason, expired.dropped.count) == ("max_age", 3)
    rows = box.pending(10)
    assert [r.event_id for r in rows] == ["e3", expired.alarm_event_id]
    alarm = json.loads(rows[1].payload)
    assert alarm["dropped"]["oldest_created_at"] < alarm["dropped"]["newest_created_at"]
    assert box.expire().dropped is None


def test_a_failed_append_drops_nothing_and_burns_no_seq(tmp_path: Path) -> None:
    box = bounded(tmp_path, Clock(), max_rows=100)
    for n in range(100):
        decision(box, n)

    def broken(seq: int) -> bytes:
        raise ValueError("cannot serialise")

    with pytest.raises(ValueError, match="cannot serialise"):
        box.append_all(
            [
                NewEvent(TOPICS.decision, "ok", lambda s: b"x", "decision"),
                NewEvent(TOPICS.decision, "bad", broken, "decision"),
            ]
        )
    assert box.stats().depth == 100
    assert box.stats().dropped == 0
    assert box.counter("decision") == 100
    assert box.counter("alarm") == 0


def test_append_all_stores_companions_in_one_transaction_with_their_own_counters(
    tmp_path: Path,
) -> None:
    box = Outbox.open(tmp_path / "outbox.db")
    appended = box.append_all(
        [
            NewEvent("t/decision", "d1", lambda s: b"d%d" % s, "decision"),
            NewEvent("t/epcis", "x1", lambda s: b"x%d" % s, "epcis"),
        ]
    )
    assert appended.seqs == (1, 1)
    assert [(r.topic, r.payload) for r in box.pending(10)] == [
        ("t/decision", b"d1"),
        ("t/epcis", b"x1"),
    ]


def test_app_acks_keep_rows_until_the_back_office_names_them(tmp_path: Path) -> None:
    clock = Clock()
    box = Outbox.open(tmp_path / "outbox.db", clock)
    for n in range(3):
        decision(box, n)
    rows = box.pending(10)
    box.mark_sent([r.id for r in rows])
    assert box.pending(10) == []
    assert box.stats().awaiting_ack == 3
    assert box.overdue(sent_before=clock.now, limit=10) == []

    assert box.acknowledge(["e0", "e2", "never-stored"]) == 2

    assert box.stats().depth == 1
    clock.now += 60
    assert [r.event_id for r in box.overdue(sent_before=clock.now - 30, limit=10)] == ["e1"]
    box.unsend_all()
    assert [r.event_id for r in box.pending(10)] == ["e1"]
    assert box.stats().awaiting_ack == 0


def test_the_kept_depth_matches_the_table_through_every_way_out(tmp_path: Path) -> None:
    clock = Clock()
    box = bounded(tmp_path, clock, max_rows=100, max_age_s=3600)
    for n in range(150):
        decision(box, n)
    box.retire([r.id for r in box.pending(7)])
    box.acknowledge(["e140", "e141"])
    clock.now += 7200
    decision(box, 999)
    counted = box._db.execute("SELECT count(*) FROM outbox").fetchone()[0]
    assert box.stats().depth == counted
    box.close()
    assert bounded(tmp_path, clock).stats().depth == counted


def test_an_outbox_written_by_the_first_release_opens_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,
            topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL,
            created_at REAL NOT NULL);
        CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO outbox(event_id, topic, payload, qos, created_at)
            VALUES ('old', 't/decision', x'7b7d', 1, 1.0);
        INSERT INTO counters VALUES ('decision', 41);
        """
    )
    old.commit()
    old.close()

    box = Outbox.open(path, Clock(), limits=OutboxLimits(max_rows=100, max_age_s=1e12))

    assert [r.event_id for r in box.pending(10)] == ["old"]
    assert box.append("t/decision", "new", lambda s: b"%d" % s, counter="decision") == 42
    assert box.stats().depth == 2


def test_bookkeeping_after_delivery_leaves_the_outbox_fully_synchronous(tmp_path: Path) -> None:
    box = Outbox.open(tmp_path / "outbox.db")
    decision(box, 1)
    decision(box, 2)
    [first, second] = box.pending(10)
    box.retire([first.id])
    box.mark_sent([second.id])
    box.acknowledge(["e2"])
    assert box._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again
    assert box.stats().depth == 0


# ------------------------------------------------------------------ group commit and the tail


def event(n: int, payload: bytes | None = None) -> NewEvent:
    body = payload if payload is not None else b"p%d" % n
    return NewEvent(TOPICS.decision, f"e{n}", lambda _seq: body, "decision")


def test_groups_commit_together_yet_fail_alone_and_burn_no_seq(tmp_path: Path) -> None:
    box = Outbox.open(tmp_path / "outbox.db")

    def broken(seq: int) -> bytes:
        raise ValueError("cannot serialise")

    outcomes = box.append_groups(
        [
            [event(1)],
            [event(2), NewEvent(TOPICS.decision, "bad", broken, "decision")],
            [event(3), NewEvent("t/epcis", "x3", lambda s: b"x", "epcis")],
        ]
    )

    first, failed, third = outcomes
    assert isinstance(failed, ValueError)
    assert isinstance(first, Appended)
    assert isinstance(third, Appended)
    # The failed group took no number: the next group has the seq it would have had.
    assert (first.seqs, third.seqs) == ((1,), (2, 1))
    assert [r.event_id for r in box.pending(10)] == ["e1", "e3", "x3"]
    assert box.stats().depth == 3
    assert (box.counter("decision"), box.counter("epcis")) == (2, 1)


def test_a_taken_event_id_fails_only_its_own_group(tmp_path: Path) -> None:
    box = Outbox.open(tmp_path / "outbox.db")
    box.append_all([event(1)])

    outcomes = box.append_groups([[event(2)], [event(3), event(1)], [event(4)]])

    assert isinstance(outcomes[1], sqlite3.IntegrityError)
    assert [o.seqs for o in outcomes if isinstance(o, Appended)] == [(2,), (3,)]
    assert [r.event_id for r in box.pending(10)] == ["e1", "e2", "e4"]
    assert box.counter("decision") == 3


def test_every_group_failing_commits_nothing(tmp_path: Path) -> None:
    box = Outbox.open(tmp_path / "outbox.db")
    box.append_all([event(1)])
    outcomes = box.append_groups([[event(1)], [event(1)]])
    assert all(isinstance(o, sqlite3.IntegrityError) for o in outcomes)
    assert box.stats().depth == 1
    assert box.counter("decision") == 1


def test_ids_keep_growing_after_the_newest_rows_are_gone_and_the_file_reopened(
    tmp_path: Path,
) -> None:
    box = Outbox.open(tmp_path / "outbox.db")
    box.append_all([event(1), event(2)])
    box.retire([r.id for r in box.pending(10)])
    box.close()
    box = Outbox.open(tmp_path / "outbox.db")
    box.append_all([event(3)])
    # A reused id would sit behind a publisher's cursor and wait for the next connect.
    assert [r.id for r in box.pending(10)] == [3]


async def test_appends_made_while_a_commit_is_in_flight_share_the_next_commit(
    tmp_path: Path,
) -> None:
    box = await AsyncOutbox.open(tmp_path / "outbox.db")
    commits: list[int] = []
    inner = box._outbox.append_groups

    def counting(groups: Sequence[Sequence[NewEvent]]) -> list[Appended | Exception]:
        commits.append(len(groups))
        return inner(groups)

    box._outbox.append_groups = counting  # type: ignore[method-assign]
    await box.append_all([event(0)])
    # Hold the outbox thread as a long fsync would, while 50 producers append.
    busy = threading.Event()
    box._thread.submit(busy.wait)

    appends = [asyncio.ensure_future(box.append_all([event(n)])) for n in range(1, 51)]
    await asyncio.sleep(0.05)
    assert not any(a.done() for a in appends)  # each waits for its own commit
    busy.set()
    appended = await asyncio.gather(*appends)

    assert [a.seqs[0] for a in appended] == list(range(2, 52))
    assert commits == [1, 50]
    assert (await box.stats()).depth == 51
    await box.close()


async def test_a_failing_append_in_a_group_commit_fails_only_its_caller(tmp_path: Path) -> None:
    box = await AsyncOutbox.open(tmp_path / "outbox.db")
    await box.append_all([event(0)])

    results = await asyncio.gather(
        box.append_all([event(1)]),
        box.append_all([event(0)]),  # taken
        box.append_all([event(2)]),
        return_exceptions=True,
    )

    assert isinstance(results[1], sqlite3.IntegrityError)
    assert [r.seqs for r in results if isinstance(r, Appended)] == [(2,), (3,)]
    await box.close()


async def test_a_cancelled_append_is_still_committed_and_announced(tmp_path: Path) -> None:
    box = await AsyncOutbox.open(tmp_path / "outbox.db")
    assert not box.appended.is_set()
    task = asyncio.create_task(box.append_all([event(1)]))
    await asyncio.sleep(0)  # the append is queued and its commit started
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The commit was queued before the probe, and announced before the probe's answer.
    await box.probe()
    assert [r.event_id for r in await box.pending(10)] == ["e1"]
    assert box.appended.is_set()
    await box.close()


async def test_fresh_rows_come_from_memory_and_always_match_the_table(tmp_path: Path) -> None:
    box = await AsyncOutbox.open(tmp_path / "outbox.db")
    core = box._outbox

    async def both(after_id: int = 0) -> list[str]:
        fresh = core.fresh(100, after_id)
        table = [r.event_id for r in core.pending(100, after_id)]
        assert fresh is None or [r.event_id for r in fresh] == table
        return table

    for n in range(6):
        await box.append_all([event(n)])
    rows = await box.pending(100)
    assert core.fresh(100, 0) is not None  # an empty outbox at open: all of it is fresh
    assert await both() == ["e0", "e1", "e2", "e3", "e4", "e5"]
    await box.retire([rows[0].id, rows[2].id])
    assert await both() == ["e1", "e3", "e4", "e5"]
    await box.mark_sent([rows[3].id])
    assert await both() == ["e1", "e4", "e5"]
    assert await both(after_id=rows[4].id) == ["e5"]
    # The reader moved past e1 and e4: for it, only the table still knows them.
    assert core.fresh(100, 0) is None
    assert await both() == ["e1", "e4", "e5"]
    await box.unsend_all()
    assert await both() == ["e1", "e3", "e4", "e5"]
    assert await box.acknowledge(["e4"]) == 1
    await box.append_all([event(9)])
    assert await both(after_id=rows[5].id) == ["e9"]
    assert await both() == ["e1", "e3", "e5", "e9"]
    await box.close()


async def test_rows_from_before_the_process_are_read_from_the_table(tmp_path: Path) -> None:
    box = Outbox.open(tmp_path / "outbox.db")
    box.append_all([event(1)])
    box.close()
    reopened = await AsyncOutbox.open(tmp_path / "outbox.db")
    await reopened.append_all([event(2)])
    assert reopened._outbox.fresh(10, 0) is None
    [old, new] = await reopened.pending(10)
    assert (old.event_id, new.event_id) == ("e1", "e2")
    assert [r.event_id for r in await reopened.pending(10, after_id=old.id)] == ["e2"]
    assert reopened._outbox.fresh(10, old.id) is not None
    await reopened.close()


def test_a_drop_empties_the_tail_so_no_dropped_row_is_taken(tmp_path: Path) -> None:
    box = bounded(tmp_path, Clock(), max_rows=10)
    for n in range(10):
        decision(box, n)
    assert [r.event_id for r in box.fresh(100, 0) or []][:1] == ["e0"]
    decision(box, 10)
    assert box.fresh(100, 0) is None
    table = box.pending(100)
    assert "e0" not in [r.event_id for r in table]
    assert table[-1].topic == TOPICS.alarm
    after = table[-1].id
    decision(box, 11)
    assert [r.event_id for r in box.fresh(100, after) or []] == ["e11"]


def test_past_its_memory_bound_the_tail_sends_readers_to_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("edgegate.mqtt.outbox.TAIL_MAX_BYTES", 1000)
    box = Outbox.open(tmp_path / "outbox.db")
    box.append_all([event(1, b"x" * 600)])
    assert box.fresh(10, 0) is not None
    box.append_all([event(2, b"x" * 600)])
    assert box.fresh(10, 0) is None
    assert [r.event_id for r in box.pending(10)] == ["e1", "e2"]
    box.append_all([event(3, b"x" * 600)])
    assert [r.event_id for r in box.fresh(10, box.pending(10)[1].id) or []] == ["e3"]
