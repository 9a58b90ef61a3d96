"""``appliance runs ls|show`` and ``appliance export``: read recorded runs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from appliance.errors import HarnessError


def register(subparsers: argparse._SubParsersAction) -> None:
    runs = subparsers.add_parser("runs", help="list or show recorded agent runs")
    runs_sub = runs.add_subparsers(dest="runs_command", metavar="ACTION", required=True)
    ls = runs_sub.add_parser("ls", help="list runs, oldest first")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=ls_command)
    show = runs_sub.add_parser("show", help="show one run's summary")
    show.add_argument("run", metavar="RUN", help="run id or unique prefix")
    show.set_defaults(func=show_command)
    export = subparsers.add_parser("export", help="export runs as tars (events, traces, summary, workspace diff)")
    export.add_argument("run", nargs="?", metavar="RUN")
    export.add_argument("--all", action="store_true", help="every run: OUT is a directory, or a .tar[.gz] file")
    export.add_argument("-o", "--output", required=True, type=Path, metavar="OUT")
    export.set_defaults(func=export_command)
    for parser in (ls, show, export):
        parser.add_argument("--runs-dir", help="runs root (default $APPLIANCE_RUNS_DIR or the user data dir)")


def ls_command(args: argparse.Namespace) -> int:
    from appliance.export import list_runs
    from appliance.harness.store import runs_root

    states = list_runs(runs_root(args.runs_dir))
    if args.json:
        print(json.dumps(states, indent=2))
    for s in [] if args.json else states:
        print(f"{s['run_id']}\t{s['status']}\titerations={s['iterations']}\t"
              f"tokens={s['input_tokens'] + s['output_tokens']}\t{s['elapsed_s']:.1f}s")
    return 0


def show_command(args: argparse.Namespace) -> int:
    from appliance.export import summarize
    from appliance.harness.store import find_run, runs_root

    print(json.dumps(summarize(find_run(runs_root(args.runs_dir), args.run)), indent=2))
    return 0


def export_command(args: argparse.Namespace) -> int:
    from appliance.export import export_all, export_run
    from appliance.harness.store import runs_root

    root = runs_root(args.runs_dir)
    if args.all == bool(args.run):
        raise HarnessError("give either RUN or --all")
    written = export_all(root, args.output) if args.all else [export_run(root, args.run, args.output)]
    for path in written:
        print(path)
    return 0
