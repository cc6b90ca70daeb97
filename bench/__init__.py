"""Benchmarks: one script per topic, run as ``python -m bench.<name>``.

Each prints a table, writes ``bench/results/<name>.json`` and measures, in the same run, the
ceiling it is compared against (a bare client, raw SQLite, the serial line rate).
"""

from datetime import UTC, datetime


def measured_at() -> str:
    """When a result was measured, for its JSON (``measured_at``): the report shows it.

    A file's modification time would say when it was last checked out instead.
    """
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
