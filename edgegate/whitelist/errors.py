"""Why a whitelist bundle was refused: one exception type, one machine-readable reason.

Owns :class:`BundleError` and the closed set of :class:`RejectReason` values. The bundle
parser raises the format and signature reasons; the store raises the ones that depend on the
state a bundle would be applied to (``wrong_site``, ``rollback``, ``gap``, ``duplicate``).

Invariants:
- ``reason`` values are part of what operators and the back office see (alarm details,
  counters); like reason codes, existing values never change, new ones may be added;
- ``message`` is one line fit for an operator: it never contains a newline or a traceback.
"""

from __future__ import annotations

from enum import StrEnum


class RejectReason(StrEnum):
    OVERSIZED = "oversized"
    BAD_GZIP = "bad_gzip"
    MALFORMED_SIGNATURE_LINE = "malformed_signature_line"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    MALFORMED_JSON = "malformed_json"
    BAD_HEADER = "bad_header"
    UNKNOWN_RECORD_TYPE = "unknown_record_type"
    MISSING_KEY_FIELD = "missing_key_field"
    BAD_FIELD = "bad_field"
    COUNT_MISMATCH = "count_mismatch"
    WRONG_SITE = "wrong_site"
    ROLLBACK = "rollback"
    GAP = "gap"
    DUPLICATE = "duplicate"
    # Not a fault of a bundle: a configured trusted key is malformed, so none can verify.
    BAD_TRUSTED_KEY = "bad_trusted_key"


class BundleError(Exception):
    """A bundle that must not be applied; the last good whitelist stays in force."""

    def __init__(self, reason: RejectReason, message: str) -> None:
        # Messages quote bundle content; a stray newline must not forge a second log line.
        one_line = " ".join(message.split())
        super().__init__(f"{reason}: {one_line}")
        self.reason = reason
        self.message = one_line
