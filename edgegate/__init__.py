"""edgegate — the customs smart-gate edge daemon (see DESIGN.md and docs/architecture.md)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edgegate")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+src"
