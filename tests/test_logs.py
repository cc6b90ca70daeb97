"""Log lines carry their syslog priority as ``<N>`` exactly when stdout is the journal."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest
import structlog

from edgegate.logs import configure_logging, is_journal, syslog_priority


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def journal_stream(stream: TextIO) -> str:
    """What systemd puts in $JOURNAL_STREAM for a stream connected to the journal."""
    stat = os.fstat(stream.fileno())
    return f"{stat.st_dev}:{stat.st_ino}"


def emit_every_level() -> None:
    log = structlog.get_logger("edgegate.test")
    log.debug("reader.frame", reader="rfid-1")
    log.info("passage.decided", seq=7)
    log.warning("reader.down", reader="rfid-1")
    log.error("alarm", kind="outbox_overflow")
    logging.getLogger("aiomqtt").critical("connection lost")


def test_under_journald_each_line_starts_with_the_priority_of_its_level(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (tmp_path / "journal").open("w+", encoding="utf-8") as out:
        monkeypatch.setenv("JOURNAL_STREAM", journal_stream(out))
        configure_logging("debug", stream=out)
        emit_every_level()
        out.seek(0)
        lines = out.read().splitlines()
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>", "<2>"]
    events = [json.loads(line[3:])["event"] for line in lines]
    assert events == ["reader.frame", "passage.decided", "reader.down", "alarm", "connection lost"]


def test_a_stream_that_is_not_the_journal_gets_no_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (tmp_path / "journal").open("w") as journal, (tmp_path / "file").open("w+") as out:
        # Inside a unit but redirected to a file: $JOURNAL_STREAM names another stream.
        monkeypatch.setenv("JOURNAL_STREAM", journal_stream(journal))
        configure_logging("info", stream=out)
        structlog.get_logger("edgegate.test").warning("reader.down")
        out.seek(0)
        line = out.read().strip()
    assert json.loads(line)["event"] == "reader.down"


@pytest.mark.parametrize("value", ["", "garbage", "12:", ":34", "1:2:3"])
def test_a_missing_or_malformed_journal_stream_is_not_the_journal(
    tmp_path: Path, value: str
) -> None:
    with (tmp_path / "out").open("w") as out:
        assert not is_journal(out, {"JOURNAL_STREAM": value})


@pytest.mark.parametrize(
    ("levelno", "priority"),
    [(logging.DEBUG, 7), (logging.INFO, 6), (25, 6), (logging.WARNING, 4), (45, 3), (60, 2)],
)
def test_levels_between_the_named_ones_take_the_priority_below(levelno: int, priority: int) -> None:
    assert syslog_priority(levelno) == priority
