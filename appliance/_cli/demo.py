"""``appliance demo``: the main job on the embedded default spec, end to end.

Builds a bundle from ``appliance/default.toml`` (the harness's own runtime
dependencies for four targets), signs it with a throwaway key made for the
demo, verifies it as a box would, prints the report, and installs it (the
harness venv, offline, from the bundle's own uv) into the demo's work dir.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path



def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="build, sign and verify a bundle from the embedded default spec")
    p.add_argument("--workdir", type=Path,
                   help="where the demo bundle, key and keyring go (default: a new folder in the user cache dir)")
    p.add_argument("--osv-url", metavar="URL", help="audit against this OSV API instead of PyPI's JSON API")
    p.add_argument("--with-images", action="store_true",
                   help="also pull the default spec's upstream images by digest (needs their registries)")
    p.add_argument("--no-install", action="store_true", help="stop after verify (no offline install into the workdir)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from appliance.bundle import build_bundle
    from appliance.errors import AuditError, UsageError
    import platformdirs

    from appliance.spec import default_spec
    from appliance.verify import render, verify_bundle
    from appliance._internal.gpg import export_keyring, generate_key

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    work = args.workdir or Path(platformdirs.user_cache_dir("appliance")) / f"demo-{stamp}"
    if work.exists() and any(work.iterdir()):
        raise UsageError(f"{work}: not empty (give a new --workdir)")
    work.mkdir(parents=True, exist_ok=True)
    print(f"demo: working in {work}")

    homedir = work / "gnupg"
    fpr = generate_key(homedir, "appliance demo signer (throwaway) <demo@appliance.invalid>")
    keyring = export_keyring(homedir, [fpr], work / "keyring.gpg")
    print(f"demo: throwaway signing key {fpr}; trusted keyring {keyring}")

    spec, out = default_spec(), work / "bundle"
    options = dict(sign_keys=[fpr], gpg_homedir=homedir, osv_url=args.osv_url,
                   skip_images=not args.with_images, progress=not args.no_progress)
    if not args.with_images:
        print(f"demo: the {len(spec.images)} upstream images of the default spec are not pulled "
              "(--with-images pulls them by digest); the manifest records none")
    try:
        build_bundle(spec, out, **options)
    except AuditError as exc:
        reason = [line for line in str(exc).splitlines() if line.strip()][-1].strip()
        print(f"demo: the audit did not pass: {reason}\n"
              "demo: rebuilding with an explicit waiver; the manifest records it and verify shows it")
        build_bundle(spec, out, waive_audit=f"demo: {reason}"[:500], **options)

    print(f"\ndemo: verifying {out} as the box would (`appliance verify {out} --keyring {keyring}`)")
    report = verify_bundle(out, keyring, installed_version=None, progress=not args.no_progress)
    print(render(report))
    if not report.ok or args.no_install:
        return report.exit_code

    from appliance.install import InstallOptions, install_bundle

    box = work / "box"
    print(f"\ndemo: installing it offline into {box} (`appliance install {out} --keyring {keyring} --prefix {box}`)")
    receipt = install_bundle(out, keyring, InstallOptions(prefix=box, images=args.with_images,
                                                          progress=not args.no_progress))
    print(f"demo: {receipt['result']} release {receipt['release']}: harness venv {receipt['venv']['path']} "
          f"(made with {receipt['venv']['tool']}); `appliance status --prefix {box}` shows it")
    return 0
