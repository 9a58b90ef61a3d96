"""OpenPGP signing (gpg) and verification (gpgv, machine-readable status).

Verification never scrapes human output: it reads gpgv's ``--status-fd``
lines. A signature counts as valid only when gpgv reports GOODSIG and VALIDSIG
for it, with no BADSIG/ERRSIG/EXPSIG/EXPKEYSIG/REVKEYSIG, over a binary
document (class 00) with a hash stronger than SHA-1. The key that counts is the
primary key's fingerprint, so two subkeys of one key are one signer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ApplianceError

# RFC 4880 hash algorithm ids that are too weak to count: MD5, SHA-1, RIPEMD-160.
_WEAK_HASHES = {"1", "2", "3"}
_BAD_STATUSES = {
    "BADSIG": "bad signature (the signed file was changed)",
    "EXPSIG": "signature expired",
    "EXPKEYSIG": "signed by an expired key",
    "REVKEYSIG": "signed by a revoked key",
}


class GpgError(ApplianceError):
    """gpg or gpgv could not be run."""


@dataclass(frozen=True)
class Signature:
    """One signature found in a detached signature file, as gpgv judged it."""

    valid: bool
    fingerprint: str | None  # primary key fingerprint, when the key is known
    keyid: str | None
    reason: str  # "good" or why it does not count


def _tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        raise GpgError(f"{name} not found: install it (Debian/Ubuntu: apt-get install {'gpgv' if name == 'gpgv' else 'gnupg'})")
    return path


def parse_status(status: str) -> list[Signature]:
    """Turn gpgv status lines into one :class:`Signature` per NEWSIG block."""
    blocks: list[list[list[str]]] = []
    for line in status.splitlines():
        if not line.startswith("[GNUPG:] "):
            continue
        words = line.split()[1:]
        if words[0] == "NEWSIG" or not blocks:
            blocks.append([])
        blocks[-1].append(words)
    sigs = []
    for block in blocks:
        kinds = {w[0]: w for w in block}
        keyid = next((w[1] for w in block if w[0] in {"GOODSIG", "BADSIG", "ERRSIG", *_BAD_STATUSES} and len(w) > 1), None)
        fpr = None
        if "VALIDSIG" in kinds:
            v = kinds["VALIDSIG"]
            fpr = v[10] if len(v) > 10 else v[1]
        bad = next((reason for k, reason in _BAD_STATUSES.items() if k in kinds), None)
        if bad:
            sigs.append(Signature(False, fpr, keyid, bad))
        elif "ERRSIG" in kinds or "NO_PUBKEY" in kinds:
            err = kinds.get("ERRSIG", [])
            missing = "NO_PUBKEY" in kinds or (len(err) > 6 and err[6] == "9")
            reason = f"signed by an unknown key {keyid}" if missing else f"signature cannot be checked (gpgv ERRSIG rc={err[6] if len(err) > 6 else '?'})"
            sigs.append(Signature(False, None, keyid, reason))
        elif "GOODSIG" in kinds and "VALIDSIG" in kinds:
            v = kinds["VALIDSIG"]
            if v[8] in _WEAK_HASHES:
                sigs.append(Signature(False, fpr, keyid, f"weak hash algorithm id {v[8]}"))
            elif v[9] != "00":
                sigs.append(Signature(False, fpr, keyid, f"not a binary document signature (class {v[9]})"))
            else:
                sigs.append(Signature(True, fpr, keyid, "good"))
        else:
            sigs.append(Signature(False, fpr, keyid, "no valid signature"))
    return sigs


def verify_detached(sig: Path, data: Path, keyring: Path) -> list[Signature]:
    """Check a detached signature file over ``data`` with gpgv against ``keyring`` only."""
    gpgv = _tool("gpgv")
    with tempfile.TemporaryDirectory(prefix="appliance-gpgv-") as home:
        proc = subprocess.run(
            [gpgv, "--homedir", home, "--keyring", str(Path(keyring).resolve()), "--status-fd", "1",
             str(sig), str(data)],
            capture_output=True, text=True, check=False,
        )
    sigs = parse_status(proc.stdout)
    if not sigs:
        detail = (proc.stderr.strip().splitlines() or ["no signature found"])[-1]
        return [Signature(False, None, None, f"unreadable signature: {detail}")]
    if proc.returncode != 0:  # gpgv fails if any signature is bad: none of them count then
        return [s if not s.valid else Signature(False, s.fingerprint, s.keyid, "gpgv failed") for s in sigs]
    return sigs


def sign_detached(data: Path, out: Path, fingerprint: str, homedir: Path | None = None) -> None:
    """Write an armored detached signature of ``data`` by exactly key ``fingerprint``."""
    gpg = _tool("gpg")
    cmd = [gpg, "--batch", "--yes", "--digest-algo", "SHA512", "--local-user", f"{fingerprint}!",
           "--armor", "--detach-sign", "--output", str(out), str(data)]
    if homedir:
        cmd[1:1] = ["--homedir", str(homedir)]
    env = {**os.environ, "LC_ALL": "C"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise GpgError(f"signing with key {fingerprint} failed: {proc.stderr.strip()}")


def has_secret_key(fingerprint: str, homedir: Path | None = None) -> bool:
    """Whether gpg (in ``homedir``) holds the secret key ``fingerprint``, to sign with it."""
    cmd = [_tool("gpg"), "--batch", "--with-colons", "--list-secret-keys", fingerprint]
    if homedir:
        cmd[1:1] = ["--homedir", str(homedir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return proc.returncode == 0 and any(
        line.startswith("fpr:") and line.split(":")[9] == fingerprint for line in proc.stdout.splitlines()
    )


def generate_key(homedir: Path, uid: str) -> str:
    """Make an unprotected ed25519 signing key in ``homedir`` (throwaway keys: demo, tests); returns its fingerprint."""
    gpg = _tool("gpg")
    homedir.mkdir(mode=0o700, parents=True, exist_ok=True)
    base = [gpg, "--homedir", str(homedir), "--batch"]
    proc = subprocess.run([*base, "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never"],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise GpgError(f"key generation failed: {proc.stderr.strip()}")
    listing = subprocess.run([*base, "--with-colons", "--list-secret-keys", uid],
                             capture_output=True, text=True, check=True).stdout
    return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))


def export_keyring(homedir: Path, fingerprints: list[str], out: Path) -> Path:
    """Write the public keys as a binary keyring, the form gpgv reads."""
    proc = subprocess.run([_tool("gpg"), "--homedir", str(homedir), "--batch", "--export", *fingerprints],
                          capture_output=True, check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise GpgError(f"exporting keys {fingerprints} failed: {proc.stderr.decode(errors='replace').strip()}")
    out.write_bytes(proc.stdout)
    return out
