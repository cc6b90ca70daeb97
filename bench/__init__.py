"""Benchmarks: one script per topic, run as ``python -m bench.<name>``.

Each prints a table, writes ``bench/results/<name>.json`` and measures, in the same run, the
ceiling it is compared against (a bare client, raw SQLite, the serial line rate).
"""
