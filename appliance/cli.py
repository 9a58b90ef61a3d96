"""The `appliance` command line: a thin dispatcher.

Each stage registers its own sub-commands from ``appliance/_cli/<stage>.py``
(a ``register(subparsers)`` function that sets ``func`` on its parsers); the
work itself lives in the stage modules. Errors derived from
:class:`appliance.errors.ApplianceError` are printed on one line and mapped to
their documented exit codes (README, "Exit codes").
"""

from __future__ import annotations

import argparse
import importlib
import sys

from appliance import __version__
from appliance.errors import ApplianceError

# Stage command modules, in the order of the flow.
_STAGES = ("demo", "bundle", "verify", "install", "harness", "export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="appliance",
        description="Offline bundle, installer and agent runtime for LLM agents on air-gapped boxes.",
    )
    parser.add_argument("--version", action="version", version=f"appliance {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for stage in _STAGES:
        try:
            module = importlib.import_module(f"appliance._cli.{stage}")
        except ModuleNotFoundError as exc:  # a stage not built yet
            if exc.name != f"appliance._cli.{stage}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except ApplianceError as exc:
        print(f"appliance: error: {exc}", file=sys.stderr)
        for path, reason in getattr(exc, "problems", [])[:50]:
            print(f"  {path}: {reason}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("appliance: interrupted", file=sys.stderr)
        return 130
