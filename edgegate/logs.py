"""Logging setup: structlog JSON lines for journald, a readable console renderer on a tty.

Owns the process-wide logging configuration. Invariants: every log record is one line (JSON
when stdout is not a terminal), carries ``level`` and ``timestamp``, and the standard
library's loggers (aiomqtt, pymodbus) are routed through the same renderer so that nothing
prints in a second format. When stdout is the journal, every line starts with its syslog
priority as ``<N>`` (sd-daemon(3)): journald strips the prefix and records ``PRIORITY=N``,
so ``journalctl -p warning`` shows warnings and worse.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

# Python level -> syslog priority (sd-daemon(3) SD_* prefixes), checked from the top.
_SYSLOG_PRIORITIES = (
    (logging.CRITICAL, 2),
    (logging.ERROR, 3),
    (logging.WARNING, 4),
    (logging.INFO, 6),
)
_SYSLOG_DEBUG = 7


def syslog_priority(levelno: int) -> int:
    """The syslog priority journald records for a record of ``levelno``."""
    return next((prio for floor, prio in _SYSLOG_PRIORITIES if levelno >= floor), _SYSLOG_DEBUG)


def is_journal(stream: TextIO, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``stream`` is connected to journald.

    systemd sets ``$JOURNAL_STREAM`` to ``DEVICE:INODE`` of the stream it connected to the
    journal (systemd.exec(5)); comparing it with the stream's own identity keeps a
    redirected stdout (``edgegate run > file`` inside a unit) from being taken for it.
    """
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        stat = os.fstat(stream.fileno())
        return (stat.st_dev, stat.st_ino) == (int(device), int(inode))
    except (OSError, ValueError):  # no descriptor (io.UnsupportedOperation), or no variable
        return False


class _JournalFormatter(structlog.stdlib.ProcessorFormatter):
    """Prefixes every line with the record's ``<N>`` syslog priority."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def configure_logging(
    level: str = "info",
    stream: TextIO | None = None,
    json_lines: bool | None = None,
    journal: bool | None = None,
) -> None:
    """Configure structlog and stdlib logging for the process (again on a reload).

    ``json_lines`` defaults to "stdout is not a tty" — under systemd stdout is the journal;
    ``journal`` (the ``<N>`` priority prefix) defaults to :func:`is_journal`.
    """
    out = stream if stream is not None else sys.stdout
    as_json = (not out.isatty()) if json_lines is None else json_lines
    to_journal = is_journal(out) if journal is None else journal
    formatter = _JournalFormatter if to_journal else structlog.stdlib.ProcessorFormatter
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if as_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        formatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    # Chatty third-party loggers stay at warning unless we debug.
    for name in ("aiomqtt", "pymodbus", "asyncio"):
        logging.getLogger(name).setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
