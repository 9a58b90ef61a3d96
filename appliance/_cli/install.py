"""``appliance install``, ``rollback``, ``status``: the box side, no network."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("install", help="verify a bundle and install it (staged, atomic switch)",
                              description="Exit codes: 0 installed or unchanged, 10-12 as verify, 20 install failed.")
    p.add_argument("bundle", type=Path, metavar="DIR")
    p.add_argument("--keyring", type=Path, required=True, help="binary OpenPGP keyring of trusted signers")
    p.add_argument("--threshold", type=int, help="distinct valid signatures required (default 1)")
    p.add_argument("--prefix", type=Path, help="install root (default $APPLIANCE_PREFIX or the user data dir)")
    p.add_argument("--allow-expired", action="store_true", help="accept an expired bundle (recorded)")
    p.add_argument("--python", help="interpreter for the harness venv (default: the one running appliance)")
    p.add_argument("--installer", choices=("auto", "uv", "pip"), default="auto",
                   help="what makes the venv: auto (the bundle's uv; pip only if it cannot run here), uv, pip")
    p.add_argument("--no-images", action="store_true", help="skip image load, harness image and stack")
    p.add_argument("--start", action="store_true", help="start the stack (podman kube play) after the switch")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_install)

    r = subparsers.add_parser("rollback", help="return to the previous install")
    r.add_argument("--prefix", type=Path)
    r.set_defaults(func=_rollback)

    k = subparsers.add_parser("stack", help="start or stop the current release's stack (podman kube play / down)")
    k.add_argument("action", choices=("up", "down"))
    k.add_argument("--prefix", type=Path)
    k.set_defaults(func=_stack)

    s = subparsers.add_parser("status", help="what is installed, from which bundle, and whether the stack is up")
    s.add_argument("--prefix", type=Path)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_status)


def _install(args: argparse.Namespace) -> int:
    from appliance.install import InstallOptions, install_bundle

    receipt = install_bundle(args.bundle, args.keyring, InstallOptions(
        prefix=args.prefix, threshold=args.threshold, allow_expired=args.allow_expired, python=args.python,
        installer=args.installer, images=not args.no_images, start=args.start, progress=not args.no_progress))
    print(f"{receipt['result']}: {receipt['name']} {receipt['version']} (release {receipt['release']})")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from appliance.install import rollback

    print(f"current: {rollback(args.prefix)}")
    print("a running stack still runs the release it was started from: `appliance stack up` replaces it")
    return 0


def _stack(args: argparse.Namespace) -> int:
    from appliance.install import stack_down, stack_up

    yaml = (stack_up if args.action == "up" else stack_down)(args.prefix)
    print(f"stack {args.action}: {yaml}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from appliance.install import status

    st = status(args.prefix)
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    print(f"install root: {st['prefix']}")
    for name in ("current", "previous"):
        r = st[name]
        if not r:
            print(f"{name}: none")
        else:
            print(f"{name}: {r.get('name')} {r.get('version')} release {r.get('release')} "
                  f"(manifest sha256 {str(r.get('manifest_sha256'))[:16]}..., installed {r.get('finished')})")
    for part, state in sorted(st["stack"].items()):
        print(f"  stack {part}: {state}")
    if st.get("last_attempt"):
        a = st["last_attempt"]
        print(f"last attempt: {a.get('result')} {a.get('release', '')} {a.get('error', '')}".rstrip())
    return 0 if st["current"] else 1
