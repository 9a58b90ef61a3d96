"""Content and policy checks: lock <-> wheelhouse <-> SBOM equality, audit status, the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from appliance.verify import verify_bundle


def test_pylock_wheel_not_in_wheelhouse(bundle: Path, keyring: Path, reseal) -> None:
    victim = sorted((bundle / "wheelhouse").glob("*.whl"))[0]
    victim.unlink()  # the signer dropped a wheel but kept the lock and SBOM
    reseal(bundle)
    report = verify_bundle(bundle, keyring, installed_version=None, progress=False)
    assert report.exit_code == 10
    assert any(p.path == f"wheelhouse/{victim.name}" and "not in wheelhouse" in p.reason for p in report.problems)


def test_sbom_missing_component(bundle: Path, keyring: Path, reseal) -> None:
    sbom_path = bundle / "sbom/python.cdx.json"
    sbom = json.loads(sbom_path.read_text())
    dropped = sbom["components"].pop()
    sbom_path.write_text(json.dumps(sbom))
    reseal(bundle)
    report = verify_bundle(bundle, keyring, installed_version=None, progress=False)
    assert any(p.path == dropped["bom-ref"] and "not in SBOM" in p.reason for p in report.problems), report.problems


def test_sbom_hash_differs(bundle: Path, keyring: Path, reseal) -> None:
    sbom_path = bundle / "sbom/python.cdx.json"
    sbom = json.loads(sbom_path.read_text())
    sbom["components"][0]["hashes"][0]["content"] = "0" * 64
    sbom_path.write_text(json.dumps(sbom))
    reseal(bundle)
    report = verify_bundle(bundle, keyring, installed_version=None, progress=False)
    assert any(p.path == sbom["components"][0]["bom-ref"] and "sha256 differs" in p.reason for p in report.problems)


def test_pylock_entry_with_url(bundle: Path, keyring: Path, reseal) -> None:
    lock = bundle / "lockfiles/pylock.toml"
    text, n = re.subn(r'path = "\.\./wheelhouse/', 'url = "https://files.example/', lock.read_text(), count=1)
    assert n == 1
    lock.write_text(text)
    reseal(bundle)
    report = verify_bundle(bundle, keyring, installed_version=None, progress=False)
    assert any(p.path == "lockfiles/pylock.toml" and "network" in p.reason for p in report.problems)


def test_audit_vulnerable_refused(bundle: Path, keyring: Path, reseal) -> None:
    reseal(bundle, audit={"report": "audit/pip-audit.json", "status": "vulnerable", "vulnerabilities": 2})
    report = verify_bundle(bundle, keyring, installed_version=None, progress=False)
    assert report.exit_code == 12 and any("audit found 2 vulnerabilities" in p.reason for p in report.problems)


def test_audit_clean_but_report_lists_vulns(bundle: Path, keyring: Path, reseal) -> None:
    path = bundle / "audit/pip-audit.json"
    data = json.loads(path.read_text())
    data["dependencies"][0]["vulns"] = [{"id": "PYSEC-X", "fix_versions": [], "description": "x"}]
    path.write_text(json.dumps(data))
    reseal(bundle)
    report = verify_bundle(bundle, keyring, installed_version=None, progress=False)
    assert any(p.path == "audit/pip-audit.json" and "lists 1 vulnerabilities" in p.reason for p in report.problems)


def test_audit_waiver_is_shown(bundle: Path, keyring: Path, reseal) -> None:
    reseal(bundle, audit={"report": None, "status": "waived", "waiver_reason": "offline site, reviewed by ops"})
    report = verify_bundle(bundle, keyring, installed_version=None, progress=False)
    assert report.ok, report.problems
    assert any("offline site, reviewed by ops" in o for o in report.overrides)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance", "verify", *args], capture_output=True, text=True)


def test_cli_json_report_and_exit_codes(bundle: Path, keyring: Path, tmp_path: Path) -> None:
    ok = cli(str(bundle), "--keyring", str(keyring), "--json", "--installed-version", "0.1")
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["ok"] is True and report["version"] == "1.0.0" and len(report["signers"]) == 1
    assert report["stats"]["files"] > 10 and report["audit"]["status"] == "clean"

    human = cli(str(bundle), "--keyring", str(keyring), "--no-progress", "--threshold", "2")
    assert human.returncode == 11 and "REJECTED" in human.stderr and "threshold is 2" in human.stderr

    policy = cli(str(bundle), "--keyring", str(keyring), "--no-progress", "--installed-version", "9")
    assert policy.returncode == 12 and "rollback refused" in policy.stderr

    missing = cli(str(bundle), "--keyring", str(tmp_path / "nope.gpg"))
    assert missing.returncode == 2 and "keyring not found" in missing.stderr
