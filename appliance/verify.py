"""Verify a bundle on the box, before anything of it runs.

    report = verify_bundle(Path("/media/usb/bundle"), Path("/etc/appliance/keyring.gpg"))
    print(render(report)); sys.exit(report.exit_code)

Workflow, in its security order (docs/bundle-format.md):

1. Walk the directory with ``lstat`` only: symbolic links, special files and
   unsafe names are refused and never opened.
2. Signatures: gpgv checks every ``signatures/*.asc`` over SHA256SUMS against
   the operator's keyring alone; distinct primary-key fingerprints with a good
   signature must reach the threshold. Below it, nothing else is parsed.
3. SHA256SUMS is parsed strictly; manifest.json must match its SHA256SUMS line
   before it is parsed (pydantic, unknown keys refused). The manifest's own
   threshold then applies too.
4. Exact set equality: files on disk == SHA256SUMS == manifest; extra and
   missing files are named.
5. Every file is hashed in parallel (all cores): size, then sha256, against both
   lists.
6. Content checks (pluggable, :data:`CONTENT_CHECKS`): pylock wheels ==
   wheelhouse files == SBOM components, hash for hash; images when present.
7. Policy: no rollback below the installed version, no expired bundle (an
   override is recorded), a clean or explicitly waived audit.

Every problem names a bundle path and a reason. Exit codes: 0 verified, 10
integrity or content, 11 signatures, 12 policy (see README).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, Field, ValidationError

from appliance.errors import UsageError, VerifyError
from appliance._internal import paths
from appliance._internal.gpg import verify_detached
from appliance._internal.hashing import Digest, default_workers, hash_files, sha256_bytes
from appliance._internal.manifest import (
    MANIFEST,
    SIG_DIR,
    SUMS,
    Manifest,
    UnsafePath,
    check_relpath,
    parse_sums,
    utcnow,
)
from appliance._internal.progress import Progress

__all__ = ["CONTENT_CHECKS", "Problem", "VerifyReport", "render", "verify_bundle", "verify_or_raise"]

Kind = Literal["signature", "integrity", "content", "policy"]
EXIT_CODES: dict[Kind, int] = {"signature": 11, "integrity": 10, "content": 10, "policy": 12}
_SEVERITY: tuple[Kind, ...] = ("signature", "integrity", "content", "policy")
_AUTO = object()


class Problem(BaseModel):
    path: str
    reason: str
    kind: Kind


class SignatureResult(BaseModel):
    file: str
    fingerprint: str | None
    valid: bool
    reason: str


class Stats(BaseModel):
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    bytes_per_s: float = 0.0
    workers: int = 0


class VerifyReport(BaseModel):
    ok: bool = False
    bundle: str
    name: str | None = None
    version: str | None = None
    created: dt.datetime | None = None
    expires: dt.datetime | None = None
    installed_version: str | None = None
    threshold: int
    signers: list[str] = []
    signatures: list[SignatureResult] = []
    problems: list[Problem] = []
    overrides: list[str] = []
    audit: dict | None = None
    stats: Stats = Stats()
    manifest_sha256: str | None = None
    # bundle path -> (size, sha256) as hashed by this run: what the install stage copies against.
    digests: dict[str, tuple[int, str]] = Field(default_factory=dict, exclude=True)

    @property
    def exit_code(self) -> int:
        for kind in _SEVERITY:
            if any(p.kind == kind for p in self.problems):
                return EXIT_CODES[kind]
        return 0


# A content check looks at a bundle whose files have all been hashed:
# (root, manifest, {path: Digest}) -> problems. Stages add theirs (images).
ContentCheck = Callable[[Path, Manifest, dict[str, Digest]], list[Problem]]
CONTENT_CHECKS: list[ContentCheck] = []


def check_image_content(root: Path, manifest: Manifest, digests: dict[str, Digest]) -> list[Problem]:
    """OCI blobs named by their sha256; layout index == images.lock == manifest == images SBOM."""
    from appliance._internal.images import check_images

    return [Problem(path=p, reason=r, kind="content") for p, r in check_images(root, manifest.images, digests)]


CONTENT_CHECKS.append(check_image_content)


def verify_or_raise(root: Path, keyring: Path, **options) -> VerifyReport:
    """:func:`verify_bundle`, raising :class:`VerifyError` (problems attached) unless it verifies."""
    report = verify_bundle(root, keyring, **options)
    if not report.ok:
        err = VerifyError(
            f"{root}: bundle does not verify ({len(report.problems)} problem(s))",
            [(p.path, p.reason) for p in report.problems],
        )
        err.exit_code = report.exit_code
        raise err
    return report


def verify_bundle(
    root: Path,
    keyring: Path,
    *,
    threshold: int = 1,
    installed_version: str | None | object = _AUTO,
    prefix: Path | None = None,
    allow_expired: bool = False,
    now: dt.datetime | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> VerifyReport:
    """Check the bundle at ``root`` against ``keyring``; returns a report (``report.ok``)."""
    root = Path(root)
    if root.is_symlink() or not root.is_dir():
        raise UsageError(f"{root}: not a bundle directory")
    if not Path(keyring).is_file():
        raise UsageError(f"{keyring}: keyring not found (a binary keyring: gpg --export KEYS > keyring.gpg)")
    if threshold < 1:
        raise UsageError("--threshold must be at least 1")
    if installed_version is _AUTO:
        installed_version = paths.installed_version(prefix)
    report = VerifyReport(bundle=str(root), threshold=threshold, installed_version=installed_version)
    problems = report.problems

    def problem(path: str, reason: str, kind: Kind) -> None:
        problems.append(Problem(path=path, reason=reason, kind=kind))

    # 1. The walk: lstat only, nothing followed, nothing opened.
    regular, refused = _walk(root, problem)

    # 2. Signatures over SHA256SUMS.
    if SUMS not in regular:
        problem(SUMS, "missing (the signed index)" if SUMS not in refused else "refused", "signature")
        return report
    sig_files = sorted(p for p in regular if p.startswith(SIG_DIR + "/") and p.endswith(".asc"))
    for rel in sorted(p for p in regular if p.startswith(SIG_DIR + "/") and p not in sig_files):
        problem(rel, "unexpected file in signatures/ (only *.asc)", "integrity")
    for rel in sig_files:
        for sig in verify_detached(root / rel, root / SUMS, keyring):
            report.signatures.append(SignatureResult(file=rel, fingerprint=sig.fingerprint, valid=sig.valid, reason=sig.reason))
    report.signers = sorted({s.fingerprint for s in report.signatures if s.valid and s.fingerprint})
    if not _threshold_met(report, threshold, problem):
        return report

    # 3. The index, then the manifest it vouches for.
    sums_bytes = (root / SUMS).read_bytes()
    sums_text = sums_bytes.decode("utf-8", errors="replace")
    sums, bad_lines = parse_sums(sums_text)
    for n, why in bad_lines:
        problem(SUMS, f"line {n}: {why}", "integrity")
    manifest = _load_manifest(root, sums, regular, problem)
    if manifest is None:
        return report
    report.name, report.version = manifest.name, manifest.version
    report.manifest_sha256 = sums.get(MANIFEST)
    report.created, report.expires = manifest.created, manifest.expires
    report.audit = manifest.audit.model_dump()
    if manifest.signing.threshold > threshold and not _threshold_met(report, manifest.signing.threshold, problem):
        return report

    # 4. Exact set equality: disk, SHA256SUMS, manifest.
    listed = {f.path: f for f in manifest.files}
    on_disk = {p for p in regular if p != SUMS and not p.startswith(SIG_DIR + "/")}
    for rel in sorted(on_disk - sums.keys()):
        problem(rel, "unexpected file (not in SHA256SUMS)", "integrity")
    for rel in sorted(sums.keys() - on_disk - refused):
        problem(rel, "missing file (listed in SHA256SUMS)", "integrity")
    for rel in sorted((sums.keys() - {MANIFEST}) ^ listed.keys()):
        where = "manifest.json but not SHA256SUMS" if rel in listed else "SHA256SUMS but not manifest.json"
        problem(rel, f"listed in {where}", "integrity")
    for rel in sorted(listed.keys() & sums.keys()):
        if listed[rel].sha256 != sums[rel]:
            problem(rel, "manifest.json and SHA256SUMS disagree on its sha256", "integrity")

    # 5. Hash every file, in parallel.
    to_hash = sorted((listed.keys() & on_disk) - {MANIFEST})
    digests = _hash_all(root, to_hash, report, workers, progress)
    for rel in to_hash:
        got, want = digests[rel], listed[rel]
        if isinstance(got, OSError):
            problem(rel, f"cannot read: {got.strerror}", "integrity")
        elif got.size != want.size:
            problem(rel, f"truncated or size changed (expected {want.size} bytes, found {got.size})", "integrity")
        elif got.sha256 != want.sha256:
            problem(rel, "sha256 mismatch (file changed)", "integrity")
    good = {rel: d for rel, d in digests.items() if isinstance(d, Digest)}
    report.digests = {rel: (d.size, d.sha256) for rel, d in good.items()}
    report.digests[MANIFEST] = ((root / MANIFEST).stat().st_size, sums[MANIFEST])
    report.digests[SUMS] = (len(sums_bytes), sha256_bytes(sums_bytes))

    # 6. Content, 7. policy.
    for check in (check_python_content, *CONTENT_CHECKS):
        problems.extend(check(root, manifest, good))
    _policy(manifest, report, allow_expired, now or utcnow(), problem)
    report.ok = not problems
    return report


def _walk(root: Path, problem: Callable[[str, str, Kind], None]) -> tuple[set[str], set[str]]:
    """Regular files under ``root`` (bundle paths) and refused paths; nothing is followed."""
    regular: set[str] = set()
    refused: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = Path(full).relative_to(root).as_posix()
            mode = os.lstat(full).st_mode
            try:
                check_relpath(rel)
            except UnsafePath as exc:
                problem(rel, f"unsafe path: {exc}", "integrity")
                refused.add(rel)
                continue
            if stat.S_ISLNK(mode):
                problem(rel, "symbolic link refused", "integrity")
                refused.add(rel)
            elif stat.S_ISREG(mode):
                regular.add(rel)
            elif not stat.S_ISDIR(mode):
                problem(rel, "not a regular file (device, fifo or socket) refused", "integrity")
                refused.add(rel)
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    return regular, refused


def _threshold_met(report: VerifyReport, threshold: int, problem: Callable[[str, str, Kind], None]) -> bool:
    if len(report.signers) >= threshold:
        return True
    for sig in report.signatures:
        if not sig.valid:
            problem(sig.file, sig.reason, "signature")
    problem(SUMS, f"{len(report.signers)} valid signature(s) from known keys, threshold is {threshold}", "signature")
    return False


def _load_manifest(root: Path, sums: dict[str, str], regular: set[str], problem) -> Manifest | None:
    if MANIFEST not in sums:
        problem(MANIFEST, "not listed in SHA256SUMS", "integrity")
        return None
    if MANIFEST not in regular:
        problem(MANIFEST, "missing file (listed in SHA256SUMS)", "integrity")
        return None
    data = (root / MANIFEST).read_bytes()
    if sha256_bytes(data) != sums[MANIFEST]:
        problem(MANIFEST, "sha256 mismatch with SHA256SUMS (manifest changed)", "integrity")
        return None
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        problem(MANIFEST, f"invalid manifest: {loc}: {first['msg']}", "integrity")
        return None


def _hash_all(root: Path, rels: list[str], report: VerifyReport, workers: int | None, progress: bool):
    total = sum(os.lstat(root / rel).st_size for rel in rels)
    workers = workers or default_workers()
    bar = Progress("hashing", total, enabled=progress)
    digests = hash_files(root, rels, workers=workers, progress=bar.advance)
    seconds = bar.close()
    report.stats = Stats(files=len(rels), bytes=total, seconds=round(seconds, 3),
                         bytes_per_s=round(total / seconds if seconds > 0 else 0.0), workers=workers)
    return digests


PYLOCK = "lockfiles/pylock.toml"
PYTHON_SBOM = "sbom/python.cdx.json"


def check_python_content(root: Path, manifest: Manifest, digests: dict[str, Digest]) -> list[Problem]:
    """pylock wheels == wheelhouse/*.whl == SBOM components: same paths, same sha256."""
    out: list[Problem] = []

    def bad(path: str, reason: str) -> None:
        out.append(Problem(path=path, reason=reason, kind="content"))

    if PYLOCK not in digests or PYTHON_SBOM not in digests:
        for rel in (PYLOCK, PYTHON_SBOM):
            if rel not in digests:
                bad(rel, "missing or unverified: the Python content cannot be checked")
        return out
    wheelhouse = {rel: d.sha256 for rel, d in digests.items() if rel.startswith("wheelhouse/")}
    try:
        lock = tomllib.loads((root / PYLOCK).read_text(encoding="utf-8"))
        sbom = json.loads((root / PYTHON_SBOM).read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        bad(PYLOCK if isinstance(exc, tomllib.TOMLDecodeError) else PYTHON_SBOM, f"unreadable: {exc}")
        return out

    locked: dict[str, str] = {}
    for pkg in lock.get("packages", []):
        if pkg.get("sdist") or pkg.get("directory") or pkg.get("vcs") or pkg.get("archive"):
            bad(PYLOCK, f"package {pkg.get('name')}: only wheels may be locked (no sdist, directory, vcs, archive)")
        for wheel in pkg.get("wheels", []):
            name = wheel.get("name") or "?"
            if "url" in wheel or "path" not in wheel:
                bad(PYLOCK, f"wheel {name}: has a url or no path (it would be fetched from the network)")
                continue
            rel = os.path.normpath(os.path.join("lockfiles", wheel["path"])).replace(os.sep, "/")
            if not rel.startswith("wheelhouse/") or rel.count("/") != 1:
                bad(PYLOCK, f"wheel {name}: path {wheel['path']!r} is not in wheelhouse/")
                continue
            locked[rel] = (wheel.get("hashes") or {}).get("sha256", "")

    sbommed: dict[str, str] = {}
    for comp in sbom.get("components", []):
        props = {p.get("name"): p.get("value") for p in comp.get("properties", [])}
        rel = props.get("appliance:path")
        if not rel:
            continue
        sbommed[rel] = next((h.get("content", "") for h in comp.get("hashes", []) if h.get("alg") == "SHA-256"), "")

    for rel in sorted(locked.keys() | wheelhouse.keys() | sbommed.keys()):
        missing = [label for label, table in (("pylock", locked), ("wheelhouse", wheelhouse), ("SBOM", sbommed))
                   if rel not in table]
        if missing:
            bad(rel, f"not in {', '.join(missing)} (lock, wheelhouse and SBOM must list the same wheels)")
            continue
        if not locked[rel] == sbommed[rel] == wheelhouse[rel]:
            bad(rel, "sha256 differs between pylock, SBOM and the file")
    return out


def _policy(manifest: Manifest, report: VerifyReport, allow_expired: bool, now: dt.datetime, problem) -> None:
    installed = report.installed_version
    if installed:
        try:
            if Version(manifest.version) < Version(installed):
                problem(MANIFEST, f"rollback refused: bundle version {manifest.version} is older than the "
                                  f"installed {installed}", "policy")
        except InvalidVersion as exc:
            problem(MANIFEST, f"version cannot be compared: {exc}", "policy")
    if now > manifest.expires:
        if allow_expired:
            report.overrides.append(f"expired on {manifest.expires.isoformat()}: accepted by --allow-expired")
        else:
            problem(MANIFEST, f"expired on {manifest.expires.isoformat()} (override: --allow-expired)", "policy")
    audit = manifest.audit
    if audit.status == "vulnerable":
        problem(audit.report or MANIFEST, f"audit found {audit.vulnerabilities} vulnerabilities", "policy")
    elif audit.status == "waived":
        report.overrides.append(f"audit waived at build time: {audit.waiver_reason}")
    if audit.report and audit.report not in {f.path for f in manifest.files}:
        problem(audit.report, "audit report named in the manifest is missing", "policy")
    elif audit.status == "clean":
        if not audit.report:
            problem(MANIFEST, "audit marked clean but has no report", "policy")
        else:
            problem_text = _audit_report_problem(report.bundle, audit.report)
            if problem_text:
                problem(audit.report, problem_text, "policy")


def _audit_report_problem(root: str, rel: str) -> str | None:
    """A 'clean' audit report must list no vulnerability and skip no package."""
    try:
        data = json.loads((Path(root) / rel).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        return f"unreadable audit report: {exc}"
    deps = data.get("dependencies", []) if isinstance(data, dict) else []
    vulns = sum(len(d.get("vulns", [])) for d in deps)
    skipped = [d.get("name") for d in deps if d.get("skip_reason")]
    if vulns:
        return f"audit marked clean but the report lists {vulns} vulnerabilities"
    if skipped:
        return f"audit marked clean but skipped {', '.join(map(str, skipped))}"
    if not deps:
        return "audit marked clean but the report audited no package"
    return None


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def render(report: VerifyReport) -> str:
    """A human summary of a report: verdict, bundle, signers, work done, overrides, problems."""
    verdict = "VERIFIED" if report.ok else f"REJECTED (exit {report.exit_code})"
    lines = [f"{verdict}: {report.bundle}"]
    if report.name:
        lines.append(f"  bundle     {report.name} {report.version}, created {report.created:%Y-%m-%d %H:%M}Z, "
                     f"expires {report.expires:%Y-%m-%d}")
    lines.append(f"  installed  {report.installed_version or '(none)'}")
    lines.append(f"  signatures {len(report.signers)} valid of threshold {report.threshold}: "
                 + (", ".join(report.signers) or "none"))
    for sig in report.signatures:
        if not sig.valid:
            lines.append(f"             {sig.file}: {sig.reason}")
    if report.stats.files:
        s = report.stats
        lines.append(f"  hashed     {s.files} files, {_human(s.bytes)} in {s.seconds:.2f}s "
                     f"({_human(s.bytes_per_s)}/s, {s.workers} workers)")
    if report.audit:
        a = report.audit
        extra = f" (waived: {a['waiver_reason']})" if a.get("waiver_reason") else ""
        lines.append(f"  audit      {a['status']}, {a['vulnerabilities']} vulnerabilities{extra}")
    for item in report.overrides:
        lines.append(f"  override   {item}")
    if report.problems:
        lines.append(f"  problems   {len(report.problems)}:")
        lines += [f"    {p.path}: {p.reason} [{p.kind}]" for p in report.problems]
    return "\n".join(lines)
