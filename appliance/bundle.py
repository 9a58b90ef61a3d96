"""Build a signed bundle: everything an offline box needs, in one directory.

    manifest = build_bundle(load_spec(Path("appliance.toml")), Path("out/bundle"))

Workflow, in its security order (docs/bundle-format.md describes the result):

1. Refuse early: ``out`` must not exist or be empty (never mix with an old
   bundle), every signing key must be a secret key gpg holds. Work happens in
   ``<out>.partial``, renamed to ``out`` only after sealing, so an interrupted
   or failed build leaves nothing that looks like a bundle.
2. Models are copied as plain files (symlinks and special files refused).
3. Resolve: ``uv lock`` for exactly the spec's targets (``uv`` is always added
   so the box gets a static uv binary from its wheel), exported as PEP 751.
4. Select, for each target, the best compatible wheel of every package whose
   marker holds for it (no sdists: the box cannot build). Fetch each wheel once
   and check sha256 (and size) against the lock before it enters wheelhouse/.
5. Write the localized pylock (``../wheelhouse`` paths only), hashed
   requirements, tools.json (which uv wheel serves which target) and the
   CycloneDX SBOM, all from the same selection.
6. Audit with pip-audit ``--strict``; vulnerabilities or an audit that cannot
   run fail the build unless explicitly waived, and the waiver is recorded.
7. Images (vendored by the images step), then seal: manifest.json,
   SHA256SUMS and one signature per key, as the very last write.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance import __version__
from appliance.errors import AuditError, BundleError
from appliance.spec import Spec
from appliance._internal import lock, pylock
from appliance._internal.audit import run_pip_audit
from appliance._internal.files import copy_file
from appliance._internal.gpg import has_secret_key
from appliance._internal.hashing import hash_file
from appliance._internal.manifest import AuditEntry, Manifest, utcnow
from appliance._internal.progress import Progress
from appliance._internal.sbom import WheelComponent, python_sbom
from appliance._internal.seal import seal
from appliance._internal.wheelhouse import fetch_wheels

__all__ = ["build_bundle"]

LOCKFILES = "lockfiles"
TOOLS = "tools.json"
HARNESS_CONTAINERFILE = "images/harness/Containerfile"
SBOM = "sbom/python.cdx.json"
AUDIT_REPORT = "audit/pip-audit.json"


@dataclass(frozen=True)
class _Options:
    """Command-line overrides of the spec; empty or ``None`` means "as the spec says"."""

    sign_keys: tuple[str, ...] = ()  # overrides spec.signing.keys when given
    gpg_homedir: Path | None = None
    osv_url: str | None = None
    waive_audit: str | None = None  # a reason: vulnerabilities / a failed audit are recorded, not fatal
    skip_images: bool = False
    progress: bool = True


def build_bundle(
    spec: Spec,
    out: Path,
    *,
    sign_keys: tuple[str, ...] | list[str] = (),
    gpg_homedir: Path | None = None,
    osv_url: str | None = None,
    waive_audit: str | None = None,
    skip_images: bool = False,
    progress: bool = True,
) -> Manifest:
    """Build, audit and sign the bundle ``spec`` describes into ``out``; returns its manifest.

    ``sign_keys`` (fingerprints) replace ``spec.signing.keys``; ``gpg_homedir``
    replaces ``spec.signing.homedir``; ``osv_url`` replaces ``spec.audit.osv_url``;
    ``waive_audit`` is a reason that turns found vulnerabilities or a failed
    audit into a recorded waiver. Raises BundleError (AuditError for the audit).
    """
    out = Path(out)
    options = _Options(tuple(sign_keys), gpg_homedir, osv_url, waive_audit, skip_images, progress)
    keys, homedir = _signing(spec, options)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"{out}: exists and is not an empty directory: refusing to mix with an old bundle")
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        print(f"removing {partial} left by an interrupted build", flush=True)
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    try:
        manifest = _build(spec, partial, options, keys, homedir)
        if out.exists():
            out.rmdir()
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return manifest


def _signing(spec: Spec, options: _Options) -> tuple[list[str], Path | None]:
    keys = [k.replace(" ", "").upper() for k in options.sign_keys] or list(spec.signing.keys)
    homedir = options.gpg_homedir or (spec.resolve(spec.signing.homedir) if spec.signing.homedir else None)
    if not keys:
        raise BundleError("no signing key: set signing.keys in the spec or pass --sign-key (an unsigned bundle is not a bundle)")
    if spec.signing.threshold > len(keys):
        raise BundleError(f"signing threshold {spec.signing.threshold} exceeds the {len(keys)} signing keys")
    missing = [k for k in keys if not has_secret_key(k, homedir)]
    if missing:
        raise BundleError(f"no secret key for {', '.join(missing)} in {homedir or 'the default gpg home'}")
    return keys, homedir


def _build(spec: Spec, root: Path, options: _Options, keys: list[str], homedir: Path | None) -> Manifest:
    created = utcnow()
    models = _copy_models(spec, root, options.progress)

    lockdir = root / LOCKFILES
    top, packages = pylock.parse(lock.lock(spec, lockdir))
    selection = pylock.select(packages, spec.targets)
    digests = fetch_wheels(
        [s.wheel for s in selection.values()], root / pylock.WHEELHOUSE,
        base=lockdir, progress=options.progress,
    )
    top["created-by"] = "appliance"
    (lockdir / "pylock.toml").write_text(
        pylock.localize(top, selection, {f: d.size for f, d in digests.items()}), encoding="utf-8"
    )
    (lockdir / "requirements.txt").write_text(pylock.requirements_txt(selection), encoding="utf-8")
    (lockdir / TOOLS).write_text(_tools_json(selection, _vendor_self(root)), encoding="utf-8")
    _write(root / SBOM, python_sbom(spec.bundle.name, spec.bundle.version, created, [
        WheelComponent(f"{pylock.WHEELHOUSE}/{f}", s.package.name, s.package.version, s.wheel.sha256, tuple(s.targets))
        for f, s in selection.items()
    ]))

    audit = _audit(spec, root, selection, options)
    if options.skip_images:
        print(f"images: skipped (--skip-images), {len(spec.images)} declared", flush=True)
    images = [] if options.skip_images else _vendor_images(spec, root)

    meta: dict[str, Any] = {
        "name": spec.bundle.name,
        "version": spec.bundle.version,
        "created": created,
        "expires": spec.expires_at(created),
        "targets": [{"python": t.python, "platform": t.platform} for t in spec.targets],
        "requirements": lock.requirements(spec),
        "images": images,
        "models": models,
        "audit": audit.model_dump(),
        "signing": {"threshold": spec.signing.threshold, "keys": keys},
    }
    print(f"sealing and signing with {len(keys)} key(s)", flush=True)
    return seal(root, meta, keys=keys, homedir=homedir)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _tools_json(selection: dict[str, pylock.Selected], self_wheel: dict[str, str]) -> str:
    """lockfiles/tools.json: for each target key, the wheel that carries its uv binary; appliance's own wheel."""
    uv = {
        target: {"version": s.package.version, "wheel": f"{pylock.WHEELHOUSE}/{f}", "sha256": s.wheel.sha256}
        for f, s in sorted(selection.items()) if s.package.name == "uv" for target in s.targets
    }
    doc = {"schema": "appliance.tools/1", "uv": dict(sorted(uv.items())), "appliance": self_wheel}
    return json.dumps(doc, indent=2) + "\n"


