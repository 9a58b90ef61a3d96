"""``appliance bundle build`` and ``appliance audit serve``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    bundle = subparsers.add_parser("bundle", help="build a signed offline bundle (on a connected host)")
    bundle_sub = bundle.add_subparsers(dest="bundle_command", metavar="COMMAND", required=True)
    build = bundle_sub.add_parser("build", help="resolve, vendor, audit and sign a bundle")
    build.add_argument("--spec", type=Path, help="appliance.toml (default: the embedded default spec)")
    build.add_argument("--out", type=Path, required=True, help="bundle directory to create (must not exist or be empty)")
    build.add_argument("--sign-key", action="append", default=[], metavar="FPR",
                       help="signing key fingerprint (repeatable; overrides signing.keys)")
    build.add_argument("--gpg-homedir", type=Path, help="gpg home holding the secret keys (overrides signing.homedir)")
    build.add_argument("--osv-url", metavar="URL",
                       help="audit against this OSV API (e.g. `appliance audit serve`) instead of PyPI's JSON API")
    build.add_argument("--waive-audit", metavar="REASON",
                       help="record vulnerabilities or a failed audit as waived for REASON instead of failing")
    build.add_argument("--skip-images", action="store_true", help="vendor no images (recorded: manifest images = [])")
    build.add_argument("--no-progress", action="store_true", help="no progress bars")
    build.set_defaults(func=_build)

    audit = subparsers.add_parser("audit", help="vulnerability audit helpers")
    audit_sub = audit.add_subparsers(dest="audit_command", metavar="COMMAND", required=True)
    serve = audit_sub.add_parser("serve", help="serve an OSV dump as an OSV API for offline audits")
    serve.add_argument("--dump", type=Path, required=True, help="directory or zip of OSV JSON records (osv.dev format)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765, help="port (default: 8765; 0 picks a free one)")
    serve.add_argument("--verbose", action="store_true", help="log every request")
    serve.set_defaults(func=_serve)


def _build(args: argparse.Namespace) -> int:
    from appliance.bundle import build_bundle

    from appliance.spec import default_spec, load_spec

    spec = load_spec(args.spec) if args.spec else default_spec()
    manifest = build_bundle(
        spec, args.out, sign_keys=args.sign_key, gpg_homedir=args.gpg_homedir, osv_url=args.osv_url,
        waive_audit=args.waive_audit, skip_images=args.skip_images, progress=not args.no_progress,
    )
    wheels = sum(1 for f in manifest.files if f.path.startswith("wheelhouse/"))
    images = "skipped" if args.skip_images else str(len(manifest.images))
    print(
        f"bundle {manifest.name} {manifest.version}: {args.out}\n"
        f"  targets {', '.join(t.platform + '/py' + t.python for t in manifest.targets)}\n"
        f"  {wheels} wheels, images {images}, {len(manifest.models)} models, {len(manifest.files)} files\n"
        f"  audit {manifest.audit.status}"
        + (f" (waived: {manifest.audit.waiver_reason})" if manifest.audit.waiver_reason else "")
        + f"; signed by {len(manifest.signing.keys)} key(s), threshold {manifest.signing.threshold}; "
        f"expires {manifest.expires:%Y-%m-%d}"
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    from appliance._internal.osv import OsvDatabase, OsvServer

    db = OsvDatabase.load(args.dump)
    server = OsvServer(db, args.host, args.port, verbose=args.verbose)
    print(f"serving {len(db.by_id)} OSV records at {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0
