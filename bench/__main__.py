"""``python -m bench NAME [ARGS…]``: run one benchmark; without a name, list them.

Each benchmark is a module of this package with a ``main(argv)``; its arguments follow the
name (e.g. ``python -m bench whitelist --items 100000``).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def available() -> list[str]:
    return sorted(
        info.name
        for info in pkgutil.iter_modules([str(Path(__file__).parent)])
        if not info.name.startswith("_")
    )


def main(argv: list[str]) -> int:
    names = available()
    if not argv or argv[0] not in names:
        print("usage: python -m bench NAME [ARGS...]   (NAME: " + ", ".join(names) + ")")
        for name in names:
            doc = (importlib.import_module(f"bench.{name}").__doc__ or "").strip()
            print(f"  {name:10} {doc.splitlines()[0] if doc else ''}")
        return 0 if not argv else 2
    module = importlib.import_module(f"bench.{argv[0]}")
    result: int | None = module.main(argv[1:]) if _takes_argv(module) else module.main()
    return result or 0


def _takes_argv(module: object) -> bool:
    main = module.main
    return bool(main.__code__.co_argcount)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
