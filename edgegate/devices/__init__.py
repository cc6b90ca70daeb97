"""Async device sessions: open a link, pump bytes through a codec, emit observations."""
