"""How old the whitelist is, and whether that makes it stale (DESIGN.md §6 ``max_age_s``).

Owns the staleness rule, in one place for everyone who needs it: the decisions
(``WHITELIST_STALE`` under ``stale_policy = "hold"``), the ``whitelist_stale`` alarm, health
and ``whitelist stats``. Pure: the caller passes the instant; no clock, no I/O.

Invariants:
- age is measured from the ``issued_at`` of the last applied bundle (when the back office
  vouched for it), not from when this gate applied it;
- no whitelist at all is stale (fail closed);
- an ``issued_at`` ahead of the gate's clock (clock skew) is age 0, not a negative age, and
  not fresher than fresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Freshness:
    age_s: float | None  # None: no whitelist loaded
    stale: bool


def freshness(issued_at: datetime | None, now: datetime, max_age_s: float) -> Freshness:
    if issued_at is None:
        return Freshness(age_s=None, stale=True)
    age_s = max(0.0, (now - issued_at).total_seconds())
    return Freshness(age_s=age_s, stale=age_s > max_age_s)


def format_age(age_s: float | None) -> str:
    """``3d 4h``, ``2h 5m``, ``4m 10s``, ``12s``; ``-`` for no whitelist."""
    if age_s is None:
        return "-"
    seconds = int(age_s)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"
