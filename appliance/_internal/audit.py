"""Audit the vendored packages with pip-audit, failing closed.

pip-audit runs with ``--strict`` (always: without it, an unreachable service
skips every package and still says "No known vulnerabilities found") on the
hashed ``lockfiles/requirements.txt`` with ``--disable-pip --no-deps``, so
nothing is resolved or downloaded. The JSON report is then checked again here:
every locked package must appear in it with its version and no skip reason.
Anything else (no report, a crash, a skipped package) is an :class:`AuditError`;
found vulnerabilities are returned for the caller to refuse or waive.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import AuditError


@dataclass(frozen=True)
class Finding:
    package: str
    version: str
    id: str
    fix_versions: tuple[str, ...]

    def __str__(self) -> str:
        fix = f" (fixed in {', '.join(self.fix_versions)})" if self.fix_versions else ""
        return f"{self.package} {self.version}: {self.id}{fix}"


@dataclass(frozen=True)
class AuditResult:
    service: str  # "pypi" or "osv <url>"
    findings: tuple[Finding, ...]


def _tail(text: str, lines: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run_pip_audit(
    requirements: Path, report: Path, expected: dict[str, str], *, osv_url: str | None = None, timeout: int = 15
) -> AuditResult:
    """Audit ``requirements``; ``expected`` is {normalized name: version} of every locked package."""
    service = ["--vulnerability-service", "osv", "--osv-url", osv_url] if osv_url else ["--vulnerability-service", "pypi"]
    label = f"osv {osv_url}" if osv_url else "pypi"
    report.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="appliance-audit-") as cache:
        cmd = [
            sys.executable, "-m", "pip_audit", "--strict", "-r", str(requirements), "--require-hashes",
            "--disable-pip", "--no-deps", "--format", "json", "--output", str(report),
            "--progress-spinner", "off", "--cache-dir", cache, "--timeout", str(timeout), *service,
        ]
        print(f"auditing {len(expected)} packages with pip-audit ({label})", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    try:
        data = json.loads(report.read_text(encoding="utf-8"))
        deps = {d["name"]: d for d in data["dependencies"]}
    except (OSError, ValueError, KeyError, TypeError):
        report.unlink(missing_ok=True)
        raise AuditError(
            f"pip-audit could not audit ({label}), exit {proc.returncode}: no report:\n{_tail(proc.stderr)}"
        ) from None
    problems = []
    for name, version in sorted(expected.items()):
        dep = deps.get(name)
        if dep is None or "skip_reason" in dep or dep.get("version") != version:
            reason = dep.get("skip_reason", f"version {dep.get('version')}") if dep else "missing from the report"
            problems.append(f"{name} {version}: not audited ({reason})")
    if problems:
        raise AuditError(f"pip-audit ({label}) did not audit every package:\n  " + "\n  ".join(problems))
    findings = tuple(
        Finding(name, dep["version"], v["id"], tuple(v.get("fix_versions", [])))
        for name, dep in sorted(deps.items()) for v in dep.get("vulns", [])
    )
    if proc.returncode != (1 if findings else 0):
        raise AuditError(f"pip-audit ({label}) exited {proc.returncode}:\n{_tail(proc.stderr)}")
    return AuditResult(label, findings)
