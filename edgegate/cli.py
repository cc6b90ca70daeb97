"""The ``edgegate`` command line — contract, DESIGN.md §5. Argument parsing only.

Owns the subcommands, their arguments and exit codes; the work is done by app, demo and
whitelist.admin. Invariants: a user error (bad file, bad config, bad bundle) is one line on
stderr starting with ``edgegate:`` and a non-zero exit — never a traceback; ``check-config``
exits 2 on any error; secrets are never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from edgegate import __version__
from edgegate.config import Config, ConfigError, default_config_path, load_config, render_effective
from edgegate.whitelist.admin import AdminError
from edgegate.whitelist.bundle import TrustedKeys

EXIT_USAGE = 2


class UserError(Exception):
    """A problem the user can fix; printed as one line, exit code attached."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _config_path(args: argparse.Namespace) -> Path:
    return Path(args.config) if args.config else default_config_path()


def _config(args: argparse.Namespace) -> Config:
    try:
        return load_config(_config_path(args))
    except ConfigError as exc:
        raise UserError(str(exc), EXIT_USAGE) from None


def cmd_run(args: argparse.Namespace) -> int:
    from edgegate.app import serve
    from edgegate.devices.factory import UnsupportedDeviceError
    from edgegate.logs import configure_logging

    config = _config(args)
    configure_logging(config.log.level)
    try:
        asyncio.run(serve(config, _config_path(args)))
    except (UnsupportedDeviceError, ConfigError) as exc:
        # ConfigError here: a file the config names (password, TLS keys) is unusable.
        raise UserError(str(exc), EXIT_USAGE) from None
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(Path(args.path))
    except ConfigError as exc:
        raise UserError(str(exc), EXIT_USAGE) from None
    print(render_effective(config))
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from edgegate.watch import run_watch

    try:
        return run_watch(_config(args), duration_s=args.duration)
    except ConfigError as exc:
        raise UserError(str(exc), EXIT_USAGE) from None


def cmd_demo(args: argparse.Namespace) -> int:
    from edgegate.demo import run_demo

    return run_demo(passages=args.passages, keep_state=args.state_dir)


def cmd_whitelist_keygen(args: argparse.Namespace) -> int:
    from edgegate.whitelist import admin

    print(admin.keygen(Path(args.out)))
    return 0


def cmd_whitelist_sign(args: argparse.Namespace) -> int:
    from edgegate.whitelist import admin

    bundle = admin.sign(Path(args.body), Path(args.key))
    if args.output:
        Path(args.output).write_bytes(bundle)
    else:
        sys.stdout.buffer.write(bundle)
    return 0


def _trusted_keys(args: argparse.Namespace) -> TrustedKeys:
    from edgegate.whitelist import admin

    if args.key:
        files = [admin.keys_from_file(Path(path)) for path in args.key]
        return TrustedKeys({kid: key for keys in files for kid, key in keys.by_id.items()})
    return admin.keys_from_config(_config(args).whitelist)


def cmd_whitelist_verify(args: argparse.Namespace) -> int:
    from edgegate.whitelist import admin

    print(admin.verify(Path(args.bundle), _trusted_keys(args)))
    return 0


def cmd_whitelist_import(args: argparse.Namespace) -> int:
    from edgegate.whitelist import admin

    config = _config(args)
    show_progress = args.progress or (args.progress is None and sys.stderr.isatty())
    print(
        admin.import_bundle(
            Path(args.bundle),
            admin.keys_from_config(config.whitelist),
            site=config.gate.site,
            state_dir=config.storage.state_dir,
            progress=admin.TerminalProgress(sys.stderr) if show_progress else None,
        )
    )
    return 0


def cmd_whitelist_stats(args: argparse.Namespace) -> int:
    from edgegate.whitelist import admin

    config = _config(args)
    print(admin.stats(config.whitelist, config.storage.state_dir))
    return 0


def cmd_whitelist_reindex(args: argparse.Namespace) -> int:
    from edgegate.whitelist import admin

    print(admin.reindex(_config(args).storage.state_dir))
    return 0


def cmd_whitelist_show(args: argparse.Namespace) -> int:
    from edgegate.whitelist import admin

    record = admin.show(args.epc, _config(args).storage.state_dir)
    if record is None:
        print(f"edgegate: {args.epc.upper()} is not in the whitelist", file=sys.stderr)
        return 1
    print(record)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgegate", description="Customs smart-gate edge daemon.")
    parser.add_argument("--version", action="version", version=f"edgegate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str,
        handler: Callable[[argparse.Namespace], int],
        help_text: str,
        parent: argparse._SubParsersAction[argparse.ArgumentParser] = sub,
    ) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    config_help = "config file (default: $EDGEGATE_CONFIG, else /etc/edgegate/edgegate.toml)"

    run = command("run", cmd_run, "run the daemon")
    run.add_argument("--config", help=config_help)

    watch = command(
        "watch", cmd_watch, "live terminal view of a gate: decisions, holds, readers, outbox"
    )
    watch.add_argument("--config", help=config_help)
    watch.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="S",
        help="stop after S seconds (default: until Ctrl-C)",
    )

    check = command(
        "check-config",
        cmd_check_config,
        "validate a config and print the effective values (secrets masked)",
    )
    check.add_argument("path")

    demo = command(
        "demo", cmd_demo, "simulated reader + broker + daemon, with live decisions on screen"
    )
    demo.add_argument(
        "--passages",
        type=int,
        default=0,
        help="stop after this many passages (default: run the script once)",
    )
    demo.add_argument("--state-dir", default=None, help="keep the demo state here")

    whitelist = sub.add_parser("whitelist", help="signed whitelist bundles and the local store")
    wl = whitelist.add_subparsers(dest="whitelist_command", required=True, metavar="ACTION")

    keygen = command(
        "keygen", cmd_whitelist_keygen, "write an Ed25519 key pair OUT.key / OUT.pub", wl
    )
    keygen.add_argument("out")

    sign = command("sign", cmd_whitelist_sign, "sign a bundle body", wl)
    sign.add_argument("body")
    sign.add_argument("--key", required=True, help="private key file (from keygen)")
    sign.add_argument("-o", "--output", help="write the bundle here instead of stdout")

    verify = command("verify", cmd_whitelist_verify, "verify a bundle's signature and format", wl)
    verify.add_argument("bundle")
    verify.add_argument("--key", action="append", help="trusted public key file (repeatable)")
    verify.add_argument("--config", help=config_help)

    imp = command("import", cmd_whitelist_import, "verify a bundle and apply it to the store", wl)
    imp.add_argument("bundle")
    imp.add_argument("--config", help=config_help)
    imp.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show progress on stderr (default: when stderr is a terminal)",
    )

    show = command("show", cmd_whitelist_show, "print the item record the gate would use", wl)
    show.add_argument("epc")
    show.add_argument("--config", help=config_help)

    stats = command(
        "stats",
        cmd_whitelist_stats,
        "seq, issued_at, age, and counts per record type and item status",
        wl,
    )
    stats.add_argument("--config", help=config_help)

    reindex = command(
        "reindex",
        cmd_whitelist_reindex,
        "rebuild the item index from the store (after an upgrade, or to fold in many deltas)",
        wl,
    )
    reindex.add_argument("--config", help=config_help)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except UserError as exc:
        print(f"edgegate: {exc}", file=sys.stderr)
        return exc.code
    except AdminError as exc:
        print(f"edgegate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
