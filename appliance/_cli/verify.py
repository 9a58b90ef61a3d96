"""``appliance verify``: check a bundle before anything of it runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "verify", help="verify a bundle: signatures, hashes, lock/wheelhouse/SBOM, policy",
        description="Exit codes: 0 verified, 10 integrity or content, 11 signatures, 12 policy, 2 usage.",
    )
    p.add_argument("bundle", type=Path, metavar="DIR", help="the bundle directory")
    p.add_argument("--keyring", type=Path, required=True, help="binary OpenPGP keyring of trusted signers (gpg --export)")
    p.add_argument("--threshold", type=int, default=1, help="distinct valid signatures required (default 1)")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the summary")
    p.add_argument("--allow-expired", action="store_true", help="accept an expired bundle (recorded in the report)")
    p.add_argument("--prefix", type=Path, help="install root whose current bundle is the rollback floor")
    p.add_argument("--installed-version", help="rollback floor, instead of reading the install root")
    p.add_argument("--workers", type=int, help="hashing threads (default: one per core)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_verify)


def _verify(args: argparse.Namespace) -> int:
    from appliance.verify import render, verify_bundle

    options = {"installed_version": args.installed_version} if args.installed_version else {}
    report = verify_bundle(
        args.bundle, args.keyring, threshold=args.threshold, prefix=args.prefix,
        allow_expired=args.allow_expired, workers=args.workers,
        progress=not args.no_progress and not args.json, **options,
    )
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        print(render(report), file=sys.stdout if report.ok else sys.stderr)
    return report.exit_code
