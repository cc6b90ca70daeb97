"""The signed customs whitelist (DESIGN.md §7): bundle format, local store, admin commands.

- ``errors``  — :class:`BundleError` and the reasons a bundle is refused;
- ``records`` — record value types and the JSON contract of one record line;
- ``bundle``  — keys, signing, and verification of a bundle before anything is parsed;
- ``store``   — the SQLite whitelist the gate looks items, passes and vehicles up in;
- ``admin``   — what ``edgegate whitelist keygen|sign|verify|import|show`` do.
"""