def _vendor_self(root: Path) -> dict[str, str]:
    """tools/appliance-*.whl (the code the box runs) and, for the box's harness image, its Containerfile."""
    from appliance._internal.selfwheel import build_self_wheel

    wheel = build_self_wheel(root / "tools")
    containerfile = Path(__file__).parent / "_internal" / "Containerfile.harness"
    dest = root / HARNESS_CONTAINERFILE
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(containerfile, dest)
    return {"version": __version__, "wheel": f"tools/{wheel.name}", "sha256": hash_file(wheel).sha256}


def _copy_models(spec: Spec, root: Path, progress: bool) -> list[dict[str, str]]:
    """Copy each model directory to models/<name>/ as plain files; links and special files are refused."""
    plan: list[tuple[Path, Path]] = []
    for model in spec.models:
        src = spec.resolve(model.path)
        if src.is_symlink() or not src.is_dir():
            raise BundleError(f"models.{model.name}: {src} is not a directory (symbolic links are refused)")
        for dirpath, dirnames, filenames in os.walk(src):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                if path.is_symlink() or not (path.is_dir() or path.is_file()):
                    raise BundleError(f"models.{model.name}: {path}: not a plain file (symbolic links are refused)")
            plan += [(Path(dirpath) / n, root / "models" / model.name / Path(dirpath).relative_to(src) / n) for n in filenames]
    if not plan:
        return []
    bar = Progress("models", sum(src.stat().st_size for src, _ in plan), enabled=progress)
    for src, dest in plan:
        dest.parent.mkdir(parents=True, exist_ok=True)
        copy_file(src, dest, bar.advance)
    bar.close()
    return [{"name": m.name, "path": f"models/{m.name}"} for m in spec.models]


def _audit(spec: Spec, root: Path, selection: dict[str, pylock.Selected], options: _Options) -> AuditEntry:
    """Run the audit; refuse on findings or failure unless waived, and record what happened."""
    reason = options.waive_audit or (spec.audit.waive_reason if spec.audit.waive else None)
    osv_url = options.osv_url or spec.audit.osv_url
    service = f"osv {osv_url}" if osv_url else "pypi"
    report = root / AUDIT_REPORT
    report.parent.mkdir(parents=True, exist_ok=True)
    expected = {s.package.name: s.package.version for s in selection.values()}
    try:
        result = run_pip_audit(root / LOCKFILES / "requirements.txt", report, expected, osv_url=osv_url)
    except AuditError as exc:
        if not reason:
            raise
        print(f"audit FAILED but WAIVED ({reason}): {exc}", flush=True)
        has_report = report.exists()
        if not has_report:
            report.parent.rmdir()
        return AuditEntry(report=AUDIT_REPORT if has_report else None, status="waived",
                          service=service, waiver_reason=reason)
    if result.findings and not reason:
        raise AuditError(
            f"{len(result.findings)} known vulnerabilities ({service}):\n  "
            + "\n  ".join(str(f) for f in result.findings)
            + "\nupgrade them, or waive explicitly with --waive-audit REASON"
        )
    if result.findings:
        print(f"audit: {len(result.findings)} vulnerabilities WAIVED ({reason})", flush=True)
    else:
        print(f"audit: clean ({service})", flush=True)
    return AuditEntry(
        report=AUDIT_REPORT, status="waived" if result.findings else "clean",
        vulnerabilities=len(result.findings), service=service, waiver_reason=reason if result.findings else None,
    )


def _vendor_images(spec: Spec, work_dir: Path) -> list[dict[str, Any]]:
    """The images step (appliance/_internal/images.py, the install stage's): ImageEntry dicts."""
    try:
        images = importlib.import_module("appliance._internal.images")
    except ModuleNotFoundError as exc:
        if exc.name != "appliance._internal.images":
            raise
        print(f"images: {len(spec.images)} declared, vendored by the images step", flush=True)
        return []
    return images.vendor_images(spec, work_dir)
