"""``python -m bench``: run every benchmark, then write the one report.

- ``python -m bench``            every benchmark at full size (about 25 minutes on 2 cores:
                                  the 10M-item whitelist, the 5-minute load test and the
                                  10-minute soak dominate), then ``report``;
- ``python -m bench --quick``    the same at smoke size (a few minutes; figures not for quoting);
- ``python -m bench NAME [ARGS]`` one benchmark (``--list`` names them), e.g.
                                  ``python -m bench whitelist --items 100000``;
- ``python -m bench report``     rebuild bench/results.json and docs/benchmarks.md from the
                                  result files already written.

Each benchmark runs as its own process, one after another, so none measures while another
loads the machine and each one's memory figures are its own. A benchmark that fails is
reported and the others still run; the exit status says whether all of them succeeded.
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

# The order matters: the decision benchmark extends the whitelist benchmark's store.
PLAN: Sequence[tuple[str, Sequence[str], Sequence[str]]] = (
    # (name, full-size arguments, quick arguments); {work} is a scratch directory
    ("codecs", (), ()),
    (
        "whitelist",
        ("--workdir", "{work}/whitelist"),
        ("--items", "200000", "--workdir", "{work}/whitelist"),
    ),
    (
        "decide",
        ("--store-from", "{work}/whitelist/state"),
        ("--store-from", "{work}/whitelist/state", "--rounds", "20"),
    ),
    ("outbox", (), ("--quick",)),
    ("load", (), ("--duration-s", "20")),
    ("soak", (), ("--duration-s", "40")),
    ("reliability", (), ("--quick",)),
)


def available() -> list[str]:
    return sorted(
        info.name
        for info in pkgutil.iter_modules([str(Path(__file__).parent)])
        if not info.name.startswith("_")
    )


def run_all(quick: bool) -> int:
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="edgegate-bench-") as work:
        for name, full, smoke in PLAN:
            args = [a.format(work=work) for a in (smoke if quick else full)]
            print(f"\n=== {name} {' '.join(args)}", flush=True)
            started = time.monotonic()
            result = subprocess.run([sys.executable, "-m", "bench", name, *args], check=False)
            took = time.monotonic() - started
            print(f"=== {name}: exit {result.returncode} after {took:.0f} s", flush=True)
            if result.returncode != 0:
                failed.append(name)
    print("\n=== report", flush=True)
    report = importlib.import_module("bench.report")
    report.main([])
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    names = available()
    if not argv or argv == ["--quick"]:
        return run_all(quick=bool(argv))
    if argv[0] not in names:
        print("usage: python -m bench [--quick] | NAME [ARGS...] | --list")
        for name in names:
            doc = (importlib.import_module(f"bench.{name}").__doc__ or "").strip()
            print(f"  {name:12} {doc.splitlines()[0] if doc else ''}")
        return 0 if argv == ["--list"] else 2
    module = importlib.import_module(f"bench.{argv[0]}")
    result: int | None = module.main(argv[1:])
    return result or 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
