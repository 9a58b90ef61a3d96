"""The tamper matrix: every change to a signed bundle is rejected, naming the file and the reason,
by `appliance verify` (the API and the CLI) and, where it applies, by installer/verify.sh."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.verify import verify_bundle
from appliance._internal.gpg import sign_detached

from .conftest import VERIFY_SH, later

Mutation = Callable[[Path, "pytest.FixtureRequest"], None]


def first_wheel(b: Path) -> Path:
    return sorted((b / "wheelhouse").glob("*.whl"))[0]


def flip(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


def wheel_rel(b: Path) -> str:
    return first_wheel(b).relative_to(b).as_posix()


def resign_with(b: Path, key: int, gpg_keys) -> None:
    for old in (b / "signatures").iterdir():
        old.unlink()
    fpr = gpg_keys.keys[key].fingerprint
    sign_detached(b / "SHA256SUMS", b / "signatures" / f"{fpr}.asc", fpr, gpg_keys.homedir)


def add_unsafe_line(b: Path, gpg_keys) -> None:
    with open(b / "SHA256SUMS", "a") as f:
        f.write("0" * 64 + " *../outside.whl\n")
    resign_with(b, 0, gpg_keys)


# (id, mutate(bundle, gpg_keys), path named, reason, checked by verify.sh too)
CASES = [
    ("wheel-byte", lambda b, k: flip(first_wheel(b)), wheel_rel, "sha256 mismatch", True),
    ("lock-byte", lambda b, k: flip(b / "lockfiles/pylock.toml"), "lockfiles/pylock.toml", "sha256 mismatch", True),
    ("sbom-byte", lambda b, k: flip(b / "sbom/python.cdx.json"), "sbom/python.cdx.json", "sha256 mismatch", True),
    ("manifest-byte", lambda b, k: flip(b / "manifest.json", 40), "manifest.json", "sha256 mismatch", True),
    ("file-added", lambda b, k: (b / "wheelhouse/evil-1.0-py3-none-any.whl").write_bytes(b"PK"),
     "wheelhouse/evil-1.0-py3-none-any.whl", "unexpected file", True),
    ("file-missing", lambda b, k: first_wheel(b).unlink(), wheel_rel, "missing file", True),
    ("unknown-key", lambda b, k: resign_with(b, 2, k), "signatures/", "unknown key", True),
    ("sums-changed-after-signing", lambda b, k: (b / "SHA256SUMS").write_text((b / "SHA256SUMS").read_text() + "\n"),
     "signatures/", "bad signature", True),
    ("no-signature", lambda b, k: [p.unlink() for p in (b / "signatures").iterdir()], "SHA256SUMS", "threshold is 1", True),
    ("symlink-in-wheelhouse", lambda b, k: os.symlink("../lockfiles/pylock.toml", b / "wheelhouse/link.whl"),
     "wheelhouse/link.whl", "symbolic link", True),
    ("symlink-at-root", lambda b, k: os.symlink("/etc/passwd", b / "passwd"), "passwd", "symbolic link", True),
    ("dotdot-path", add_unsafe_line, "SHA256SUMS", "..", True),
    ("truncated", lambda b, k: os.truncate(first_wheel(b), 10), wheel_rel, "truncated", True),
]


def named(value, b: Path) -> str:
    return value(b) if callable(value) else value


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_tamper_rejected(case, bundle: Path, keyring: Path, gpg_keys) -> None:
    _, mutate, path, reason, by_script = case
    expected_path = named(path, bundle)  # resolved before the change (the file may go)
    mutate(bundle, gpg_keys)
    report = verify_bundle(bundle, keyring, installed_version=None, progress=False)
    assert not report.ok and report.exit_code in (10, 11)
    assert any(p.path.startswith(expected_path) and reason in p.reason for p in report.problems), report.problems
    if by_script:
        proc = subprocess.run(["bash", str(VERIFY_SH), str(bundle), str(keyring)], capture_output=True, text=True)
        assert proc.returncode != 0, proc.stdout
        assert "FAIL" in proc.stderr
        name = expected_path.rstrip("/").split("/")[-1]
        assert name in proc.stderr or reason.split()[0] in proc.stderr, proc.stderr


def test_fewer_signatures_than_threshold(bundle: Path, keyring: Path) -> None:
    report = verify_bundle(bundle, keyring, threshold=2, installed_version=None, progress=False)
    assert report.exit_code == 11
    assert any(p.path == "SHA256SUMS" and "1 valid signature(s) from known keys, threshold is 2" in p.reason
               for p in report.problems)
    proc = subprocess.run(["bash", str(VERIFY_SH), str(bundle), str(keyring), "2"], capture_output=True, text=True)
    assert proc.returncode == 1 and "threshold is 2" in proc.stderr


def test_two_of_three_signers(bundle: Path, keyring: Path, reseal) -> None:
    reseal(bundle, keys=(0, 1, 2))  # key 2 is unknown to the box: two of three count
    report = verify_bundle(bundle, keyring, threshold=2, installed_version=None, progress=False)
    assert report.ok, report.problems
    assert len(report.signers) == 2
    assert [s.valid for s in report.signatures].count(False) == 1
    proc = subprocess.run(["bash", str(VERIFY_SH), str(bundle), str(keyring), "2"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_manifest_threshold_raises_the_floor(bundle: Path, keyring: Path, reseal) -> None:
    reseal(bundle, signing={"threshold": 2, "keys": []})
    report = verify_bundle(bundle, keyring, threshold=1, installed_version=None, progress=False)
    assert report.exit_code == 11 and any("threshold is 2" in p.reason for p in report.problems)


def test_older_than_installed(bundle: Path, keyring: Path) -> None:
    report = verify_bundle(bundle, keyring, installed_version="2.0.0", progress=False)
    assert report.exit_code == 12
    assert any(p.path == "manifest.json" and "rollback refused" in p.reason and "2.0.0" in p.reason
               for p in report.problems)
    same = verify_bundle(bundle, keyring, installed_version="1.0.0", progress=False)
    assert same.ok, "re-installing the same version is not a rollback"


def test_older_than_installed_read_from_prefix(bundle: Path, keyring: Path, tmp_path: Path) -> None:
    release = tmp_path / "prefix" / "releases" / "r1"
    release.mkdir(parents=True)
    (release / "receipt.json").write_text(json.dumps({"version": "1.5"}))
    os.symlink("releases/r1", tmp_path / "prefix" / "current")
    report = verify_bundle(bundle, keyring, prefix=tmp_path / "prefix", progress=False)
    assert report.installed_version == "1.5" and report.exit_code == 12


def test_expired(bundle: Path, keyring: Path) -> None:
    report = verify_bundle(bundle, keyring, installed_version=None, now=later(400), progress=False)
    assert report.exit_code == 12 and any("expired on" in p.reason for p in report.problems)
    allowed = verify_bundle(bundle, keyring, installed_version=None, now=later(400), allow_expired=True, progress=False)
    assert allowed.ok and any("--allow-expired" in o for o in allowed.overrides)


def test_pristine_bundle_verifies(bundle: Path, keyring: Path) -> None:
    report = verify_bundle(bundle, keyring, installed_version=None, progress=False)
    assert report.ok, report.problems
    assert report.stats.files > 10 and report.stats.bytes > 0
    proc = subprocess.run(["bash", str(VERIFY_SH), str(bundle), str(keyring)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
