"""Sans-I/O device codecs: bytes in, events out, bytes back (DESIGN.md §3)."""
