"""The gate's own memory of what has left through it (DESIGN.md §8, CLONED_TAG).

Owns ``history.db`` in the state directory: the EPCs that passed OUT through this gate and
have not come back IN. An EPC in it that appears going out again is a clone of a tag that
is already outside. SQLite (WAL) so that it survives restarts; used from one worker thread.

Invariants: only a ``pass`` changes the history (a held item did not leave); OUT adds the
passage's item EPCs, IN removes them; the table is bounded by ``max_rows`` (oldest first).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self

_CHUNK = 500


class DepartureHistory:
    def __init__(self, db: sqlite3.Connection, max_rows: int) -> None:
        self._db = db
        self._max_rows = max_rows
        # Rows in ``departed``, counted once on the first departure (not at start-up).
        self._rows: int | None = None

    @classmethod
    def open(cls, state_dir: Path, max_rows: int = 5_000_000) -> Self:
        db = sqlite3.connect(
            state_dir / "history.db", isolation_level=None, check_same_thread=False
        )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS departed (epc TEXT PRIMARY KEY, at REAL NOT NULL)"
            " WITHOUT ROWID"
        )
        db.execute("CREATE INDEX IF NOT EXISTS departed_at ON departed(at)")
        return cls(db, max_rows)

    def close(self) -> None:
        self._db.close()

    def departed_among(self, epcs: Iterable[str]) -> frozenset[str]:
        wanted = list(dict.fromkeys(epcs))
        found: set[str] = set()
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(f"SELECT epc FROM departed WHERE epc IN ({marks})", chunk)
            found.update(row[0] for row in rows)
        return frozenset(found)

    def leave(self, epcs: Iterable[str], *, already: frozenset[str]) -> None:
        """A passed passage's goods went out. ``already`` is what :meth:`departed_among` said
        of them when the passage was looked up (the decision path is this history's only
        writer, so it still holds): the rows added are exactly the others, which keeps the
        row count without counting the table each time."""
        wanted = list(dict.fromkeys(epcs))
        if not wanted:
            return
        with self._transaction() as db:
            now = time.time()
            db.executemany(
                "INSERT OR REPLACE INTO departed(epc, at) VALUES (?, ?)",
                [(epc, now) for epc in wanted],
            )
            if self._rows is None:
                rows = int(db.execute("SELECT count(*) FROM departed").fetchone()[0])
            else:
                rows = self._rows + sum(1 for epc in wanted if epc not in already)
            if rows > self._max_rows:
                # Oldest first, through the index on ``at``: the cost is the excess only.
                db.execute(
                    "DELETE FROM departed WHERE epc IN"
                    " (SELECT epc FROM departed ORDER BY at LIMIT ?)",
                    (rows - self._max_rows,),
                )
                rows = self._max_rows
        self._rows = rows

    def come_back(self, epcs: Iterable[str]) -> None:
        """A passed passage's goods came in: forget those that had left.

        Goods coming in have rarely left through this gate: a read finds the few that did,
        so that most inbound passages write nothing (a thousand-row delete held the GIL for
        ~4 ms while the gate was being driven)."""
        held = sorted(self.departed_among(epcs))
        if not held:
            return
        with self._transaction() as db:
            db.executemany("DELETE FROM departed WHERE epc = ?", [(epc,) for epc in held])
        if self._rows is not None:
            self._rows -= len(held)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            self._rows = None
            raise
        db.execute("COMMIT")
