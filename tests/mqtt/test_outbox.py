"""The durable outbox on a real SQLite file."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from edgegate.mqtt.alarms import AlarmKind, Alarms
from edgegate.mqtt.outbox import AsyncOutbox, Outbox
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
