"""Logging setup: structlog JSON lines for journald, a readable console renderer on a tty.

Owns the process-wide logging configuration. Invariant: every log record is one line (JSON
when stdout is not a terminal), carries ``level`` and ``timestamp``, and the standard
library's loggers (aiomqtt, pymodbus) are routed through the same renderer so that nothing
prints in a second format.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(
    level: str = "info", stream: TextIO | None = None, json_lines: bool | None = None
) -> None:
    """Configure structlog and stdlib logging once for the process.

    ``json_lines`` defaults to "stdout is not a tty" — under systemd stdout is the journal.
    """
    out = stream if stream is not None else sys.stdout
    as_json = (not out.isatty()) if json_lines is None else json_lines
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
        structlog.stdlib.ProcessorFormatter(
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
