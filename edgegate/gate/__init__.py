"""The pure gate domain: observations, passages, rules and decisions (no I/O, no clock)."""
